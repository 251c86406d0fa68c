"""Start-up time of the commands a user types on a login node: none of them imports torch.

Each command runs as a fresh ``python -m ctgrid`` process (median of ``--repeat`` runs);
the status/config cases use a tiny results directory made here. Goal: <= 1 s each on
this 2-core machine (``import torch`` alone takes ~3 s on it). Then what ending a command
that imports torch costs (a one-epoch ``train`` ended as ``ctgrid`` does, and through an
ordinary ``sys.exit``: ``cli_exit_saved_seconds``). Then the largest grid
ctgrid accepts (20,000 points, 20,000 distinct jobs): ``expand`` and ``run --dry-run``
(what ``ctgrid slurm submit`` checks a grid with), one run each. Goal: seconds.

    python benchmarks/bench_cli.py
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def seconds(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ctgrid", *argv], check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "ctgrid", "run", "quickstart", "training.nepochs=1",
                        "evaluation.n_runs=1", "evaluation.n_individuals=2", "--results", tmp],
                       check=True, capture_output=True, cwd=ROOT)
        cases = {"help": ["--help"], "run_help": ["run", "--help"], "expand": ["expand", "penalties"],
                 "config": ["config", "quickstart"], "status": ["status", f"{tmp}/quickstart"],
                 "dry_run": ["run", "quickstart", "--results", f"{tmp}/dry", "--dry-run"]}
        seconds(["--version"], 1)   # warm the page cache
        t_torch = statistics.median(
            _time([sys.executable, "-c", "import torch"]) for _ in range(args.repeat))
        for name, argv in cases.items():
            print(f"BENCH cli_{name}_seconds {seconds(argv, args.repeat):.2f} s", flush=True)
        print(f"BENCH import_torch_seconds {t_torch:.2f} s")
        fast, ordinary = exit_cost(Path(tmp), args.repeat)
        print(f"BENCH cli_train_1_epoch_seconds {fast:.2f} s", flush=True)
        print(f"BENCH cli_exit_saved_seconds {ordinary - fast:.2f} s", flush=True)
        big = Path(tmp) / "big.yaml"
        big.write_text("name: big\ntraining: {nepochs: 2, seed: {range: [0, 2000]}, "
                       "lambda_reg: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}\n")
        print(f"BENCH cli_expand_20000_points_seconds {seconds(['expand', str(big)], 1):.1f} s", flush=True)
        dry = ["run", str(big), "--results", f"{tmp}/big", "--dry-run"]
        print(f"BENCH cli_dry_run_20000_points_seconds {seconds(dry, 1):.1f} s", flush=True)


def exit_cost(tmp: Path, repeat: int) -> tuple[float, float]:
    """Median seconds of a command that imports torch (``train``, one epoch of 100 rows) ending
    as ``ctgrid`` does (``python -m ctgrid``: the teardown skipped, :mod:`ctgrid.cli._exit`) and
    through an ordinary ``sys.exit(main())``, alternating."""
    argv = ["train", "--data", "moons", "--objective", "vanilla", "--nepochs", "1", "data.n_train=100"]
    ordinary = "import sys; from ctgrid.cli import main; sys.exit(main())"
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeat):
        for fast in (True, False):
            out = ["--out", str(tmp / f"exit-{fast}-{i}")]
            start = [sys.executable, "-m", "ctgrid"] if fast else [sys.executable, "-c", ordinary]
            times[fast].append(_time([*start, *argv, *out], cwd=ROOT))
    return statistics.median(times[True]), statistics.median(times[False])


def _time(cmd: list[str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=cwd)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
