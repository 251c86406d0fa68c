"""Benchmark: ``ctgrid verify`` on a large healthy grid (goal: under 1 s per 1,000 jobs, size check).

Builds a synthetic results directory of ``--jobs`` done jobs cheaply (no training): a
``jobs.parquet`` point table and per job the six result files a job with saved
counterfactuals writes (random bytes of typical moons sizes, written through ctgrid's
atomic writers so that each ``done.json`` carries real size and SHA-256 records, beside
a provenance record like a real run's), then times:

* ``verify_seconds_per_1000_jobs``: ``python -m ctgrid verify DIR`` in a fresh process
  (start-up, reading the point table, every ``done.json``, one ``stat`` per file), the
  acceptance figure;
* ``verify_check_seconds_per_1000_jobs``: the size check alone in this process
  (:func:`ctgrid.integrity.check_store`; what ``ctgrid run`` adds to its planning);
* ``verify_full_seconds_per_1000_jobs``: ``ctgrid verify DIR --full`` (hashes every file).

Files are in the page cache (just written): a cold network file system is slower. Usage::

    python benchmarks/bench_verify.py [--jobs 2000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctgrid import _atomic  # noqa: E402
from ctgrid.integrity import check_store  # noqa: E402
from ctgrid.provenance import provenance  # noqa: E402
from ctgrid.store import ResultStore, mark_done  # noqa: E402

#: a moons job's files (bytes), as a grid with evaluation.save_counterfactuals writes them
SIZES = {"config.yaml": 1500, "model.pt": 5200, "history.parquet": 9800, "evaluation.parquet": 8600,
         "performance.parquet": 4300, "counterfactuals.parquet": 4800}


def build(root: Path, n_jobs: int) -> ResultStore:
    """A grid directory of ``n_jobs`` done jobs with recorded files (module docstring)."""
    import pyarrow as pa
    store = ResultStore(root / "bench")
    ids = [f"{i:016x}" for i in range(n_jobs)]
    store.root.mkdir(parents=True)
    _atomic.write_parquet(store.jobs_file, pa.table({"point": list(range(n_jobs)), "job_id": ids}))
    record = {"name": "moons-full-ecco", "seconds": 1.0, "epochs": 100, "provenance": provenance(seed=1),
              "data_summary": {"name": "moons", "n_train": 3000, "n_val": 600, "n_test": 900}}
    for job_id in ids:
        paths = store.job(job_id)
        files = [_atomic.write_text(paths.dir / name, os.urandom(size // 2).hex()) for name, size in SIZES.items()]
        mark_done(paths, record, files)
    return store


def cli_seconds(*argv: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ctgrid", "verify", *argv], capture_output=True, text=True,
                          cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ctgrid verify failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--keep", type=Path, default=None, help="build the store here and keep it")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-")) if args.keep is None else args.keep
    try:
        store = build(tmp, args.jobs)
        per = 1000 / args.jobs
        cli_seconds(str(store.root))   # warm the interpreter's files
        sizes = min(cli_seconds(str(store.root)) for _ in range(3))
        t0 = time.perf_counter()
        checks = check_store(store)
        check = time.perf_counter() - t0
        assert len(checks) == args.jobs and not any(c.damaged for c in checks)
        full = cli_seconds(str(store.root), "--full")
        print(f"BENCH verify_seconds_per_1000_jobs {sizes * per:.3f} s", flush=True)
        print(f"BENCH verify_check_seconds_per_1000_jobs {check * per:.3f} s", flush=True)
        print(f"BENCH verify_full_seconds_per_1000_jobs {full * per:.3f} s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
