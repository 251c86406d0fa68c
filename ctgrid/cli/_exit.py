"""How the ``ctgrid`` program ends: the interpreter's own teardown is skipped once torch is
loaded.

Python's finalisation with torch imported takes 0.5-1 s on this project's 2-core machine
(measured: a one-epoch ``ctgrid train`` took 4.2 s ending the ordinary way, 3.2 s this way),
after every ``ctgrid`` command that trains or evaluates, and after each MPI rank's last job,
when every rank of a grid waits for the slowest to leave. :func:`exit_now` does what that
teardown does that anyone can observe — wait for non-daemon threads (else it takes the
ordinary way out), run the :mod:`atexit` handlers, finalise MPI (mpi4py does it at C level
otherwise, after the atexit handlers; the launcher must see every rank finalise), flush
stdout and stderr — and then calls the C library's ``exit``: C-level exit handlers and
static destructors run (MPICH's are needed: a rank leaving by ``os._exit`` after
``MPI_Finalize`` made Hydra's ``mpiexec`` report 0 for a run whose rank 0 exited 1, in 7 of
10 tries), Python's module teardown does not. Files ctgrid writes are complete before this
(written whole and renamed; :mod:`ctgrid._atomic`). In-process callers (tests, notebooks)
call :func:`ctgrid.cli.main`, which returns normally.
"""
from __future__ import annotations

import atexit
import ctypes
import sys
import threading
from typing import NoReturn

__all__ = ["exit_code", "exit_now"]


def exit_code(code: object) -> int:
    """The process exit status of ``sys.exit(code)`` (None 0, an int itself, a message 1
    after printing it to stderr, as the interpreter does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code % 256                # as the operating system keeps it
    print(code, file=sys.stderr)
    return 1


def exit_now(code: int) -> NoReturn:
    """End the process with ``code``: quickly when torch is loaded and only daemon threads
    remain, else by ``sys.exit`` (nothing to save: without torch the teardown is fast)."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if "torch" not in sys.modules or others:
        sys.exit(code)
    try:
        libc_exit = ctypes.PyDLL(None).exit   # PyDLL: the call keeps the GIL, daemon threads stay put
    except (OSError, AttributeError):          # no C library to reach this way: the ordinary exit
        sys.exit(code)
    libc_exit.argtypes = [ctypes.c_int]
    atexit._run_exitfuncs()          # what Py_Finalize runs first (logging, tempfile, ...)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):   # a closed pipe or stream: what was lost is lost anyway
            pass
    libc_exit(code)
    sys.exit(code)   # pragma: no cover (exit does not return)
