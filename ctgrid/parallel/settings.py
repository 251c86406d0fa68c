"""What a grid run passes between its parts, torch-free: the run's settings, a rank's role
in a job and a job's outcome. ``ctgrid run --dry-run`` (and ``ctgrid slurm submit``, which
makes one) plan a grid with these alone, without importing torch."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..training.loop import SearchWrapper


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RunSettings:
    """What every rank needs to run jobs (the same on all ranks: it comes from the command line)."""

    results: Path
    data_dir: str | None = None
    threads: int = 1
    shard_size: int = 1
    pack_size: int = 16    # ctgrid.grid.packs.DEFAULT_PACK_SIZE (1 with shard_size > 1)


@dataclass
class JobOutcome:
    """What a worker reports back about one job."""

    job_id: str
    status: str                  # done | failed | interrupted | io_error (not recorded: re-run)
    seconds: float = 0.0
    error_type: str | None = None
    message: str | None = None
    rank: int = 0
    epochs_done: int = 0
    warning: str | None = None   # a finished job that looks wrong (diverged training)
    hint: str | None = None      # a finished job whose test-time searches all stopped short of tau
    fatal: bool = False          # io_error: nothing more can be written (disk full): stop the run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Role:
    """How this rank takes part in a job (one per job; the default: a rank running it alone).

    A sharded group's leader and members all train the job (``stop`` is then a
    collective over the group and ``wrap_search`` splits the CE search over it); only
    the ``leader`` writes into the results, a member trains from ``checkpoint``, its
    private copy of the leader's.
    """

    rank: int = 0
    leader: bool = True
    checkpoint: Path | None = None
    stop: Callable[[], bool] = _never               # between epochs
    local_stop: Callable[[], bool] | None = None    # before the evaluation (default: stop)
    wrap_search: SearchWrapper | None = None


def max_threads() -> int:
    """The most torch threads a process may ask for: this machine's cores (at least 256, for
    a login node that plans a job for bigger compute nodes)."""
    return max(256, os.cpu_count() or 1)
