"""Which GPU an MPI rank computes on: pure functions of the environment, the rank and the
number of devices the process sees (unit-tested on each launcher's environment, no GPU needed).

Rank 0 of a multi-rank run schedules and never takes a GPU. Every other rank (a worker) takes
the GPU of its *node-local* rank modulo the devices it sees, the local rank read from the
variable of the launcher that started it — the most specific one first, since an outer
launcher's variables are inherited by the processes a nested one starts (Hydra's or Open MPI's
daemons are themselves started by ``srun`` and see ``SLURM_LOCALID=0``):

1. ``OMPI_COMM_WORLD_LOCAL_RANK`` (Open MPI's ``mpirun``),
2. ``MPI_LOCALRANKID`` (MPICH's Hydra ``mpiexec``), then ``PMI_LOCAL_RANK`` (Intel MPI, other PMI launchers),
3. ``SLURM_LOCALID`` (``srun``).

Without any of them the launcher's ``CUDA_VISIBLE_DEVICES`` decides: set, it gave this process
its devices and the rank takes the first it sees; unset, the global rank modulo the device count
(one node). With ``srun --gpus-per-task=1`` every task sees exactly its own GPU, so any rule
lands on it (``cuda:0`` of one). An explicit ``cuda:N`` pins every worker to device N.
"""
from __future__ import annotations

import os
from typing import Mapping

from ..device import device_kind, parse_device

#: node-local rank variables, most specific launcher first (module docstring)
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID")


def local_rank(env: Mapping[str, str] = os.environ) -> int | None:
    """This process's rank on its node as its launcher numbered it, or ``None`` when no
    launcher said."""
    for var in LOCAL_RANK_VARS:
        value = env.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None


def gpu_index(env: Mapping[str, str], rank: int, count: int) -> int:
    """The device index (``0..count-1``) a worker of global rank ``rank`` takes (module docstring)."""
    if count < 1:
        raise ValueError(f"gpu_index: no CUDA device to choose from (count {count})")
    local = local_rank(env)
    if local is not None:
        return local % count
    if env.get("CUDA_VISIBLE_DEVICES", "").strip():
        return 0
    return rank % count


def rank_device(spec: str, *, rank: int, size: int, count: int,
                env: Mapping[str, str] = os.environ) -> str:
    """The device (``"cpu"`` or ``"cuda:I"``) that rank ``rank`` of ``size`` computes on for the
    ``--device`` value ``spec`` when it sees ``count`` CUDA devices.

    Rank 0 of a run with several ranks (the scheduler) is always ``"cpu"``; a single process
    (``size`` 1, also an array task) is rank 0 and a worker at once, and takes ``cuda:0`` (or
    ``cuda:N``) like a process of its own.
    """
    spec = parse_device(spec)
    if (size > 1 and rank == 0) or device_kind(spec, count) == "cpu":
        return "cpu"
    if spec.startswith("cuda:"):
        return spec
    if size == 1:
        return "cuda:0"
    return f"cuda:{gpu_index(env, rank, count)}"


def process_device(spec: str, *, rank: int = 0, size: int = 1,
                   env: Mapping[str, str] = os.environ) -> str:
    """:func:`rank_device` for this process, counting its CUDA devices (torch is imported only
    for a CUDA request); a CUDA request this process cannot serve is a one-line
    :class:`~ctgrid.errors.ConfigError` (:func:`ctgrid.device.check_device`)."""
    spec = parse_device(spec)
    if spec == "cpu" or (size > 1 and rank == 0):
        return "cpu"
    from ..device import check_device, cuda_count
    count = cuda_count()
    check_device(spec, count=count, env={})
    return rank_device(spec, rank=rank, size=size, count=count, env=env)
