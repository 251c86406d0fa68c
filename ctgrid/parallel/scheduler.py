"""Planning a grid run and running it in one process.

:func:`prepare` (the scheduler's side, rank 0 under MPI) loads the grid, takes the
results directory's lock, writes the grid files and plans: done jobs are skipped
(unless a file no longer has the size their ``done.json`` recorded: then the marker is
set aside and the job re-run, :mod:`ctgrid.integrity`), failed ones skipped unless
``retry_failed``, the rest ordered longest expected first (no static chunks, no dummy
jobs; docs/deviations.md, D12). :func:`run_serial` then runs the plan in this process;
:mod:`ctgrid.parallel.mpi` hands it out to worker ranks instead. Both report through
:class:`Progress`.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, TextIO

from ..errors import ConfigError, CTGridError, DataError, StoreError
from ..store import ResultStore, RunLock, now
from .array import ArrayLock, ArrayTask
from .monitor import eta_seconds, heartbeat_text, write_run_file
from .plan import Plan, balance, job_cost, make_plan, packing_line
from .settings import JobOutcome, Role, RunSettings
from .signals import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, EXIT_USAGE, StopFlag

if TYPE_CHECKING:
    from ..grid.job import JobConfig

__all__ = ["GridRun", "Plan", "Prepared", "Progress", "drive", "exit_code", "job_cost",
           "make_plan", "preflight", "prepare", "print_plan", "run_serial"]


@dataclass(frozen=True)
class GridRun:
    """One ``ctgrid run`` invocation."""

    grid: str | Path   # a grid file, or the name of a shipped grid
    settings: RunSettings
    retry_failed: bool = False
    force: bool = False
    dry_run: bool = False
    overrides: tuple[str, ...] = ()   # ``group.key=VALUE`` from the command line
    array: ArrayTask | None = None    # run only this array task's share (:mod:`.array`)
    tail_split: bool = True           # split the packs at the end for the workers (:func:`.plan.balance`)


@dataclass
class Prepared:
    """A planned run: its store, jobs by id, plan, and the results directory's lock."""

    store: ResultStore
    jobs: dict[str, JobConfig]
    plan: Plan
    lock: RunLock | ArrayLock | None
    n_points: int = 0
    run_file: str = "run.json"   # live state for ``ctgrid status`` (array tasks: one each)
    kind: str = "cpu"            # the device kind the packs are sized for
    pack_size: int = 16          # their cap on members
    device: str = "cpu"          # the --device value

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def preflight(jobs: Mapping[str, JobConfig], data_dir: str | None) -> None:
    """Fail early (exit 2, nothing written) on a data-dependent config error or missing files."""
    from ..data.specs import dataset_defaults, resolve_data_dir
    from ..grid.checks import check_features, check_sizes
    check_sizes(jobs)
    for name in sorted({j.data.name for j in jobs.values()} - {"table"}):   # tables: check_sizes
        files = dataset_defaults(name).files
        if not files:
            continue
        root = resolve_data_dir(data_dir, name)
        missing = [f for f in files if not (root / f).exists()]
        if missing:
            raise DataError(f"dataset {name!r}: missing {', '.join(missing)} in {root} "
                            f"(--data-dir / CTGRID_DATA)")
    check_features(jobs, data_dir, read_every_dataset=True)


def prepare(run: GridRun, workers: int = 1) -> Prepared:
    """Load and check the grid, lock and initialise its results directory, plan the run for
    ``workers`` workers (worker ranks, or sharded groups: the tail's split depends on it)."""
    from ..device import check_device
    from ..grid import load_grid
    check_device(run.settings.device)   # before anything is read or written (cpu: no torch)
    grid = load_grid(run.grid, run.overrides)
    store = ResultStore.for_grid(run.settings.results, grid.name)
    jobs = grid.jobs()
    preflight(jobs, run.settings.data_dir)
    from ..device import pack_kind
    kind = pack_kind(run.settings.device)
    pack_size = run.settings.pack_cap(kind)
    if run.dry_run:   # refuse exactly what the real run would refuse, writing nothing
        from .monitor import live_holder
        holder = live_holder(store)
        if holder is not None:
            raise StoreError(f"results directory {store.root} is in use by another run ({holder}); "
                             f"wait for it or use --results elsewhere")
        store.check_grid(grid, force=run.force)
        store.check_writable()
        return _prepared(run, store, jobs, (kind, pack_size, workers), None, len(grid))
    store.check_grid(grid, force=run.force)   # refuse another grid's directory before creating .lock
    from .array import acquire
    lock = acquire(store, run.array)
    try:
        store.initialise(grid, force=run.force)
        prep = _prepared(run, store, jobs, (kind, pack_size, workers), lock, len(grid))
        for job_id in prep.plan.damaged:   # no longer done: a kill before its re-run leaves it pending
            store.job(job_id).set_aside_done()
        return prep
    except BaseException:
        lock.release()
        raise


def _prepared(run: GridRun, store: ResultStore, jobs: dict[str, JobConfig], packing: tuple[str, int, int],
              lock: RunLock | ArrayLock | None, n_points: int) -> Prepared:
    """The plan of ``run``: the whole grid's, or cut down to its array task's share, its tail
    split for the workers (unless ``--no-tail-split``); ``packing``: the device kind the packs
    are sized for, their cap on members and the number of workers."""
    kind, pack_size, workers = packing
    plan = make_plan(store, jobs, retry_failed=run.retry_failed, pack_size=pack_size, kind=kind)
    run_file = "run.json"
    if run.array is not None:
        from .array import restrict, share
        jobs, plan = restrict(jobs, plan, share(jobs, pack_size, run.array, kind))
        run_file = run.array.run_file
    if run.tail_split:
        plan = balance(plan, jobs, workers)
    return Prepared(store, jobs, plan, lock, n_points, run_file, kind=kind, pack_size=pack_size,
                    device=run.settings.device)


def print_damaged(plan: Plan, out: TextIO, dry: bool = False) -> None:
    """One line per done job whose files no longer match its ``done.json``: it runs again."""
    for job_id, why in plan.damaged.items():
        print(f"ctgrid: job {job_id}: {why}; {'the run would re-run' if dry else 're-running'} it",
              file=out, flush=True)


def print_plan(prep: Prepared, out: TextIO) -> None:
    """The ``--dry-run`` report: what would be skipped and what would run, in order, by pack."""
    p = prep.plan
    print_damaged(p, out, dry=True)
    print(f"grid results: {prep.store.root}", file=out)
    print(f"{prep.n_points} grid points -> {len(prep.jobs)} jobs: {len(p.done)} done, "
          f"{len(p.failed)} failed (skipped; --retry-failed re-runs them), {len(p.todo)} to run "
          f"({len(p.resume)} resume from a checkpoint) in {len(p.packs)} pack(s)", file=out)
    print(packing_line(prep.device, prep.kind, prep.pack_size), file=out)
    if p.splits:
        print(f"tail split for the workers: {p.splits} pack(s) split in halves at the end of the run "
              f"(a job's results are the same; --no-tail-split keeps them whole)", file=out)
    for n, pack in enumerate(p.packs, 1):
        if len(pack) > 1:
            print(f"  pack {n}: {len(pack)} jobs trained as one batched network", file=out)
        for job_id in pack:
            tag = "  resume" if job_id in p.resume else "  damaged" if job_id in p.damaged else ""
            indent = "    " if len(pack) > 1 else "  "
            print(f"{indent}{job_id}  {prep.jobs[job_id].name:<28} cost {p.costs[job_id]:>10.0f}{tag}",
                  file=out)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


#: a progress line with each running job's epoch after this long without one
HEARTBEAT_SECONDS = 30.0


class Progress:
    """Done/failed/running counts, elapsed time and ETA, printed on every event.

    One line per event; on a terminal a single line updated in place (failures
    and the final summary still get lines of their own). The ETA divides the
    expected cost still to run by the cost finished per second so far.
    """

    def __init__(self, prep: Prepared, n_workers: int, out: TextIO):
        self.prep, self.n_workers, self.out = prep, n_workers, out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.total = len(prep.jobs)
        self.done = len(prep.plan.done)
        self.failed = len(prep.plan.failed)
        self.running: dict[str, int] = {}
        self.since: dict[str, str] = {}
        self.pending = len(prep.plan.todo)
        self.cost_done = 0.0
        self.busy_seconds = 0.0
        self.interrupted = False
        self.io_errors: list[str] = []   # jobs whose files or record could not be written
        self.io_stop = False             # nothing more can be written: hand out no more jobs
        self.outcomes: list[JobOutcome] = []
        self.warnings: list[str] = []
        self.hints: dict[str, str] = {}
        self.started_at = now()
        self.last_emit = time.monotonic()
        self._lock = threading.Lock()
        self._write_state()

    def _cost_left(self) -> float:
        costs = self.prep.plan.costs
        return sum(costs.get(j, 0.0) for j in self.running) * 0.5 + sum(
            costs[j] for j in self.prep.plan.todo[len(self.prep.plan.todo) - self.pending:])

    def _eta(self) -> str:
        """Remaining cost x measured seconds per unit of cost / workers (not the elapsed
        wall time, which undercounts while the first jobs run)."""
        eta = eta_seconds(self.busy_seconds, self.cost_done, self._cost_left(), self.n_workers)
        return "?" if eta is None else _duration(eta)

    def _write_state(self, finished: bool = False) -> None:
        """``run.json`` for ``ctgrid status`` (:mod:`.monitor`); never fails the run."""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": self.started_at,
                  "workers": self.n_workers, "done": self.done, "failed": self.failed,
                  "pending": self.pending, "total": self.total,
                  "running": {j: {"rank": r, "since": self.since.get(j)} for j, r in self.running.items()},
                  "busy_seconds": self.busy_seconds, "cost_done": self.cost_done, "cost_left": self._cost_left()}
        if finished:
            record["finished"] = now()
        try:
            write_run_file(self.prep.store, record, self.prep.run_file)
        except OSError:
            pass

    def heartbeat(self) -> None:
        """A progress line with each running job's epoch, when nothing was printed for
        :data:`HEARTBEAT_SECONDS` (called from a timer thread on rank 0)."""
        if self.running and time.monotonic() - self.last_emit >= HEARTBEAT_SECONDS:
            nepochs = {j: self.prep.jobs[j].training.nepochs for j in self.running}
            self._emit(heartbeat_text(self.prep.store, dict(self.running), nepochs))

    def line(self) -> str:
        return (f"[{_duration(time.monotonic() - self.t0)}] done {self.done}/{self.total} "
                f"failed {self.failed} running {len(self.running)} pending {self.pending} "
                f"ETA {self._eta()}")

    def _emit(self, event: str, permanent: bool = False) -> None:
        with self._lock:
            try:
                if self.tty:
                    text = f"\r\x1b[K{self.line()} | {event}"
                    self.out.write(text + ("\n" if permanent else ""))
                else:
                    self.out.write(f"{self.line()} | {event}\n")
                self.out.flush()
            except BrokenPipeError:   # `ctgrid run | head`: the reader left; the run goes on
                self.out = open(os.devnull, "w")
            self.last_emit = time.monotonic()
        self._write_state()

    def started(self, job_id: str, rank: int) -> None:
        self.running[job_id] = rank
        self.since[job_id] = now()
        self.pending -= 1
        tag = " (resume)" if job_id in self.prep.plan.resume else ""
        self._emit(f"start {job_id} {self.prep.jobs[job_id].name} on rank {rank}{tag}")

    def finished(self, outcome: JobOutcome) -> None:
        self.running.pop(outcome.job_id, None)
        self.outcomes.append(outcome)
        name = self.prep.jobs[outcome.job_id].name
        if outcome.status == "done":
            self.done += 1
            self.cost_done += self.prep.plan.costs.get(outcome.job_id, 0.0)
            self.busy_seconds += outcome.seconds
            if outcome.warning:
                self.warnings.append(outcome.job_id)
            if outcome.hint:
                self.hints[outcome.job_id] = outcome.hint
            note = f" WARNING: {outcome.warning}" if outcome.warning else ""
            self._emit(f"done {outcome.job_id} {name} ({outcome.seconds:.1f}s){note}", permanent=bool(note))
        elif outcome.status == "failed":
            self.failed += 1
            self._emit(f"FAILED {outcome.job_id} {name}: {outcome.error_type}: {outcome.message}",
                       permanent=True)
        elif outcome.status == "io_error":   # not recorded: the next run takes it up again
            self.pending += 1
            self.io_errors.append(outcome.message or "")
            self.io_stop = self.io_stop or outcome.fatal
            stop = "; stopping: nothing more can be written there" if outcome.fatal else ""
            self._emit(f"I/O ERROR {outcome.job_id} {name}: {outcome.message}{stop}", permanent=True)
        else:
            self.interrupted = True
            self.pending += 1
            self._emit(f"interrupted {outcome.job_id} {name} after epoch {outcome.epochs_done}")

    def close(self) -> int:
        """Print the summary; return the exit code."""
        if self.tty:
            self.out.write("\n")
        self._write_state(finished=True)
        code = EXIT_IO if self.io_errors else exit_code(self.done, self.total, self.interrupted)
        what = {EXIT_OK: "all jobs done", EXIT_FAILED: "some jobs failed (ctgrid status shows them)",
                EXIT_INTERRUPTED: "interrupted: run the same command again to continue",
                EXIT_IO: "results could not be written: free space (or fix permissions) and run the "
                         "same command again to continue"}[code]
        print(f"ctgrid: {self.done}/{self.total} jobs done, {self.failed} failed, "
              f"{self.pending + len(self.running)} not run in {_duration(time.monotonic() - self.t0)}: "
              f"{what}; results in {self.prep.store.root}", file=self.out, flush=True)
        if self.warnings:
            print(f"ctgrid: warning: {len(self.warnings)} finished job(s) look diverged (loss far above "
                  f"its lowest): {', '.join(self.warnings[:5])}{' ...' if len(self.warnings) > 5 else ''}; "
                  f"see their log.txt", file=self.out, flush=True)
        if self.hints:
            ids = list(self.hints)
            print(f"ctgrid: note: {len(ids)} job(s) ({', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}): "
                  f"{self.hints[ids[0]]}", file=self.out, flush=True)
        if self.io_errors:
            print(f"ctgrid: error: {self.io_errors[0]}", file=sys.stderr, flush=True)
        return code


def exit_code(done: int, total: int, interrupted: bool) -> int:
    """3 when interrupted, else 0 when every job is done, else 1."""
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if done == total else EXIT_FAILED


def drive(run: GridRun, out: TextIO, n_workers: int, loop: Callable[[Prepared, Progress], None],
          answer_workers: Callable[[int], None] | None = None) -> int:
    """The skeleton every backend shares: prepare, print the plan (dry run) or run
    ``loop`` with a :class:`Progress`, print the summary, release the lock; return the exit code.

    ``answer_workers(code)`` tells waiting workers to stop when no loop runs (bad
    input: exit 2, re-raised afterwards; dry run: 0).
    """
    answer = answer_workers or (lambda code: None)
    try:
        prep = prepare(run, n_workers)
    except CTGridError:
        answer(EXIT_USAGE)
        raise
    if run.dry_run:
        print_plan(prep, out)
        answer(EXIT_OK)
        return EXIT_OK
    beat = threading.Event()
    try:
        print_damaged(prep.plan, out)
        progress = Progress(prep, n_workers, out)
        threading.Thread(target=_beat, args=(progress, beat), daemon=True, name="ctgrid-heartbeat").start()
        loop(prep, progress)
        beat.set()
        return progress.close()
    finally:
        beat.set()
        prep.release()


def _beat(progress: Progress, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS / 3):
        try:
            progress.heartbeat()
        except Exception:  # noqa: BLE001 (a progress line must never stop a run)
            pass


def run_serial(run: GridRun, stop: StopFlag, out: TextIO) -> int:
    """Run the grid's pending jobs one after another in this process."""
    if run.settings.shard_size > 1:
        raise ConfigError(f"--shard-size: got {run.settings.shard_size}; sharded jobs need MPI "
                          f"(mpiexec/srun with 1 + k*m ranks), allowed here: 1")

    def loop(prep: Prepared, progress: Progress) -> None:
        from .gpus import process_device
        from .runner import run_pack, warm_up   # torch: only when jobs run (not for --dry-run)
        warm_up()
        device = process_device(run.settings.device)
        for pack in prep.plan.packs:
            if stop():
                progress.interrupted = True
                return
            for job_id in pack:
                progress.started(job_id, 0)
            outcomes = run_pack(prep.store, {j: prep.jobs[j] for j in pack}, run.settings,
                                Role(stop=stop, device=device))
            for outcome in outcomes:
                progress.finished(outcome)
            if progress.io_stop or any(o.status == "interrupted" for o in outcomes):
                return

    return drive(run, out, 1, loop)
