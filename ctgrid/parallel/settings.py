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
    """What every rank needs to run jobs (the same on all ranks: it comes from the command line).

    None of it is part of a job's identity: the same job id gives the same results whatever
    the threads, the packing or (on the CPU) the ranks. ``device`` is the ``--device`` value
    (:mod:`ctgrid.device`); each rank resolves it to its own device
    (:func:`ctgrid.parallel.gpus.rank_device`). ``pack_size`` ``None`` is the default of the
    device kind the packs train on (:func:`ctgrid.grid.packs.default_pack_size`: 16 on a CPU).
    """

    results: Path
    data_dir: str | None = None
    threads: int = 1
    shard_size: int = 1
    pack_size: int | None = None   # None: the device kind's default (1 with shard_size > 1)
    device: str = "cpu"

    def pack_cap(self, kind: str) -> int:
        """The cap on members per pack for packs trained on device kind ``kind``."""
        if self.shard_size > 1:
            return 1
        from ..grid.packs import default_pack_size
        return self.pack_size if self.pack_size is not None else default_pack_size(kind)


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
    private copy of the leader's. ``device`` is where this rank computes (rank 0 of an MPI
    run never holds a GPU: it only schedules).
    """

    rank: int = 0
    leader: bool = True
    checkpoint: Path | None = None
    stop: Callable[[], bool] = _never               # between epochs
    local_stop: Callable[[], bool] | None = None    # before the evaluation (default: stop)
    wrap_search: SearchWrapper | None = None
    device: str = "cpu"   # this rank's device, resolved ("cpu", "cuda:I"): gpus.rank_device


def max_threads() -> int:
    """The most torch threads a process may ask for: this machine's cores (at least 256, for
    a login node that plans a job for bigger compute nodes)."""
    return max(256, os.cpu_count() or 1)
