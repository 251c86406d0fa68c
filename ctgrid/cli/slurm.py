"""``ctgrid slurm submit GRID [run options] [Slurm options] [-- sbatch args]``.

Renders the batch script (:mod:`ctgrid.slurm.template`), checks it on the login node
with the job's own interpreter and submits it (:mod:`ctgrid.slurm.submit`). Imports
neither torch nor pandas: ``--dry-run`` takes about as long as ``ctgrid run --dry-run``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._grid_args import add_overrides, grid_and_overrides
from .grid import add_run_options


def add_slurm_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("slurm", help="submit a grid to SLURM (batch script, checks, requeue, arrays)",
                       description="Run grids on a SLURM cluster.")
    p.set_defaults(func=submit)   # the only subcommand (argparse requires one)
    inner = p.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", required=True)
    s = inner.add_parser(
        "submit", help="check a grid on the login node, write its batch script and sbatch it",
        description=("Check GRID with the job's interpreter (ctgrid run --dry-run: grid, data, results "
                     "directory), write the batch script to RESULTS/<grid>/slurm/ and submit it. The job "
                     "runs `ctgrid run` under srun (rank 0 schedules) or, with --array N, as N single-"
                     "process array tasks that each run a fixed share of the grid. On the warning "
                     "signal (120 s before --time) the run checkpoints, exits 3 and the job requeues "
                     "itself (at most --max-requeues times) to resume. Arguments after `--` go to "
                     "sbatch as they are."))
    s.add_argument("grid", metavar="GRID", help="grid YAML file, or the name of a shipped grid")
    add_overrides(s)
    add_run_options(s)
    g = s.add_argument_group("Slurm")
    g.add_argument("--ntasks", type=int, default=None, metavar="N",
                   help="tasks of the MPI job: rank 0 schedules, N-1 run jobs (default 2; "
                        "1 with --array)")
    g.add_argument("--cpus-per-task", type=int, default=1, metavar="C",
                   help="cores (torch threads) per task (default 1)")
    g.add_argument("--time", default="01:00:00", metavar="T",
                   help="time limit per allocation, Slurm's format (default 01:00:00)")
    g.add_argument("--mem-per-cpu", default=None, metavar="M",
                   help="memory per core, e.g. 1900M or 2G (default: the cluster's default)")
    g.add_argument("--partition", default=None, metavar="P")
    g.add_argument("--account", default=None, metavar="A")
    g.add_argument("--job-name", default=None, metavar="NAME", help="default: the grid's name")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before ctgrid in the job, e.g. 'module load gcc' "
                        "(repeat for several)")
    g.add_argument("--gpus-per-task", type=int, default=None, metavar="N",
                   help="GPUs for every task (#SBATCH --gpus-per-task); needs --device cuda or auto. "
                        "Each worker computes on one GPU; rank 0 (the scheduler) leaves its own idle")
    g.add_argument("--array", type=int, default=None, metavar="N",
                   help="run as N independent array tasks (no MPI), each a fixed longest-first "
                        "share of the grid's jobs")
    g.add_argument("--requeue", action=argparse.BooleanOptionalAction, default=True,
                   help="after the warning signal (exit 3) requeue the job to resume (default: on)")
    g.add_argument("--max-requeues", type=int, default=None, metavar="R",
                   help="requeue at most R times (default 3)")
    g.add_argument("--overcommit", action="store_true",
                   help="sbatch --overcommit (more tasks than cores: a small test node)")
    g.add_argument("--aggregate", action="store_true",
                   help="also submit `ctgrid aggregate` to run after the job has ended "
                        "(--dependency=afterany)")
    g.add_argument("--python", default=sys.executable, metavar="PY",
                   help=f"the interpreter the job runs (default: this one, {sys.executable})")
    g.add_argument("--dry-run", action="store_true",
                   help="check and print the script(s); write and submit nothing")
    s.set_defaults(func=submit, sbatch_args=(), argv_seen=[])
    return p


def _run_args(args: argparse.Namespace, grid: str, overrides: tuple[str, ...], results: Path) -> tuple[str, ...]:
    """The ``ctgrid run`` arguments the job passes (absolute paths: the job's cwd may differ)."""
    out = [str(Path(grid).resolve()) if Path(grid).is_file() else grid, *overrides,
           "--results", str(results)]
    if args.data_dir is not None:
        out += ["--data-dir", str(Path(args.data_dir).resolve())]
    if args.shard_size != 1:
        out += ["--shard-size", str(args.shard_size)]
    if args.pack_size is not None:
        out += ["--pack-size", str(args.pack_size)]
    if args.device != "cpu":
        out += ["--device", args.device]
    out += [flag for flag, on in (("--retry-failed", args.retry_failed), ("--force", args.force),
                                  ("--no-tail-split", not args.tail_split)) if on]
    return tuple(out)


def submit(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..grid import load_grid
    from ..slurm.options import DEFAULT_MAX_REQUEUES, SubmitOptions
    from ..slurm.submit import check_path, render, state_dir
    from ..slurm.submit import submit as do_submit
    from ..device import parse_device
    grid, overrides = grid_and_overrides(args)
    args.device = parse_device(args.device)
    if args.max_requeues is not None and not args.requeue:
        raise ConfigError("--max-requeues: given with --no-requeue; allowed: one of the two")
    if args.array is not None and args.shard_size != 1:
        raise ConfigError(f"--shard-size: got {args.shard_size} with --array; allowed: 1 (array "
                          f"tasks run one process each)")
    name = load_grid(grid, overrides).name
    results = check_path(Path(args.results).resolve(), "--results")
    grid_dir = results / name
    opts = SubmitOptions(
        job_name=args.job_name or name, python=args.python,
        run_args=_run_args(args, grid, overrides, results), state_dir=str(state_dir(grid_dir)),
        ntasks=args.ntasks if args.ntasks is not None else (1 if args.array is not None else 2),
        cpus_per_task=args.cpus_per_task, time=args.time, mem_per_cpu=args.mem_per_cpu,
        partition=args.partition, account=args.account, setup=tuple(args.setup), array=args.array,
        requeue=args.requeue, max_requeues=DEFAULT_MAX_REQUEUES if args.max_requeues is None
        else args.max_requeues, overcommit=args.overcommit, sbatch_args=tuple(args.sbatch_args),
        device=args.device, gpus_per_task=args.gpus_per_task)
    agg_args = (str(grid_dir), *(["--data-dir", str(Path(args.data_dir).resolve())]
                                 if args.data_dir else [])) if args.aggregate else None
    command = shlex.join(["ctgrid", "slurm", "submit", *(a for a in args.argv_seen if a != "--dry-run")])
    return do_submit(render(opts, grid_dir, agg_args, command), sys.stdout, dry_run=args.dry_run)
