"""Is a done job still done? Its files checked against what its ``done.json`` recorded.

``done.json`` (:func:`ctgrid.store.mark_done`) lists under ``files`` every result file the
job wrote — ``config.yaml``, ``model.pt``, ``history``/``evaluation``/``performance``/
``counterfactuals.parquet`` — with its size in bytes and SHA-256, taken from the bytes as
they were written (:class:`ctgrid._atomic.Written`). ``log.txt`` is appended to, so it is
not recorded. A quota hit, a half-synced copy or a clean-up script can damage a file
*after* the job finished; this module finds it:

- the size check (one ``stat`` per file) is what ``ctgrid run`` does for every done job
  before planning (a damaged job is re-run), ``ctgrid aggregate`` before reading (a damaged
  job is refused, or skipped with ``--skip-damaged``) and ``ctgrid verify`` by default;
- the full check (``ctgrid verify --full``) also hashes every file: a same-size corruption.

A ``done.json`` without ``files`` (written by an earlier ctgrid, up to 0.2.0) is
*unrecorded*: the job stays done and is never re-run by itself. ``verify`` and ``aggregate``
(``legacy=True``) still check its Parquet files' end markers (``PAR1`` at the start and end
of a Parquet file: a truncated file has lost its footer); ``ctgrid run`` checks nothing more.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Iterable

from .store import JobPaths, ResultStore

#: a name ``done.json`` may list (one file inside the job directory, never a path out of it)
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class Problem:
    """One file of a done job that is not what ``done.json`` recorded."""

    file: str   # its name in the job directory
    text: str   # "is 100 bytes, done.json recorded 88309", "is missing", ...

    def __str__(self) -> str:
        return f"{self.file} {self.text}"


@dataclass(frozen=True)
class JobCheck:
    """The outcome for one done job: its problems (none: intact) and whether its
    ``done.json`` records its files at all (``recorded``; False: written by an earlier ctgrid)."""

    job_id: str
    problems: tuple[Problem, ...] = ()
    recorded: bool = True

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    def describe(self) -> str:
        """``evaluation.parquet is 100 bytes, done.json recorded 88309, model.pt is missing``."""
        return ", ".join(str(p) for p in self.problems)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's content (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(directory: str, name: Any, entry: Any, full: bool) -> Problem | None:
    """One recorded file (``directory``: the job's, as text: pathlib would cost more than the stat)."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        return Problem(str(name)[:80], "is not a file name of a job directory (done.json lists it)")
    size = entry.get("bytes") if isinstance(entry, dict) else None
    if not isinstance(size, int) or isinstance(size, bool):
        return Problem(name, "has no valid size in done.json")
    path = os.path.join(directory, name)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Problem(name, f"is missing, done.json recorded {size} bytes")
    except OSError as exc:
        return Problem(name, f"cannot be read ({exc.strerror or exc})")
    if not stat.S_ISREG(st.st_mode):
        return Problem(name, "is not a regular file")
    if st.st_size != size:
        return Problem(name, f"is {st.st_size} bytes, done.json recorded {size}")
    if full:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            return Problem(name, f"cannot be read ({exc.strerror or exc})")
        if digest != entry.get("sha256"):
            return Problem(name, "has the recorded size but other content (its SHA-256 differs from done.json's)")
    return None


def _parquet_ends(paths: JobPaths) -> list[Problem]:
    """The Parquet files of an unrecorded job whose first or last four bytes are not ``PAR1``."""
    problems = []
    for path in (paths.history, paths.evaluation, paths.performance, paths.counterfactuals):
        try:
            with open(path, "rb") as fh:
                head = fh.read(4)
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(size - 4, 0))
                tail = fh.read(4)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(Problem(path.name, f"cannot be read ({exc.strerror or exc})"))
            continue
        if size < 12 or head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
            problems.append(Problem(path.name, f"is not a whole Parquet file ({size} bytes, no footer)"))
    return problems


def check_job(paths: JobPaths, *, full: bool = False, legacy: bool = True) -> JobCheck | None:
    """Check one job's files against its ``done.json``; None when the job is not done.

    Sizes only unless ``full`` (then also SHA-256). ``legacy``: for a ``done.json`` without
    ``files``, check its Parquet files' end markers (``verify``, ``aggregate``; the run does not).
    An unreadable ``done.json`` is itself the problem."""
    try:
        record = json.loads(paths.done.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:120]
        return JobCheck(paths.job_id, (Problem("done.json", f"is unreadable ({text})"),))
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(record, dict) or (files is not None and not isinstance(files, dict)):
        return JobCheck(paths.job_id, (Problem("done.json", "is not a completion record"),))
    if files is None:
        return JobCheck(paths.job_id, tuple(_parquet_ends(paths)) if legacy else (), recorded=False)
    directory = os.fspath(paths.dir)
    found = (_check_file(directory, name, entry, full) for name, entry in files.items())
    return JobCheck(paths.job_id, tuple(p for p in found if p is not None))


def check_store(store: ResultStore, job_ids: Iterable[str] | None = None, *, full: bool = False,
                legacy: bool = True) -> list[JobCheck]:
    """:func:`check_job` for every done job among ``job_ids`` (default: the grid's), in order."""
    out = []
    for job_id in store.job_ids() if job_ids is None else job_ids:
        check = check_job(store.job(job_id), full=full, legacy=legacy)
        if check is not None:
            out.append(check)
    return out


def verify_command(root: str | os.PathLike) -> str:
    """The command that lists a results directory's damaged files (named in error messages)."""
    return f"ctgrid verify {root}"
