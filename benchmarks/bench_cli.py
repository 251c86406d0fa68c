"""Start-up time of the commands a user types on a login node: none of them imports torch.

Each command runs as a fresh ``python -m ctgrid`` process (median of ``--repeat`` runs);
the status/config cases use a tiny results directory made here. Goal: <= 1 s each on
this 2-core machine (``import torch`` alone takes ~3 s on it). Then the largest grid
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
        big = Path(tmp) / "big.yaml"
        big.write_text("name: big\ntraining: {nepochs: 2, seed: {range: [0, 2000]}, "
                       "lambda_reg: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}\n")
        print(f"BENCH cli_expand_20000_points_seconds {seconds(['expand', str(big)], 1):.1f} s", flush=True)
        dry = ["run", str(big), "--results", f"{tmp}/big", "--dry-run"]
        print(f"BENCH cli_dry_run_20000_points_seconds {seconds(dry, 1):.1f} s", flush=True)


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
