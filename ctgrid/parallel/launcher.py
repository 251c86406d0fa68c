"""What the environment says about the MPI launcher that started this process, standard
library only: whether one did (``ctgrid run`` picks the serial or the MPI mode without
importing torch or mpi4py), how many processes it started, this process's rank as it
numbered them, and whether the MPI library mpi4py loads can work under it."""
from __future__ import annotations

import os
from typing import Mapping

from ..errors import ConfigError

_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "PMI_FD")
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS",
              "SLURM_NTASKS")


def under_mpi_launcher(env: Mapping[str, str] = os.environ) -> bool:
    """Whether an MPI launcher (mpiexec/mpirun/srun) started this process.

    Only then is ``mpi4py`` imported: a plain ``ctgrid run`` never initialises MPI.
    """
    if any(v in env for v in _RANK_VARS):
        return True
    for var in _SIZE_VARS:
        try:
            if int(env.get(var, "0")) > 1:
                return True
        except ValueError:
            continue
    return False


#: variables holding the number of processes a launcher started, and who sets them (first wins)
_LAUNCHED = (("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"), ("SLURM_STEP_NUM_TASKS", "srun"),
             ("PMI_SIZE", "mpiexec"))
_LAUNCHER_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMI_RANK")
_MATCHING = ("the launcher must belong to the MPI library mpi4py loads: MPICH's mpiexec or "
             "'srun --mpi=pmi2' for MPICH, Open MPI's mpirun or 'srun --mpi=pmix' for Open MPI "
             "(slurm/run_grid.sbatch: CTGRID_SRUN_MPI)")


def launched(env: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
    """``(launcher, processes)`` when the environment says a launcher started more than one
    process (the number MPI must see), else ``None``."""
    for var, launcher in _LAUNCHED:
        value = env.get(var, "")
        if value.isdigit() and int(value) > 1:
            return f"{launcher} ({var}={value})", int(value)
    return None


def launcher_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's rank as the launcher numbered it (0 when unknown): the one process
    that reports an error when MPI itself cannot tell the processes apart."""
    for var in _LAUNCHER_RANK_VARS:
        value = env.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def check_library(library: str, env: Mapping[str, str] = os.environ) -> None:
    """Before ``MPI_Init``: refuse an MPI library that cannot start under this launcher.

    ``library`` is ``MPI.Get_library_version()`` (callable before ``MPI_Init``). Open MPI's
    ``mpirun`` (it sets ``OMPI_COMM_WORLD_SIZE``) serves its processes over PMIx, which
    only Open MPI's own library is sure to speak: MPICH aborts inside ``MPI_Init`` with a
    stack of "unsupported PMI version" lines on every rank. The other way round, Open MPI 5
    speaks PMIx only, so under a PMI-1/2 launcher (MPICH's ``mpiexec``, ``srun
    --mpi=pmi2``: ``PMI_RANK``/``PMI_SIZE``/``PMI_FD``) every process would start alone.
    """
    name = _first_line(library)
    if "OMPI_COMM_WORLD_SIZE" in env:
        if not name.startswith("Open MPI"):
            raise ConfigError(f"started by Open MPI's mpirun but mpi4py loaded {name}: {_MATCHING}")
    elif any(v in env for v in ("PMI_RANK", "PMI_SIZE", "PMI_FD")) and _open_mpi_major(name) >= 5:
        raise ConfigError(f"started by a PMI-1/2 launcher (MPICH's mpiexec or srun --mpi=pmi2) but mpi4py "
                          f"loaded {name}, which speaks PMIx only: {_MATCHING}")


def _open_mpi_major(name: str) -> int:
    """The major version of an Open MPI library name ("Open MPI v5.0.11" -> 5); 0 for others."""
    if not name.startswith("Open MPI v"):
        return 0
    major = name[len("Open MPI v"):].split(".")[0]
    return int(major) if major.isdigit() else 0


def check_world(size: int, library: str, env: Mapping[str, str] = os.environ) -> None:
    """After ``MPI_Init``: a launcher started several processes but MPI sees one (a launcher
    of another MPI, or ``srun`` without a PMI the library speaks)."""
    started = launched(env)
    if size == 1 and started is not None:
        raise ConfigError(f"{started[0]} started {started[1]} processes but MPI sees 1 (mpi4py loaded "
                          f"{_first_line(library)}): {_MATCHING}")


def _first_line(library: str) -> str:
    """The name and version of an MPI library from its ``Get_library_version`` text."""
    line = library.strip().splitlines()[0] if library.strip() else "an unknown MPI library"
    return " ".join(line.split(",")[0].split())   # "MPICH Version: 5.0.2", "Open MPI v5.0.11"
