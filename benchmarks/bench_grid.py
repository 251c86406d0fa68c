"""Wall time, load balance and pack speed-up of a whole grid under MPI (scheduler + two workers).

Runs ``grids/penalties.yaml`` on one dataset (``--data``, default moons; paper settings:
100 epochs, batch 30, nce 1000; 270 grid points = 136 distinct jobs) with
``mpiexec -n 3 python -m ctgrid run`` into a fresh results directory, twice in one
invocation: with the default packs and with ``--pack-size 1`` (every job alone; skip it
with ``--no-solo``), and prints

- ``grid_wall_seconds``: wall time of the ``mpiexec`` command (start-up included);
- ``grid_jobs``: jobs finished;
- ``grid_busy_share``: sum of the per-job times recorded in ``done.json`` divided
  by (worker ranks x wall time): 1.0 means the workers never waited and the
  scheduler's start-up, hand-outs and the tail of the last job cost nothing;
- ``grid_tail_idle_share``: the workers' idle time after their last job (until the
  last worker's last job finished), divided by (worker ranks x wall time): the share
  the tail of the grid costs;
- ``grid_pack_speedup``: wall time with ``--pack-size 1`` / wall time with the default
  packs (both measured here, so the ratio does not depend on the machine);
- ``rss_mb_grid_rank_max``: the largest peak resident memory of any rank.

``--quick`` runs the same grid with 2 epochs, nce 100 and a small evaluation
(figures named ``grid_quick_*``), to check the script in a minute or two.

Usage: python benchmarks/bench_grid.py [--ranks 3] [--quick] [--no-solo] [--results DIR]
           [--grid FILE] [--data moons] [-- EXTRA RUN OPTIONS]
Prints ``BENCH <name> <value> <unit>`` lines.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctgrid.store import find_stores  # noqa: E402

QUICK = {"training": {"nepochs": 2, "nce": 100},
         "evaluation": {"n_runs": 1, "n_individuals": 10, "lambda_energy": [0.5]}}


def bench_grid(src: Path, dest: Path, data: str, quick: bool) -> Path:
    """``src`` on the one dataset ``data`` (the shipped grid covers four), smaller if ``quick``."""
    raw = yaml.safe_load(src.read_text())
    raw.setdefault("data", {})["name"] = data
    for group, values in (QUICK.items() if quick else ()):
        raw.setdefault(group, {}).update(values)
    raw["name"] = f"{raw['name']}-{data}{'-quick' if quick else ''}"
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if found is None:
        sys.exit("bench_grid: no mpiexec (install the mpich extra)")
    return found


def run_grid(grid: Path, results: Path, ranks: int, extra: list[str]) -> tuple[float, list[dict], Path]:
    """``ctgrid run`` of ``grid`` under ``mpiexec -n ranks`` into the fresh ``results``: its
    wall seconds, the ``done.json`` records and the grid's results directory."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "ctgrid", "run", str(grid),
           "--results", str(results), "--threads", "1", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_grid: {' '.join(cmd)} exited with {proc.returncode}")
    (store,) = find_stores(results)
    if store.status().counts["done"] != len(store.job_ids()):
        sys.exit(f"bench_grid: not every job of {store.root} is done")
    records = store.done_records()
    if any(r.get("resumed_from_epoch") for r in records):
        sys.exit("bench_grid: the results directory was not fresh (some job resumed)")
    for rec in records:   # when its marker was written: the end of the job (sub-second)
        rec["_finished"] = (store.root / "jobs" / rec["job_id"] / "done.json").stat().st_mtime
    return wall, records, store.root


def tail_idle(records: list[dict], ranks: list[int]) -> float:
    """Worker-seconds spent idle after each worker's last job until the grid's last job ended."""
    last = {r: max((rec["_finished"] for rec in records if rec.get("rank") == r), default=None)
            for r in ranks}
    end = max(t for t in last.values() if t is not None)
    return sum(end - t if t is not None else 0.0 for t in last.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", type=Path, default=REPO / "grids" / "penalties.yaml")
    ap.add_argument("--data", default="moons", help="the one dataset to run the grid on")
    ap.add_argument("--ranks", type=int, default=3, help="MPI ranks (scheduler + workers)")
    ap.add_argument("--quick", action="store_true", help="2 epochs, nce 100, small evaluation")
    ap.add_argument("--no-solo", action="store_true", help="skip the --pack-size 1 run (no grid_pack_speedup)")
    ap.add_argument("--results", type=Path, default=None,
                    help="results root (must not hold this grid yet; default: a temporary one)")
    ap.add_argument("extra", nargs="*", help="more `ctgrid run` options for both runs (after --)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    grid = bench_grid(args.grid, tmp / "grid.yaml", args.data, args.quick)
    results = args.results or tmp / "results"
    prefix = "grid_quick" if args.quick else "grid"
    workers = args.ranks - 1 if args.ranks > 1 else 1
    wall, records, root = run_grid(grid, results, args.ranks, args.extra)
    busy = sum(r["seconds"] * r.get("shard_size", 1) for r in records)
    idle = tail_idle(records, list(range(1, args.ranks)) if args.ranks > 1 else [0])
    print(f"BENCH {prefix}_wall_seconds {wall:.1f} s", flush=True)
    print(f"BENCH {prefix}_jobs {len(records)} jobs", flush=True)
    print(f"BENCH {prefix}_busy_share {busy / (workers * wall):.3f} ratio", flush=True)
    print(f"BENCH {prefix}_tail_idle_share {idle / (workers * wall):.3f} ratio", flush=True)
    if not args.no_solo:
        solo_wall, _, _ = run_grid(grid, tmp / "results-solo", args.ranks, [*args.extra, "--pack-size", "1"])
        print(f"BENCH {prefix}_solo_wall_seconds {solo_wall:.1f} s", flush=True)
        print(f"BENCH {prefix}_pack_speedup {solo_wall / wall:.2f} x", flush=True)
    # the largest peak RSS of any waited-for descendant: the biggest rank of the runs
    print(f"BENCH rss_mb_{prefix}_rank_max {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")
    if args.results is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(tmp / "results-solo", ignore_errors=True)


if __name__ == "__main__":
    main()
