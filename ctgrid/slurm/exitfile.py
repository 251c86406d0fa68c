"""The run's exit code handed to the batch script through a file (``$CTGRID_EXIT_FILE``).

Under ``srun --kill-on-bad-exit=1`` any task that exits non-zero ends the whole step,
and srun then reports the highest code of all tasks, a killed one's as 128 + signal.
Rank 0 exiting 3 (interrupted) or 1 (a job failed) would therefore race the other
ranks' own clean exits, and the batch script could read 137 where the run meant 3 (and
not requeue). So when the batch script sets ``CTGRID_EXIT_FILE``, rank 0 writes the
run's code (0-4) there and every rank that ended normally exits 0; ``--kill-on-bad-exit``
then fires only for a rank that died (an uncaught error, an OOM kill), as documented.
Without the variable nothing changes: ``ctgrid run`` exits with its code.
"""
from __future__ import annotations

import os
from typing import Mapping

from .. import _atomic

VARIABLE = "CTGRID_EXIT_FILE"
#: the run's outcomes (0 ok, 1 failed jobs, 2 bad input, 3 interrupted, 4 I/O); other
#: codes (130: a second Ctrl-C) are passed through
HANDED_OVER = frozenset(range(5))
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def is_rank_zero(env: Mapping[str, str]) -> bool:
    """Whether this process is rank 0 (or not under a launcher at all)."""
    for var in _RANK_VARIABLES:
        if var in env:
            return env[var].strip() == "0"
    return True


def hand_over(code: int, env: Mapping[str, str] = os.environ) -> int:
    """The process's exit status for the run's ``code``: ``code`` itself without
    ``$CTGRID_EXIT_FILE``; else 0 for a run outcome (rank 0 first writes it to the file)."""
    path = env.get(VARIABLE)
    if not path or code not in HANDED_OVER:
        return code
    if is_rank_zero(env):
        try:
            _atomic.write_text(path, f"{code}\n")
        except OSError:
            return code   # the script falls back to the launcher's status
    return 0
