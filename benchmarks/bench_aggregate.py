"""Benchmark: reading a large grid's results for ``ctgrid aggregate``.

Builds a synthetic results directory of ``--jobs`` finished jobs (half CT, half
their baselines; one ``evaluation.parquet`` of ``--runs`` x ``--individuals`` x 5
lambdas x 9 metrics rows each, plus performance and history files), then times:

* ``scan``: :meth:`Results.evaluation` — one ``pyarrow.dataset`` scan with a merged
  schema over all files;
* ``loop``: the naive alternative, ``pq.read_table`` per file + ``pa.concat_tables``
  (promoting schemas);
* ``load``: reading and flattening every job's ``config.yaml`` / ``done.json``;
* ``tables``: every table from the loaded results (pairing, per-run means, bootstrap).

Wall-clock and process CPU seconds (CPU is steadier on a shared machine; Arrow's
threads add up in it). Usage::

    python benchmarks/bench_aggregate.py [--jobs 2000] [--individuals 20] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ctgrid.aggregate import AggregateOptions, Results, build_tables
from ctgrid.evaluation.config import EvaluationConfig
from ctgrid.grid.job import JobConfig
from ctgrid.training.config import TrainingConfig

METRICS = ("validity", "validity_strict", "cost", "ip", "energy_differential", "share_unchanged",
           "converged", "steps", "ip_star")
LAMBDAS = (0.1, 0.5, 1.0, 5.0, 10.0)


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.4g} {unit}", flush=True)


def timed(name: str, fn):
    """Run ``fn``; print its wall-clock and process CPU seconds; return (result, CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    bench(f"{name}_wall", wall, "s")
    bench(f"{name}_cpu", cpu, "s")
    return out, cpu


def evaluation_frame(runs: int, individuals: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = runs * len(LAMBDAS) * individuals
    base = pd.DataFrame({"run": np.repeat(np.arange(runs), len(LAMBDAS) * individuals),
                         "individual": np.tile(np.arange(individuals), runs * len(LAMBDAS)),
                         "lambda_energy": np.tile(np.repeat(LAMBDAS, individuals), runs)})
    base["split"], base["generator"] = "train", "ecco"
    base["factual_index"] = base["run"] * 1000 + base["individual"]
    base["factual_label"], base["target"] = 0, 1
    frames = [base.assign(metric=m, value=rng.random(n) + (1 if m == "ip" else 0)) for m in METRICS]
    return pd.concat(frames, ignore_index=True)


def build(root: Path, n_jobs: int, runs: int, individuals: int) -> None:
    ev_cfg = EvaluationConfig(n_runs=runs, n_individuals=individuals)
    ids = []
    for i in range(n_jobs):
        obj = "full" if i % 2 == 0 else "vanilla"
        cfg = JobConfig(training=TrainingConfig(objective=obj, seed=i // 2), evaluation=ev_cfg)
        d = root / "jobs" / cfg.job_id
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump(cfg.canonical().to_dict(), sort_keys=False))
        evaluation_frame(runs, individuals, i).to_parquet(d / "evaluation.parquet", index=False)
        pd.DataFrame({"metric": ["accuracy", "macro_f1", "robust_accuracy"], "attack": ["none", "none", "fgsm"],
                      "eps": [0.0, 0.0, 0.03], "value": [0.9, 0.88, 0.6]}).to_parquet(
            d / "performance.parquet", index=False)
        pd.DataFrame({"epoch": np.arange(1, 11), "converged_share": np.linspace(0, 1, 10)}).to_parquet(
            d / "history.parquet", index=False)
        (d / "done.json").write_text(json.dumps({"data_summary": {"n_train": 3000, "n_val": 600,
                                                                  "n_test": 900}}))
        ids.append(cfg.job_id)
    pd.DataFrame({"point": range(n_jobs), "job_id": ids}).to_parquet(root / "jobs.parquet", index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--individuals", type=int, default=20)
    ap.add_argument("--keep", help="build the directory here and keep it")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_aggregate_"))
    root = tmp / "bench"
    try:
        if not (root / "jobs.parquet").exists():
            build(root, args.jobs, args.runs, args.individuals)
        results = timed("aggregate_load_configs", lambda: Results.load([root]))[0]
        ev, t_scan = timed("aggregate_scan_evaluation", lambda: results.read_table("evaluation"))
        bench("aggregate_rows", ev.num_rows, "rows")
        files = sorted((root / "jobs").glob("*/evaluation.parquet"))
        loop, t_loop = timed("aggregate_loop_read_concat", lambda: pa.concat_tables(
            [pq.read_table(f) for f in files], promote_options="permissive"))
        assert loop.num_rows == ev.num_rows
        bench("aggregate_loop_over_scan_cpu", t_loop / t_scan, "x")
        timed("aggregate_tables", lambda: build_tables(results, AggregateOptions(bootstrap=1000,
                                                                                  figures=False)))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
