"""Running a grid: in this process, or under mpiexec/srun with rank 0 as the scheduler.

``run_grid`` picks the mode: without an MPI launcher (no ``PMI_*``/``OMPI_*``/
``PMIX_*``/multi-task ``SLURM_*`` variables) the jobs run here, one after another,
and ``mpi4py`` is never imported; under a launcher rank 0 hands jobs to the other
ranks (:mod:`ctgrid.parallel.mpi`).
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from .._lazy import lazy_exports
from .signals import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, StopFlag

if TYPE_CHECKING:
    from .launcher import under_mpi_launcher
    from .settings import RunSettings
    from .scheduler import GridRun

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "GridRun", "RunSettings",
           "run_grid", "under_mpi_launcher"]
__getattr__, __dir__ = lazy_exports(__name__, {"under_mpi_launcher": ".launcher", "RunSettings": ".settings",
                                                "GridRun": ".scheduler"})


def run_grid(run: GridRun, out: TextIO | None = None) -> int:
    """Run (or with ``dry_run`` only plan) the grid; return the exit code (0, 1, 3; 2 raises).

    Progress goes to ``out`` (default: ``sys.stdout`` at call time), on rank 0 only.
    """
    from .launcher import under_mpi_launcher
    from .scheduler import run_serial
    out = sys.stdout if out is None else out
    with StopFlag() as stop:
        if under_mpi_launcher():
            from .mpi import run_mpi
            return run_mpi(run, stop, out)
        if not run.dry_run:   # a dry run plans without torch
            from .runner import torch_threads
            torch_threads(run.settings.threads)
        return run_serial(run, stop, out)
