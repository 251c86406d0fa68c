"""Array mode: the grid split into N independent single-process tasks (a Slurm job array).

``ctgrid run GRID --array-task I --array-size N`` runs task I's *share*: the grid's packs
(:func:`ctgrid.grid.packs.make_packs`) dealt longest expected first, each to the task
with the least expected cost so far (ties: the lowest task). The share is a function of
the grid alone (job ids, expected costs, pack size), never of what is done, so a rerun
or a requeue of task I takes the same jobs, and the done markers make it idempotent;
no MPI is needed and the tasks never talk to each other.

Locking: a full run holds ``.lock`` exclusively. An array task holds ``.lock`` *shared*
(any number of tasks together, but never beside a full run) and its own
``.lock.array-I`` exclusively (a task never runs twice at once); its holder line is
written there. The grid files are written by every task, atomically and with identical
content, so the tasks need no order. Each task writes its live state to
``run.array-I.json``; ``ctgrid status`` merges those of the live tasks
(:func:`ctgrid.parallel.monitor.read_run_file`).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from .. import _atomic
from ..errors import ConfigError, StoreError
from ..store import ResultStore, RunLock, now, unwritable

from .monitor import LOCK_PREFIX, RUN_PREFIX, live_tasks
from .plan import Plan, longest_first, pack_costs

if TYPE_CHECKING:
    from ..grid.job import JobConfig

__all__ = ["MAX_ARRAY_SIZE", "ArrayLock", "ArrayTask", "acquire", "live_tasks", "restrict", "share", "shares"]


#: tasks of one array (a grid has at most 20,000 jobs: ctgrid.grid.spec.MAX_POINTS)
MAX_ARRAY_SIZE = 20_000


@dataclass(frozen=True)
class ArrayTask:
    """Task ``index`` (0-based) of ``size`` array tasks."""

    index: int
    size: int

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_ARRAY_SIZE:
            raise ConfigError(f"--array-size: got {self.size}; allowed: an integer in 1..{MAX_ARRAY_SIZE} "
                              f"(no more tasks than a grid may have jobs)")
        if not 0 <= self.index < self.size:
            raise ConfigError(f"--array-task: got {self.index}; allowed: 0 to {self.size - 1} "
                              f"(--array-size {self.size})")

    @property
    def run_file(self) -> str:
        return f"{RUN_PREFIX}{self.index}.json"


def shares(jobs: Mapping[str, JobConfig], pack_size: int, size: int,
           kind: str = "cpu") -> list[list[list[str]]]:
    """Every task's packs: longest-processing-time-first over the grid's packs (sized for
    device kind ``kind``; their costs from the pack-aware model, :func:`.plan.pack_costs`)."""
    from ..grid.packs import make_packs
    packs = make_packs(jobs, pack_size, kind)
    costs = pack_costs(jobs, packs)
    packs = longest_first(packs, costs)
    load = [0.0] * size
    out: list[list[list[str]]] = [[] for _ in range(size)]
    for pack in packs:
        task = min(range(size), key=lambda t: (load[t], t))
        out[task].append(pack)
        load[task] += sum(costs[j] for j in pack)
    return out


def share(jobs: Mapping[str, JobConfig], pack_size: int, task: ArrayTask, kind: str = "cpu") -> set[str]:
    """The job ids of ``task``'s share."""
    return {j for pack in shares(jobs, pack_size, task.size, kind)[task.index] for j in pack}


def restrict(jobs: Mapping[str, JobConfig], plan: Plan, mine: set[str]) -> tuple[dict[str, JobConfig], Plan]:
    """The jobs and the plan of a whole-grid run cut down to ``mine`` (whole packs)."""
    cut = Plan(todo=[j for j in plan.todo if j in mine],
               packs=[p for p in plan.packs if p[0] in mine],
               done=[j for j in plan.done if j in mine], failed=[j for j in plan.failed if j in mine],
               resume={j for j in plan.resume if j in mine},
               costs={j: c for j, c in plan.costs.items() if j in mine},
               damaged={j: w for j, w in plan.damaged.items() if j in mine})
    return {j: job for j, job in jobs.items() if j in mine}, cut


class ArrayLock:
    """``.lock`` shared plus ``.lock.array-I`` exclusive (see the module docstring)."""

    def __init__(self, store: ResultStore, task: ArrayTask):
        self.store, self.task = store, task
        self._fhs: list[Any] = []

    def acquire(self) -> "ArrayLock":
        try:
            self._flock(self.store.lock_file, fcntl.LOCK_SH,
                        "is in use by a (non-array) run; wait for it or use --results elsewhere")
            own = self._flock(self.store.root / f"{LOCK_PREFIX}{self.task.index}", fcntl.LOCK_EX,
                              f"is already running array task {self.task.index}")
        except BaseException:
            self.release()
            raise
        own.seek(0)
        own.truncate()
        own.write(f"array task {self.task.index}/{self.task.size}: pid {os.getpid()} on "
                  f"{socket.gethostname()} since {now()}\n")
        own.flush()
        return self

    def _flock(self, path: os.PathLike, mode: int, busy: str) -> Any:
        try:
            self.store.root.mkdir(parents=True, exist_ok=True)
            fh = _atomic.open_lock_file(path)
        except OSError as exc:
            raise unwritable(self.store.root, exc) from exc
        try:
            fcntl.flock(fh.fileno(), mode | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(f"results directory {self.store.root} {busy}") from None
            raise StoreError(f"cannot lock {path}: {exc}") from exc
        self._fhs.append(fh)
        return fh

    def release(self) -> None:
        for fh in reversed(self._fhs):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()
        self._fhs.clear()


def acquire(store: ResultStore, task: ArrayTask | None) -> RunLock | ArrayLock:
    """The lock a run takes: the whole directory, or an array task's part of it."""
    return store.lock().acquire() if task is None else ArrayLock(store, task).acquire()
