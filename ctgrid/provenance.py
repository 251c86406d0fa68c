"""Where a result came from: code version (git commit, dirty flag), library versions, the
command line, the host. Recorded in every job's ``done.json`` (``provenance``) and as
key-value metadata of its Parquet files (``ctgrid.provenance``), so a table can always
be traced to the exact code and environment that produced it.

Collected once per process (the git query runs once); never imports a library only to
ask its version (mpi4py and MPI are reported when the run already uses them).
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__

#: Parquet key-value metadata keys
META_JOB_ID = b"ctgrid.job_id"
META_PROVENANCE = b"ctgrid.provenance"


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"ctgrid", "git_commit", "git_dirty"}``: the commit of the ctgrid source tree when it
    is a git checkout (an editable install), else ``None`` (an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    commit = _git(root, "rev-parse", "HEAD") if (root / ".git").exists() else None
    dirty = None
    if commit is not None:
        status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "ctgrid")
        dirty = bool(status) if status is not None else None
    return {"ctgrid": __version__, "git_commit": commit, "git_dirty": dirty}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape results (those installed)."""
    out = {"ctgrid": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "pandas", "pyarrow", "mpi4py"):
        v = _version(dist)
        if v:
            out[dist] = v
    if "mpi4py.MPI" in sys.modules:   # the run uses MPI: which library
        try:
            out["mpi_library"] = sys.modules["mpi4py.MPI"].Get_library_version().strip().splitlines()[0]
        except Exception:  # noqa: BLE001 (a version query must never fail a run)
            pass
    return out


_COMMAND: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """The command line to record (``ctgrid.cli.main`` sets it: ``["ctgrid", *argv]``)."""
    global _COMMAND
    _COMMAND = list(argv)


@lru_cache(maxsize=1)
def _process() -> dict[str, Any]:
    return {**code_version(), "versions": versions(), "host": socket.gethostname(),
            "platform": platform.platform()}


def provenance(**extra: Any) -> dict[str, Any]:
    """This process's provenance record plus ``extra`` (e.g. the job's derived ``seed``)."""
    command = _COMMAND if _COMMAND is not None else [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    return {**_process(), "command": command, **extra}


def parquet_metadata(job_id: str, record: dict[str, Any]) -> dict[bytes, bytes]:
    """Key-value metadata for a job's Parquet file."""
    return {META_JOB_ID: job_id.encode(), META_PROVENANCE: json.dumps(record, sort_keys=True).encode()}
