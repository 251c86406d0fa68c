"""Sharded mode: one job's per-epoch CE search split over the ranks of a group.

For MNIST (MLP, nce 5000) and adult (batch 1000, nce 5000), both with ECCo T 30, the same
training runs under ``mpiexec -n 1`` and ``mpiexec -n 2`` (one torch thread per rank; the
two ranks form one group as in ``ctgrid run --shard-size 2``). Printed:

- ``sharded_ce_speedup_<data>``: CE-phase seconds on 1 rank / on 2 ranks (rank 0's ``t_ce``);
- ``sharded_comm_share_<data>``: the share of rank 0's CE phase spent transferring the
  counterfactuals (the buffer ``Allgatherv``);
- ``sharded_wait_share_<data>``: the share spent waiting for the slower rank (its slice
  of the search took longer: rows converge at different steps).

Each figure is the median of ``--repeats`` pairs of runs (1 rank, then 2 ranks, alternating:
this VM's speed drifts between runs); the first epoch (which builds the engine) is left out
of every figure. Usage: python benchmarks/bench_sharded.py [--epochs N] [--repeats N]
[--case mnist|adult] [--data-dir DIR]
Prints ``BENCH <name> <value> <unit>`` lines.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ctgrid.cli.grid import _positive   # an integer >= 1, else one argparse error line (exit 2)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CASES = {"mnist": dict(batch_size=128, nce=5000), "adult": dict(batch_size=1000, nce=5000)}
#: epochs per case (the first is left out): adult's CE phase is ~0.15 s an epoch, so it runs
#: longer than MNIST's (~1 s) for a figure this VM's drift does not swamp
EPOCHS = {"mnist": 4, "adult": 13}


def worker(name: str, epochs: int, data_dir: str, out: Path) -> None:
    """One training under MPI; rank 0 writes its CE seconds and allgather seconds to ``out``."""
    import torch
    from mpi4py import MPI

    from ctgrid.data import DataConfig, load_dataset
    from ctgrid.generators import GeneratorConfig
    from ctgrid.models import ModelConfig
    from ctgrid.parallel.sharded import ShardedGenerate
    from ctgrid.training import TrainingConfig, train
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    ds = load_dataset(DataConfig(name=name), data_dir)
    hooks: list[ShardedGenerate] = []

    class Timed(ShardedGenerate):
        """Keeps each call's seconds: the first epoch (which builds the engine) is left out
        of the shares, as it is of ``t_ce``."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.calls: list[dict] = []

        def __call__(self, *a, **kw):
            before = dict(self.seconds)
            out = super().__call__(*a, **kw)
            self.calls.append({k: self.seconds[k] - before[k] for k in before})
            return out

    def wrap(build):
        hooks.append(Timed(comm, build, leader=comm.Get_rank() == 0))
        return hooks[-1]

    cfg = TrainingConfig(objective="full", nepochs=epochs, seed=1, **CASES[name])
    result = train(ds, ModelConfig(), GeneratorConfig(name="ecco", maxiter=30), cfg, wrap_search=wrap)
    if comm.Get_rank() == 0:
        t_ce = float(result.history["t_ce"].iloc[1:].sum())     # epoch 1 builds the engine
        later = hooks[0].calls[1:]
        out.write_text(json.dumps({"t_ce": t_ce, **{k: sum(c[k] for c in later) for k in hooks[0].seconds}}))


def run(n: int, name: str, epochs: int, data_dir: str) -> dict:
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("bench_sharded needs mpiexec and mpi4py: pip install '.[mpich]'")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([mpiexec, "-n", str(n), sys.executable, __file__, "--worker", name,
                        "--epochs", str(epochs), "--data-dir", data_dir, "--out", str(out)], check=True)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=_positive, default=None, help="epochs per run (default: per case, EPOCHS)")
    ap.add_argument("--data-dir", default=os.environ.get("CTGRID_DATA", str(DEFAULT_DATA)))
    ap.add_argument("--repeats", type=_positive, default=3, help="pairs of runs (1 rank, 2 ranks); medians printed")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="only this data set (repeatable)")
    ap.add_argument("--worker", choices=sorted(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.epochs, args.data_dir, args.out)
        return
    for name in args.case or sorted(CASES, reverse=True):
        pairs = []
        for i in range(args.repeats):   # alternating, so a slow moment of the machine hits both sides
            one, two = (run(n, name, args.epochs or EPOCHS[name], args.data_dir) for n in (1, 2))
            pairs.append((one["t_ce"] / two["t_ce"], two["transfer"] / two["t_ce"], two["wait"] / two["t_ce"]))
            print(f"# {name} run {i + 1}: CE {one['t_ce']:.2f} s on 1 rank, {two['t_ce']:.2f} s on 2: "
                  f"{pairs[-1][0]:.2f}x, transfer {pairs[-1][1]:.3f}, waiting {pairs[-1][2]:.3f}", flush=True)
        speedup, comm, wait = (statistics.median(col) for col in zip(*pairs))
        print(f"BENCH sharded_ce_speedup_{name} {speedup:.2f} x", flush=True)
        print(f"BENCH sharded_comm_share_{name} {comm:.3f} fraction", flush=True)
        print(f"BENCH sharded_wait_share_{name} {wait:.3f} fraction", flush=True)


if __name__ == "__main__":
    main()
