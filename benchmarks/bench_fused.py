"""Training throughput of a fused pack of K runs vs the same K runs one after another.

Paper settings (docs/deviations.md, R19) for the CT runs (full objective, ECCo, T = 30);
members differ in lambda_div/lambda_reg/lambda_adv and seed as in the penalties grid.
One torch thread, one process. Both sides train the same K runs for ``--epochs``
epochs (solo: ``train`` K times; fused: one ``train_pack``); the figure is
``solo seconds / fused seconds`` (per-model throughput ratio). Also reported: the
vanilla objective (no CE phase) and the share of the fused CT time spent in the CE
phase (``t_ce``).

The distance to the limit: the matmul FLOPs of each fused case (forward and backward, the
search included) are counted once by ``torch.utils.flop_counter.FlopCounterMode`` in an
untimed run of the same pack, and a single-core float32 matmul peak is measured in the same
process (``fused_matmul_peak_gflops``: a 1024 x 1024 x 1024 ``torch.mm``, best of 5; again before
every fused run). Each case runs solo and fused ``--repeats`` times, alternating (this VM's speed
drifts by tens of percent between minutes), and prints the medians.
``fused_roofline_<data>_<K>`` = (counted FLOPs / peak) / fused seconds: 1.0 would be the
arithmetic lower bound (every FLOP at peak, nothing else costing time);
``fused_lower_bound_ms_<data>_<K>`` is that bound per model-epoch. Element-wise work
(activations, softmax, masks) is not counted, so the fraction is an upper bound on how
close the arithmetic's own limit is.

Usage: python benchmarks/bench_fused.py [--epochs N] [--data-dir DIR] [--quick]
Prints ``BENCH <name> <value> <unit>`` lines.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ctgrid.cli.grid import _positive   # an integer >= 1, else one argparse error line (exit 2)
from ctgrid.data import DataConfig, load_dataset
from ctgrid.generators import GeneratorConfig
from ctgrid.models import ModelConfig
from ctgrid.training import TrainingConfig, train
from ctgrid.training.loop import PackMember, train_pack

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LAMBDAS = [(d, r, a) for d in (0.1, 0.5, 1.0) for r in (0.1, 0.25, 0.5) for a in (0.1, 0.25, 0.5)]


def members(k: int, objective: str, epochs: int, **kw) -> list[PackMember]:
    gen = GeneratorConfig(name="ecco", maxiter=30, tau=kw.pop("tau", 0.75))
    out = []
    for i in range(k):
        d, r, a = LAMBDAS[i % len(LAMBDAS)]
        cfg = TrainingConfig(objective=objective, nepochs=epochs, seed=i // len(LAMBDAS),
                             lambda_div=d, lambda_reg=r, lambda_adv=a, **kw)
        out.append(PackMember(ModelConfig(), gen, cfg))
    return out


def matmul_peak(n: int = 1024, reps: int = 5) -> float:
    """FLOP/s of a float32 ``n x n x n`` matmul on this process's thread(s), best of ``reps``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


class MatmulFlops(TorchDispatchMode):
    """Counts the FLOPs of every matrix product dispatched while active (forward, backward and
    ``autograd.grad`` alike: a dispatch mode sits below autograd), 2 per multiply-add.
    (torch's ``FlopCounterMode`` cannot be used: its module hooks refuse ``autograd.grad``.)"""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            a, b = args[-2], args[-1]
            batch = a.shape[0] if a.dim() == 3 else 1
            self.flops += 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        return func(*args, **(kwargs or {}))


def counted_flops(dataset, ms: list[PackMember]) -> int:
    """The matmul FLOPs (forward and backward) of one ``train_pack`` of ``ms``, counted."""
    with MatmulFlops() as counter:
        train_pack(dataset, ms)
    return counter.flops


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def compare(name: str, dataset, k: int, objective: str, epochs: int, repeats: int, **kw) -> None:
    ms = members(k, objective, epochs, **kw)
    warm = [replace(m, training=replace(m.training, nepochs=1)) for m in ms[:2]]
    train_pack(dataset, warm)                       # first-call costs out of both timings
    train(dataset, warm[0].model, warm[0].generator, warm[0].training)
    rows = []   # (solo / fused, fused seconds, peak FLOP/s, CE share), alternating: the VM's speed drifts
    for _ in range(repeats):
        solo, _ = timed(lambda: [train(dataset, m.model, m.generator, m.training) for m in ms])
        peak = matmul_peak()
        fused, results = timed(lambda: train_pack(dataset, ms))
        share = sum(float(r.history["t_ce"].sum()) for r in results) / fused if objective == "full" else 0.0
        rows.append((solo / fused, fused, peak, share))
    speedup, fused, peak, share = (statistics.median(col) for col in zip(*rows))
    flops = counted_flops(dataset, ms)
    roofline = statistics.median(flops / p / f for _, f, p, _ in rows)
    tag = "" if objective == "full" else "_vanilla"
    print(f"BENCH fused_speedup{tag}_{name}_{k} {speedup:.1f} x", flush=True)
    print(f"BENCH fused_model_epoch_ms{tag}_{name}_{k} {1000 * fused / (k * epochs):.2f} ms", flush=True)
    print(f"BENCH fused_roofline{tag}_{name}_{k} {roofline:.3f} fraction", flush=True)
    print(f"BENCH fused_lower_bound_ms{tag}_{name}_{k} {1000 * flops / peak / (k * epochs):.3f} ms", flush=True)
    if objective == "full":
        print(f"BENCH fused_ce_share_{name}_{k} {share:.2f} fraction", flush=True)
    if repeats > 1:
        print(f"# {name} K {k} {objective}: speed-ups " + " ".join(f"{r[0]:.1f}" for r in rows), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("CTGRID_DATA", str(DEFAULT_DATA)))
    ap.add_argument("--repeats", type=_positive, default=3,
                    help="solo and fused runs alternating this many times per case; medians printed")
    ap.add_argument("--quick", action="store_true", help="moons K = 8 and 45 only")
    ap.add_argument("--skip-moons", action="store_true", help="adult and MNIST only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    peak = matmul_peak()
    print(f"BENCH fused_matmul_peak_gflops {peak / 1e9:.1f} GFLOP/s", flush=True)
    moons = load_dataset(DataConfig(name="moons"))
    sizes = (8, 45) if args.quick else (1, 8, 45, 135)
    for k in () if args.skip_moons else sizes:
        compare("moons", moons, k, "vanilla", args.epochs, args.repeats, batch_size=30)
        compare("moons", moons, k, "full", args.epochs, args.repeats, batch_size=30, nce=1000, tau=0.9)
    if not args.quick:
        adult = load_dataset(DataConfig(name="adult"), args.data_dir)
        for k in (8, 45):
            compare("adult", adult, k, "full", 1, args.repeats, batch_size=1000, nce=5000)
        mnist = load_dataset(DataConfig(name="mnist"), args.data_dir)
        compare("mnist", mnist, 4, "full", 1, args.repeats, batch_size=128, nce=1000)
    print(f"BENCH rss_mb_fused {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
