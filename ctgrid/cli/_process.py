"""Process handling shared by the commands that train or evaluate (``run``, ``train``,
``evaluate``): one ``--threads`` flag and check, one stop flag (SIGTERM / SIGUSR1 / SIGINT,
:class:`~ctgrid.parallel.signals.StopFlag`) and one set of exit codes (0 done, 1 failed,
2 bad input, 3 interrupted: run the same command again to continue)."""
from __future__ import annotations

import argparse
import os

from ..errors import ConfigError
from ..parallel.settings import max_threads
from ..parallel.signals import EXIT_INTERRUPTED, StopFlag

__all__ = ["EXIT_INTERRUPTED", "StopFlag", "add_device", "add_threads", "check_threads", "default_threads"]


def default_threads() -> int:
    """``$SLURM_CPUS_PER_TASK`` when set, else 1 (one process per core is the grid's unit)."""
    try:
        return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
    except ValueError:
        return 1


def add_threads(p: argparse.ArgumentParser, default: int | None, what: str) -> None:
    """The ``--threads N`` flag (validated by :func:`check_threads` when the command runs)."""
    p.add_argument("--threads", type=int, default=default, metavar="N",
                   help=f"torch intra-op threads per process (default: {what})")


def check_threads(value: int | None) -> int | None:
    """``value`` if it is a usable thread count (or None: torch's choice); one-line error else.
    (Tens of thousands of threads crash torch or the process instead of running.)"""
    limit = max_threads()
    if value is not None and not 1 <= value <= limit:
        source = "--threads" if os.environ.get("SLURM_CPUS_PER_TASK", "") != str(value) else \
            "--threads (default: $SLURM_CPUS_PER_TASK)"
        raise ConfigError(f"{source}: got {value}; allowed: an integer in 1..{limit}")
    return value


def add_device(p: argparse.ArgumentParser, what: str) -> None:
    """The ``--device`` flag (checked by :func:`ctgrid.device.parse_device` when the command runs,
    so a typo is the usual one-line error; docs/gpu.md)."""
    from ..device import DEVICE_HELP
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help=f"where {what} computes: {DEVICE_HELP} (auto: CUDA if this machine has it, "
                        f"else the CPU; default cpu). Not part of any job's identity; docs/gpu.md")
