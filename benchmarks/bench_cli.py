"""Start-up time of the commands a user types on a login node: none of them imports torch.

Each command runs as a fresh ``python -m ctgrid`` process (median of ``--repeat`` runs);
the status/config cases use a tiny results directory made here. Goal: <= 1 s each on
this 2-core machine (``import torch`` alone takes ~3 s on it).

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
                 "config": ["config", "quickstart"], "status": ["status", f"{tmp}/quickstart"]}
        seconds(["--version"], 1)   # warm the page cache
        t_torch = statistics.median(
            _time([sys.executable, "-c", "import torch"]) for _ in range(args.repeat))
        for name, argv in cases.items():
            print(f"BENCH cli_{name}_seconds {seconds(argv, args.repeat):.2f} s", flush=True)
        print(f"BENCH import_torch_seconds {t_torch:.2f} s")


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
