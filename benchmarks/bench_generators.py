"""Benchmark: one batched counterfactual search vs a per-factual loop (the reference's design).

For Moons (``nce = 1000`` factuals, ``tau = 0.9``) and Adult (``nce = 5000``,
``tau = 0.75``) a vanilla MLP 1x32 is trained for a few epochs with Adam, then
ECCo as used in training (``lambda_cost = 0.001``, ``lambda_energy = 5``,
``T = 30``, ``lr = 0.1``) searches counterfactuals for all factuals twice:

* batched: one ``SearchEngine.search`` call over all rows (best of ``--repeats``);
* per factual: the same engine called on one row at a time. For large ``nce``
  the loop runs on a random subset of ``--loop-rows`` factuals and its time is
  extrapolated linearly (the output says so).

Both run single-threaded (``torch.set_num_threads(1)``) and are timed in process
CPU time (``time.process_time``), so other jobs on a shared machine do not
distort the ratio; ``--clock wall`` times wall-clock instead. Also printed: how far
the loop's counterfactuals are from the batched ones (they must agree). Usage::

    python benchmarks/bench_generators.py [--data-dir ../shared/data] [--only moons]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ctgrid.data import DataConfig, load_dataset
from ctgrid.generators import GeneratorConfig, make_generator
from ctgrid.models import ModelConfig, build_model

SETTINGS = {  # name: (nce, tau, training epochs)
    "moons": (1000, 0.9, 10),
    "adult": (5000, 0.75, 10),
}


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def train_vanilla(X: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int,
                  gen: torch.Generator) -> torch.nn.Module:
    """A vanilla MLP 1x32 trained with Adam (lr 1e-3), shuffled mini-batches."""
    model = build_model(ModelConfig(), X.shape[1], int(y.max()) + 1, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def factuals(model: torch.nn.Module, X: torch.Tensor, n: int, n_classes: int,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training rows (without replacement) and a target drawn among the other classes."""
    x = X[torch.randperm(len(X), generator=gen)[:n]]
    with torch.no_grad():
        pred = model(x).argmax(1)
    shift = torch.randint(1, n_classes, (n,), generator=gen)
    return x, (pred + shift) % n_classes


def run(name: str, data_dir: str, repeats: int, loop_rows: int, seed: int, clock) -> None:
    nce, tau, epochs = SETTINGS[name]
    ds = load_dataset(DataConfig(name=name), data_dir)
    gen = torch.Generator().manual_seed(seed)
    model = train_vanilla(ds.X_train, ds.y_train, ds.batch_size, epochs, gen)
    acc = (model(ds.X_train).argmax(1) == ds.y_train).float().mean().item()
    x, target = factuals(model, ds.X_train, nce, ds.n_classes, gen)
    engine = make_generator(GeneratorConfig(name="ecco", tau=tau, maxiter=30, lambda_cost=0.001,
                                            lambda_energy=5.0), ds.constraints)
    engine.search(model, x[:50], target[:50])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = clock()
        batch = engine.search(model, x, target)
        times.append(clock() - t0)
    t_batch = min(times)

    rows = torch.arange(nce) if loop_rows >= nce else torch.randperm(nce, generator=gen)[:loop_rows]
    t0 = clock()
    singles = [engine.search(model, x[i:i + 1], target[i:i + 1]) for i in rows.tolist()]
    t_loop = (clock() - t0) * nce / len(rows)
    cf_loop = torch.cat([s.counterfactual for s in singles])
    steps_loop = torch.cat([s.steps for s in singles])

    print(f"# {name}: d={ds.n_features}, train accuracy {acc:.3f}, nce={nce}, tau={tau}, T=30, "
          f"clock {'cpu (process_time)' if clock is time.process_time else 'wall'}; "
          f"converged {batch.converged.float().mean().item():.3f}, "
          f"mean steps {batch.steps.float().mean().item():.2f}, max steps {int(batch.steps.max())}")
    if len(rows) < nce:
        print(f"# {name}: per-factual loop timed on {len(rows)} random rows of {nce}, "
              f"extrapolated linearly to {nce}")
    bench(f"ce_batched_seconds_{name}", t_batch, "s")
    bench(f"ce_loop_seconds_{name}", t_loop, "s")
    bench(f"ce_speedup_{name}", t_loop / t_batch, "x")
    bench(f"ce_loop_max_abs_diff_{name}", (cf_loop - batch.counterfactual[rows]).abs().max().item(), "abs")
    bench(f"ce_loop_steps_mismatch_{name}", int((steps_loop != batch.steps[rows]).sum()), "rows")


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    default_dir = os.environ.get("CTGRID_DATA") or str(repo.parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=default_dir)
    ap.add_argument("--only", choices=sorted(SETTINGS), action="append")
    ap.add_argument("--repeats", type=int, default=5, help="batched searches timed (median)")
    ap.add_argument("--loop-rows", type=int, default=1000,
                    help="factuals in the per-factual loop (>= nce: all; else a random subset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.only or list(SETTINGS):
        run(name, args.data_dir, args.repeats, args.loop_rows, args.seed,
            time.process_time if args.clock == "cpu" else time.perf_counter)


if __name__ == "__main__":
    main()
