"""Whether an MPI launcher started this process (standard library only: ``ctgrid run`` decides
between the serial and the MPI mode without importing torch or mpi4py)."""
from __future__ import annotations

import os
from typing import Mapping

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
