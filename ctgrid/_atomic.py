"""Atomic file writes: write a temporary file beside the target, then ``os.replace``.

A reader (aggregation, a resumed run, ``ctgrid status``) therefore never sees a
half-written file, and a killed process leaves at most a stray ``.tmp`` file.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

_UMASK = os.umask(0)
os.umask(_UMASK)


#: errors after which no further result can be written on this file system (a run stops
#: at once, exit 4, and leaves the job to be resumed); others concern one file or directory
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class WriteError(OSError):
    """A result file could not be written: ``errno``, ``strerror`` and the target ``filename``
    (whatever library raised it: ``torch.save`` reports a full disk as a RuntimeError)."""

    @property
    def fatal(self) -> bool:
        """Nothing more can be written here (disk full, quota, read-only file system)."""
        return self.errno in FATAL_ERRNOS


def io_message(exc: OSError) -> str:
    """``no space left on device writing PATH``: the one line a run or command ends with (exit 4)."""
    text = exc.strerror or str(exc)
    text = text[:1].lower() + text[1:]
    return f"{text} writing {exc.filename}" if exc.filename else text


def _write_error(exc: BaseException, path: Path) -> WriteError | None:
    """``exc`` (raised while writing ``path``) as a :class:`WriteError`, or None when it is not
    an I/O failure (a bug or a bad value: re-raised as is)."""
    if isinstance(exc, WriteError):
        return exc
    if isinstance(exc, OSError) and exc.errno:   # the system's words (pyarrow's strerror is a paragraph)
        return WriteError(exc.errno, os.strerror(exc.errno), str(path))
    text = " ".join(str(e) for e in (exc, exc.__context__, exc.__cause__) if e is not None).lower()
    if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and any(
            w in text for w in ("iostream", "write", "file", "inline_container"))):
        # torch's stream errors and pyarrow's carry no errno: say "disk full" when it is
        code = errno.ENOSPC if "no space" in text or _free_bytes(path.parent) < 1 << 20 else errno.EIO
        return WriteError(code, os.strerror(code), str(path))
    return None


def _free_bytes(directory: Path) -> int:
    try:
        st = os.statvfs(directory)
        return st.f_bavail * st.f_frsize
    except OSError:
        return 1 << 62


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the result onto ``path``; an I/O failure raises
    :class:`WriteError` naming ``path`` and leaves no temporary file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are shared on clusters
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        failure = _write_error(exc, path)
        if failure is None or failure is exc:
            raise
        raise failure from exc
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return atomic_write(path, w)


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    import torch
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_parquet(path: str | os.PathLike, frame: Any) -> Path:
    """Write a pandas DataFrame (or pyarrow Table) as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def open_lock_file(path: str | os.PathLike) -> Any:
    """Open (creating) a lock file read/write without following a symbolic link: ctgrid makes
    none, so a link planted in its place is removed, never written through (truncating its
    target). Returns a text file object positioned at the start."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666 & ~_UMASK | 0o600)
    return open(fd, "r+", encoding="utf-8")
