"""Benchmark: time and peak memory of the paper's final evaluation grid for one model pair.

For Moons and MNIST a pair of vanilla MLPs 1x32 (two seeds; Adam, a few epochs — the
evaluation's cost does not depend on how the pair was trained, beyond how soon
searches converge) is trained in this process and saved. Each measurement then runs
in a **fresh subprocess**: load the data, build both models, and time
``evaluate_model`` for the two of them with the paper's final settings
(``test_time``, ECCo, ``lambda_energy`` in {0.1, 0.5, 1, 5, 10}, ``lambda_cost = 0``,
``tau = 0.95``, ``T = 50``, 100 runs; 250 individuals for Moons, 25 for MNIST; IP with
1000 samples, IP* with 100 a side; FGSM and PGD at eps 0.03). Peak RSS is the
subprocess's ``ru_maxrss`` (whole process: interpreter, torch, data, both evaluations).
Wall and CPU seconds of the two ``evaluate_model`` calls are both printed: the CPU
figure is what the evaluation costs, the wall figure what it took on a possibly busy
machine. One torch thread by default (``torch.set_num_threads(1)``, as the grid
runs one job per core); on a loaded 2-core machine two threads were over 10x slower.

Goal: the MNIST pair in <= 5 min with peak RSS <= 2 GB on the 2-core machine.
Usage::

    python benchmarks/bench_evaluation.py [--data-dir ../shared/data] [--only mnist]
        [--threads 1] [--runs 100]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ctgrid.data import DataConfig, load_dataset
from ctgrid.evaluation.config import EvaluationConfig
from ctgrid.models import ModelConfig, build_model

SETTINGS = {  # name: (n_individuals, training epochs)
    "moons": (250, 5),
    "mnist": (25, 10),
}


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def eval_config(name: str, runs: int) -> EvaluationConfig:
    return EvaluationConfig(test_time=True, n_runs=runs, n_individuals=SETTINGS[name][0],
                            fgsm_eps=(0.03,), pgd_eps=(0.03,))


def train_vanilla(ds, seed: int, epochs: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = build_model(ModelConfig(), ds.n_features, ds.n_classes, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bs = ds.batch_size
    for _ in range(epochs):
        perm = torch.randperm(len(ds.y_train), generator=gen)
        for start in range(0, len(perm), bs):
            idx = perm[start:start + bs]
            loss = F.cross_entropy(model(ds.X_train[idx]), ds.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def child(name: str, data_dir: str, model_dir: str, threads: int, runs: int) -> None:
    """One measurement: evaluate both saved models; print one JSON line."""
    torch.set_num_threads(threads)
    from ctgrid.evaluation.evaluate import evaluate_model
    ds = load_dataset(DataConfig(name=name), data_dir)
    cfg = eval_config(name, runs)
    t0, c0 = time.perf_counter(), time.process_time()
    summary = []
    for seed in (1, 2):
        model = build_model(ModelConfig(), ds.n_features, ds.n_classes)
        model.load_state_dict(torch.load(Path(model_dir) / f"model{seed}.pt", weights_only=True))
        ev, perf, _ = evaluate_model(model.eval(), ds, cfg)
        wide = ev.groupby("metric").value.mean()
        summary.append({"rows": len(ev), "validity": wide["validity"], "converged": wide["converged"],
                        "steps": wide["steps"], "accuracy": float(perf.value.iloc[0]),
                        "pairs": int(ev[ev.metric == "validity"].factual_index.sum())})
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rss_mb": rss_mb, "models": summary}), flush=True)


def measure(name: str, data_dir: str, threads: int, runs: int) -> None:
    ds = load_dataset(DataConfig(name=name), data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (1, 2):
            model = train_vanilla(ds, seed, SETTINGS[name][1])
            torch.save(model.state_dict(), Path(tmp) / f"model{seed}.pt")
        del ds
        out = subprocess.run([sys.executable, __file__, "--child", name, "--data-dir", data_dir,
                              "--model-dir", tmp, "--threads", str(threads), "--runs", str(runs)],
                             check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    cfg = eval_config(name, runs)
    n_ce = cfg.n_runs * cfg.n_individuals * len(cfg.lambda_energy)
    print(f"# {name}: {cfg.n_runs} runs x {cfg.n_individuals} individuals x "
          f"{len(cfg.lambda_energy)} lambda = {n_ce} CEs per model, 2 models, tau {cfg.tau}, "
          f"T {cfg.maxiter}, {threads} torch thread(s), test split")
    for i, m in enumerate(res["models"], 1):
        print(f"# {name} model {i}: test accuracy {m['accuracy']:.3f}, validity {m['validity']:.3f}, "
              f"converged {m['converged']:.3f}, mean steps {m['steps']:.1f}, {m['rows']} rows")
    same = res["models"][0]["pairs"] == res["models"][1]["pairs"]
    print(f"# {name}: both models evaluated on the same factuals: {same}")
    bench(f"eval_seconds_{name}", res["seconds"], "s")
    bench(f"eval_cpu_seconds_{name}", res["cpu"], "s")
    bench(f"eval_rss_mb_{name}", res["rss_mb"], "MB")


def main() -> None:
    default_dir = os.environ.get("CTGRID_DATA") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=default_dir)
    ap.add_argument("--only", choices=sorted(SETTINGS), action="append")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the measured process (1: the grid runs one job per core)")
    ap.add_argument("--runs", type=int, default=100, help="evaluation runs (paper: 100)")
    ap.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.data_dir, args.model_dir, args.threads, args.runs)
        return
    torch.set_num_threads(args.threads)
    for name in args.only or list(SETTINGS):
        measure(name, args.data_dir, args.threads, args.runs)


if __name__ == "__main__":
    main()
