"""Atomic file writes: write a temporary file beside the target, then ``os.replace``.

A reader (aggregation, a resumed run, ``ctgrid status``) therefore never sees a
half-written file, and a killed process leaves at most a stray ``.tmp`` file.

Every write returns a :class:`Written`: the file's size and SHA-256, computed from the
bytes as they go to the temporary file (the writer — ``torch.save``, pyarrow, matplotlib —
is handed a :class:`HashingWriter`, never a path), so recording what a job wrote
(``done.json``'s ``files``) costs no second read of large files.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, cast

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


#: the content hash of result files (``done.json``'s ``files``; ``sha256sum`` checks it too)
HASH = "sha256"


@dataclass(frozen=True)
class Written:
    """A file an atomic write produced: its final ``path``, ``size`` in bytes and the SHA-256
    hex digest of its content."""

    path: Path
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path, data: bytes) -> "Written":
        """The record of ``path`` holding exactly ``data`` (already there: nothing written)."""
        return cls(path, len(data), hashlib.sha256(data).hexdigest())

    def record(self) -> dict[str, Any]:
        """``{"bytes": size, "sha256": digest}``: the entry ``done.json`` keeps per file."""
        return {"bytes": self.size, HASH: self.sha256}


class HashingWriter:
    """A binary file open for writing that counts and hashes (SHA-256) every byte written
    through it, in order. ``tell`` is the number of bytes so far; ``seek`` only to that
    position (what matplotlib asks of a file): a writer that goes back to overwrite fails
    loudly (``io.UnsupportedOperation``) instead of making the digest disagree with the file."""

    def __init__(self, fh: Any):
        self._fh = fh
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._fh.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = {os.SEEK_SET: offset, os.SEEK_CUR: self.size + offset, os.SEEK_END: self.size + offset}[whence]
        if target != self.size:
            raise io.UnsupportedOperation(f"a hashed result file is written in order: seek to {target} "
                                          f"at {self.size}")
        return self.size

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:   # the underlying file is closed by atomic_write, after the rename's checks
        self.closed = True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:   # not in the sense io means: only to where it is
        return False

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Written:
    """Call ``write(file)`` with a :class:`HashingWriter` on a temporary file beside ``path``,
    then rename it onto ``path``; return its :class:`Written` record. An I/O failure raises
    :class:`WriteError` naming ``path`` and leaves no temporary file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are shared on clusters
        with open(fd, "wb") as raw:
            out = HashingWriter(raw)
            write(cast(BinaryIO, out))   # the part of a binary file's interface writers use
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
    return Written(path, out.size, out.hexdigest())


def write_text(path: str | os.PathLike, text: str) -> Written:
    """``text`` as UTF-8, atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def save_torch(path: str | os.PathLike, obj: Any) -> Written:
    """``torch.save(obj)``, atomically (written to a stream: the archive's inner folder is
    torch's fixed ``archive/``, not the temporary file's random name)."""
    import torch
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def write_parquet(path: str | os.PathLike, frame: Any) -> Written:
    """Write a pandas DataFrame (or pyarrow Table) as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    return atomic_write(path, lambda fh: pq.write_table(table, fh))


def open_lock_file(path: str | os.PathLike) -> Any:
    """Open (creating) a lock file read/write without following a symbolic link: ctgrid makes
    none, so a link planted in its place is removed, never written through (truncating its
    target). Returns a text file object positioned at the start."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666 & ~_UMASK | 0o600)
    return open(fd, "r+", encoding="utf-8")
