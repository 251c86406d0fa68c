"""Cost of a Counterfactual Training epoch relative to a vanilla epoch (goal: <= 2x on moons).

Paper settings (docs/deviations.md, R19): full objective, ECCo, T = 30;
moons: batch 30, nce 1000, tau 0.9, lambda_reg 0.25; adult: batch 1000,
nce 5000, tau 0.75, lambda_reg 0.25. One torch thread. An epoch's time is the
wall time between consecutive progress callbacks (CE phase, updates and the
accuracy evaluation). Vanilla and CT runs alternate ``--repeats`` times; each
epoch's time is its minimum over the repeats (robust to other load on the
machine), and the figure is the mean over the epochs after the first, so CT's
cost reflects how the search shortens as training proceeds (``ratio_early``:
epochs 2-5 only, when most searches still run all T steps; ``cpu_ratio``: the same
from process CPU time, which other load on a shared machine disturbs less).

Usage: python benchmarks/bench_training.py [--epochs N] [--adult-epochs N] [--data-dir DIR] [--skip-adult]
Prints ``BENCH <name> <value> <unit>`` lines.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from ctgrid.data import DataConfig, load_dataset
from ctgrid.generators import GeneratorConfig
from ctgrid.models import ModelConfig
from ctgrid.training import TrainingConfig, train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def epoch_seconds(dataset, gen: GeneratorConfig, cfg: TrainingConfig) -> tuple[list, list, object]:
    """Wall and process-CPU seconds of epochs 2.., and the history."""
    wall, cpu = [time.perf_counter()], [time.process_time()]

    def stamp(row: dict) -> None:
        wall.append(time.perf_counter())
        cpu.append(time.process_time())

    result = train(dataset, ModelConfig(), gen, cfg, progress=stamp)
    diff = lambda t: [b - a for a, b in zip(t[1:], t[2:])]  # noqa: E731
    return diff(wall), diff(cpu), result.history


def _min_over_repeats(runs: list[list[float]]) -> list[float]:
    return [min(v) for v in zip(*runs)]


def compare(name: str, dataset, gen: GeneratorConfig, epochs: int, repeats: int, **kw) -> None:
    base = dict(nepochs=epochs, seed=1, **kw)
    wall: dict[str, list[list[float]]] = {"vanilla": [], "full": []}
    cpu: dict[str, list[list[float]]] = {"vanilla": [], "full": []}
    parts: dict[str, list[list[float]]] = {"t_ce": [], "t_update": []}
    for _ in range(repeats):
        for objective in wall:
            w, c, hist = epoch_seconds(dataset, gen, TrainingConfig(objective=objective, **base))
            wall[objective].append(w)
            cpu[objective].append(c)
        for col in parts:
            parts[col].append(hist[col].iloc[1:].tolist())
    van, ct = (_min_over_repeats(wall[k]) for k in ("vanilla", "full"))
    cvan, cct = (statistics.mean(_min_over_repeats(cpu[k])) for k in ("vanilla", "full"))
    t_van, t_ct = statistics.mean(van), statistics.mean(ct)
    print(f"BENCH vanilla_epoch_{name} {t_van:.4f} s")
    print(f"BENCH ct_epoch_{name} {t_ct:.4f} s")
    for col, label in (("t_ce", "ce_phase"), ("t_update", "updates")):
        print(f"BENCH ct_epoch_{label}_{name} {statistics.mean(_min_over_repeats(parts[col])):.4f} s")
    print(f"BENCH ct_epoch_ratio_{name} {t_ct / t_van:.2f} x")
    early = min(4, len(ct))
    print(f"BENCH ct_epoch_ratio_early_{name} {sum(ct[:early]) / sum(van[:early]):.2f} x")
    print(f"BENCH ct_epoch_cpu_ratio_{name} {cct / cvan:.2f} x")
    print(f"# {name}: epochs 2-{epochs}; last epoch: mature-CE share {hist['converged'].iloc[-1]:.3f}, "
          f"mean search steps {hist['search_steps'].iloc[-1]:.1f}, train acc {hist['acc_train'].iloc[-1]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--adult-epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("CTGRID_DATA", str(DEFAULT_DATA)))
    ap.add_argument("--skip-adult", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    moons = load_dataset(DataConfig(name="moons"))
    compare("moons", moons, GeneratorConfig(name="ecco", maxiter=30, tau=0.9), args.epochs,
            args.repeats, batch_size=30, nce=1000, lambda_reg=0.25)
    if not args.skip_adult:
        adult = load_dataset(DataConfig(name="adult"), args.data_dir)
        compare("adult", adult, GeneratorConfig(name="ecco", maxiter=30, tau=0.75), args.adult_epochs,
                args.repeats, batch_size=1000, nce=5000, lambda_reg=0.25)


if __name__ == "__main__":
    main()
