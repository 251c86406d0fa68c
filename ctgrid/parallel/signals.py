"""Graceful interruption: SIGTERM / SIGUSR1 set a flag that the run checks between epochs.

SLURM sends SIGTERM at the time limit (``KillWait`` seconds before SIGKILL) and,
with ``--signal=USR1@120``, SIGUSR1 two minutes earlier. A process that gets one
finishes the epoch it is in (its checkpoint is written), takes no new job and
exits with :data:`EXIT_INTERRUPTED`; a re-run resumes from the checkpoints.
A second SIGTERM / SIGUSR1 only repeats the request. SIGINT (Ctrl-C; ``mpiexec``
forwards it to every rank) is graceful the first time and raises
``KeyboardInterrupt`` the second time.
"""
from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Callable

#: every job of the grid is done
EXIT_OK = 0
#: the run ended but some job failed (``error.json``)
EXIT_FAILED = 1
#: bad input: grid/config error, missing data, results directory locked or foreign
EXIT_USAGE = 2
#: interrupted by SIGTERM/SIGUSR1: run the same command again to continue
EXIT_INTERRUPTED = 3
#: results could not be written (disk full, read-only or unwritable directory); one line
#: names the path; finished results stay valid and a re-run continues
EXIT_IO = 4

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopFlag:
    """A flag set by the interruption signals; call it to ask "should I stop?"."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def set(self, signum: int = signal.SIGTERM) -> None:
        if self.signum is None:
            self.signum = signum

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if not first and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set(signum)
        if first:
            name = signal.Signals(signum).name
            # os.write, not print: a handler that prints while the main thread is writing
            # to stderr raises "reentrant call" into whatever code is running
            os.write(2, f"ctgrid: {name} received: finishing the current epoch, then stopping\n".encode())

    def install(self) -> "StopFlag":
        """Install the handlers (in the main thread; elsewhere signals cannot be caught and the
        flag is only set by :meth:`set`); :meth:`restore` puts the old ones back."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        """Put the old handlers back where ours is still installed (a finished MPI rank
        ignores the signals from then on: :func:`ctgrid.parallel.mpi.run_mpi`)."""
        for sig, old in self._previous.items():
            if signal.getsignal(sig) == self._handler:
                signal.signal(sig, old)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> "StopFlag":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()


def either(*checks: Callable[[], bool]) -> Callable[[], bool]:
    """A stop check that is true as soon as one of ``checks`` is."""
    return lambda: any(c() for c in checks)
