"""``ctgrid run GRID`` (in-process or under mpiexec/srun) and ``ctgrid status RESULTS``.

Exit codes of ``run``: 0 every job of the grid is done; 1 the run ended but some
job failed (``error.json``; ``--retry-failed`` re-runs them); 2 bad input (grid,
data, results directory locked by another run or holding another grid);
3 interrupted by SIGTERM/SIGUSR1/Ctrl-C (run the same command again to continue);
4 results could not be written (read-only or full disk).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._grid_args import add_overrides, grid_and_overrides
from ._process import add_device, add_threads, check_threads

if TYPE_CHECKING:
    from ..parallel.array import ArrayTask


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer >= 1")
    return value


def _index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer >= 0")
    return value


def add_run_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ._process import default_threads
    p = sub.add_parser("run", help="run every job of a grid (in-process, or under mpiexec/srun)",
                       description=("Train and evaluate every job of GRID into RESULTS/<grid name>/; "
                                    "finished jobs are skipped, interrupted ones resume. Under "
                                    "mpiexec/srun rank 0 schedules and the other ranks run jobs. "
                                    "Exit codes: 0 all done, 1 some failed, 2 bad input, "
                                    "3 interrupted, 4 results not writable."))
    from ..grid import DEFAULT_GRID
    p.add_argument("grid", nargs="?", default=DEFAULT_GRID, metavar="GRID",
                   help=f"grid YAML file, or the name of a shipped grid (default: {DEFAULT_GRID})")
    add_overrides(p)
    add_run_options(p)
    add_threads(p, default_threads(), "$SLURM_CPUS_PER_TASK or 1")
    p.add_argument("--array-task", type=_index, default=None, metavar="I",
                   help="run only array task I's share of the grid (0-based; with --array-size; "
                        "one process, no MPI): its packs, dealt longest expected first, depend "
                        "on the grid alone, so a rerun takes the same jobs")
    p.add_argument("--array-size", type=_positive, default=None, metavar="N",
                   help="the number of array tasks the grid is split into (with --array-task)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be skipped and run, in order, and write nothing")
    p.set_defaults(func=run)
    return p


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of ``ctgrid run`` that ``ctgrid slurm submit`` passes on to it."""
    p.add_argument("--results", type=_directory, default=Path("results"), metavar="DIR",
                   help="results root; the grid's results go to DIR/<grid name>/ (default: ./results)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory of the real datasets' files (default: $CTGRID_DATA)")
    p.add_argument("--shard-size", type=_positive, default=1, metavar="K",
                   help="MPI only: K ranks train each job together, splitting every epoch's "
                        "counterfactual search (needs 1 + K*m ranks; default 1)")
    p.add_argument("--pack-size", type=_positive, default=None, metavar="K",
                   help="train up to K compatible jobs (same data, model, batch grid and search "
                        "budget; different loss weights, learning rates, seeds...) as one batched "
                        "network; each job's results are exactly those it gets alone "
                        "(default: the device's, 16 on a CPU; 1 = every job alone; packs of one "
                        "with --shard-size > 1)")
    p.add_argument("--no-tail-split", dest="tail_split", action="store_false",
                   help="keep every pack whole at the end of an MPI run (by default the packs that "
                        "would run while other workers idle are split in halves; a job's results "
                        "are the same either way)")
    add_device(p, "every job (each MPI worker takes one GPU by its node-local rank; rank 0 none)")
    p.add_argument("--retry-failed", action="store_true",
                   help="re-run failed jobs (by default they are skipped and reported)")
    p.add_argument("--force", action="store_true",
                   help="allow writing into a results directory that holds a different grid "
                        "(shared, content-addressed jobs are reused)")


def _directory(text: str) -> Path:
    """A directory argument: an empty one is a mistake (``--results "$UNSET"``), not ``.``."""
    if not text.strip():
        raise argparse.ArgumentTypeError("got an empty path; allowed: a directory path")
    return Path(text)


def run(args: argparse.Namespace) -> int:
    from ..grid import DEFAULT_GRID
    from ..parallel import GridRun, RunSettings, run_grid
    check_threads(args.threads)
    grid, overrides = grid_and_overrides(args, DEFAULT_GRID)
    from ..device import parse_device
    settings = RunSettings(results=args.results, data_dir=args.data_dir, threads=args.threads,
                           shard_size=args.shard_size, pack_size=args.pack_size,
                           device=parse_device(args.device))
    return run_grid(GridRun(grid, settings, retry_failed=args.retry_failed, force=args.force,
                            dry_run=args.dry_run, overrides=overrides, array=_array_task(args),
                            tail_split=args.tail_split))


def _array_task(args: argparse.Namespace) -> ArrayTask | None:
    """``--array-task I --array-size N`` (both or neither; one process, not under MPI)."""
    from ..errors import ConfigError
    from ..parallel.array import ArrayTask
    if args.array_task is None and args.array_size is None:
        return None
    if args.array_task is None or args.array_size is None:
        given = "--array-task" if args.array_task is not None else "--array-size"
        raise ConfigError(f"{given}: given alone; allowed: --array-task I together with --array-size N")
    from ..parallel import under_mpi_launcher
    if under_mpi_launcher():
        raise ConfigError("--array-task: an array task runs in one process; allowed: without "
                          "mpiexec/srun -n > 1 (srun --ntasks=1 --mpi=none)")
    if args.shard_size > 1:
        raise ConfigError(f"--shard-size: got {args.shard_size} with --array-task; allowed: 1")
    return ArrayTask(args.array_task, args.array_size)


def add_status_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("status", help="progress of a results directory: live run, jobs by state, ETA",
                       description=("Show RESULTS (a RESULTS/<grid name> directory, or a results root "
                                    "holding several): whether a run is live (pid and host from its "
                                    "lock), each running job's epoch, last loss and validation accuracy, "
                                    "the ETA from measured rates, and the jobs by state: done, failed, "
                                    "running, interrupted (a checkpoint and no live run: the next run "
                                    "resumes it), pending. Reads files only; never imports torch."))
    p.add_argument("results", type=Path, metavar="RESULTS", help="results directory")
    p.add_argument("--traceback", action="store_true", help="print the failed jobs' tracebacks")
    p.add_argument("--watch", type=float, nargs="?", const=5.0, default=None, metavar="SECONDS",
                   help="repeat every SECONDS (default 5) until Ctrl-C")
    p.set_defaults(func=status)
    return p


def _status_once(args: argparse.Namespace) -> None:
    from ..parallel.monitor import live_holder, read_run_file, status_text
    from ..store import find_stores
    for store in find_stores(args.results):
        st = store.status()
        live = live_holder(store) is not None
        record = read_run_file(store) if live else None
        running = set((record or {}).get("running") or {})
        started = st.counts["started"]
        # a live run of an older ctgrid writes no run.json: its started jobs are running
        n_running = started if live and record is None else min(started, len(running))
        counts = {"done": st.counts["done"], "failed": st.counts["failed"], "running": n_running,
                  "interrupted": started - n_running, "pending": st.counts["pending"]}
        text = ", ".join(f"{v} {k}" for k, v in counts.items())
        print(f"{store.root}: {st.n_points} grid points, {st.n_jobs} jobs: {text}")
        nepochs = {j: store.read_config(j).training.nepochs for j in running}
        for line in status_text(store, nepochs):
            print(line)
        if st.n_other:
            print(f"  ({st.n_other} other job directories, not in this grid)")
        for rec in st.failed:
            print(f"  failed {rec.get('job_id')}: {rec.get('error_type')}: {rec.get('message')}"
                  f"  (log: {rec.get('log_path')})")
            if args.traceback and rec.get("traceback"):
                sys.stdout.write("    " + rec["traceback"].rstrip().replace("\n", "\n    ") + "\n")
    sys.stdout.flush()


def status(args: argparse.Namespace) -> int:
    if args.watch is None:
        _status_once(args)
        return 0
    if not 0 < args.watch <= 86400:   # also nan and inf
        from ..errors import ConfigError
        raise ConfigError(f"--watch: got {args.watch}; allowed: a number of seconds in (0, 86400]")
    from ..parallel.monitor import watch

    def render() -> None:
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[2J\x1b[H")
        _status_once(args)
    watch(render, args.watch)
    return 0
