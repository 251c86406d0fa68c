"""The run's lock on a results directory (``<grid dir>/.lock``) and the one message for a
results directory that cannot be written. :mod:`ctgrid.store` re-exports both; an array
task's lock (:mod:`ctgrid.parallel.array`) builds on them."""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from . import _atomic
from .errors import StoreError


def now() -> str:
    """The current UTC time in ISO 8601 (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def unwritable(directory: Path, exc: OSError) -> StoreError:
    """The bad-input error (exit 2) for a results directory that cannot be written, raised
    before any work by the run's lock, an array task's lock and the dry run's probe alike."""
    return StoreError(f"--results: cannot write the results directory {directory}: {exc.strerror or exc}")


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<grid dir>/.lock``.

    The kernel releases it when the holder dies, so a killed run never blocks the
    next one. (flock is node-local on some network file systems: run one scheduler.)
    """

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = _atomic.open_lock_file(self.path)
        except OSError as exc:
            raise unwritable(self.path.parent, exc) from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(f"results directory {self.path.parent} is in use by another run "
                                 f"({holder}); wait for it or use --results elsewhere") from None
            raise StoreError(f"cannot lock {self.path}: {exc}") from exc
        # informational only (the lock is the flock, not the content)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
