"""The results directory of a grid run: the one module that owns result paths.

Layout (``<results>`` defaults to ``./results``)::

    <results>/<grid name>/
        grid.yaml            copy of the grid file this directory was written from
        jobs.parquet         point table: every grid point -> its job id (+ parameters)
        .lock                fcntl lock held by the scheduler (rank 0) for the whole run
                             (shared by array tasks, each also holding .lock.array-I:
                             ctgrid.parallel.array)
        run.json             the live run's state (array tasks: run.array-I.json)
        slurm/               batch scripts, logs and exit-code files of ``ctgrid slurm submit``
        cache/               shared caches (REVISE VAEs, keyed by content)
        jobs/<job_id>/
            config.yaml      the resolved canonical job (``JobConfig.from_dict`` reads it back)
            checkpoint.pt    training state after the last finished epoch (removed when done)
            model.pt         ``{"state_dict", "job_id", "config"}`` of the trained model
            history.parquet  one row per epoch
            evaluation.parquet, performance.parquet
            counterfactuals.parquet  the test-time points (evaluation.save_counterfactuals)
            log.txt          job log (appended: the only file not replaced atomically)
            error.json       failure record: status, error type, message, traceback, log path
            done.json        completion marker with timings and ``files`` (each result file
                             above: its size and SHA-256, recorded as it was written), last
            done.damaged.<time>.json  a marker set aside because its files no longer matched
                             (``ctgrid verify --repair``, or ``ctgrid run``: ctgrid.integrity)

A job is *done* iff ``done.json`` exists (and, where it lists its files, they still have
the recorded sizes: otherwise the next run re-runs it, :mod:`ctgrid.integrity`); *failed*
iff it has ``error.json`` and no marker; *running* iff it has a checkpoint and neither
(in progress, or interrupted: the next run resumes it); otherwise *pending*. Jobs are
content-addressed (the job id hashes the canonical configuration), so grids that share
a job share its results.

A results directory whose ``grid.yaml`` differs from the grid being run is refused
(:class:`StoreError`) unless both expand to the same point table (a cosmetic edit:
``grid.yaml`` is updated) or ``force=True``: then the old ``grid.yaml`` and
``jobs.parquet`` are kept as ``grid.<time>.yaml`` / ``jobs.<time>.parquet``, the new
ones replace them, and finished jobs the new grid shares are reused. Job directories
of the old grid that the new one lacks stay on disk but are not part of its status.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import re
import socket
import traceback as _tb
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from . import _atomic
from .runlock import RunLock, now, unwritable
from .errors import ConfigError, StoreError

if TYPE_CHECKING:
    import pandas as pd

    from .grid.job import JobConfig
    from .grid.spec import Grid

_JOB_ID = re.compile(r"[0-9a-f]{16}")
_GRID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
STATES = ("done", "failed", "started", "pending")


def check_job_id(job_id: str) -> str:
    """``job_id`` if it is 16 lower-case hex digits (so it cannot leave the results dir)."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise StoreError(f"invalid job id {job_id!r}: expected 16 hex digits")
    return job_id


def check_grid_name(name: str) -> str:
    """``name`` if it is safe as one directory name (letters, digits, ``._-``)."""
    if not isinstance(name, str) or not _GRID_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"grid name: got {name!r}; allowed: letters, digits, '.', '_', '-' "
                          f"(starting with a letter or digit, at most 128 characters)")
    return name


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    _atomic.write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"unreadable record {path}: {exc}") from exc


@dataclass(frozen=True)
class JobPaths:
    """Every file of one job (submitit's ``JobPaths``): names live here and nowhere else."""

    root: Path
    job_id: str
    directory: Path | None = None   # a model directory outside a grid (``ctgrid train --out``)

    def __post_init__(self) -> None:
        check_job_id(self.job_id)

    @classmethod
    def at(cls, directory: str | os.PathLike, job_id: str) -> "JobPaths":
        """The same file names in ``directory`` itself (not ``<root>/jobs/<id>``)."""
        return cls(Path(directory), job_id, Path(directory))

    @property
    def dir(self) -> Path:
        return self.directory if self.directory is not None else self.root / "jobs" / self.job_id

    config = property(lambda self: self.dir / "config.yaml")
    checkpoint = property(lambda self: self.dir / "checkpoint.pt")
    model = property(lambda self: self.dir / "model.pt")
    history = property(lambda self: self.dir / "history.parquet")
    evaluation = property(lambda self: self.dir / "evaluation.parquet")
    performance = property(lambda self: self.dir / "performance.parquet")
    counterfactuals = property(lambda self: self.dir / "counterfactuals.parquet")
    log = property(lambda self: self.dir / "log.txt")
    error = property(lambda self: self.dir / "error.json")
    done = property(lambda self: self.dir / "done.json")

    @property
    def status(self) -> str:
        """``done``, ``failed``, ``started`` (a checkpoint, no record: running now or interrupted;
        ``ctgrid status`` tells which) or ``pending``."""
        if self.done.exists():
            return "done"
        if self.error.exists():
            return "failed"
        if self.checkpoint.exists():
            return "started"
        return "pending"

    def done_record(self) -> dict[str, Any] | None:
        return _read_json(self.done)

    def set_aside_done(self) -> Path:
        """Rename ``done.json`` to ``done.damaged.<UTC time>.json`` (kept: it records what the job
        wrote first): the job is no longer done, so the next run re-runs it."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.dir / f"done.damaged.{stamp}.json"
        os.replace(self.done, target)
        return target

    def error_record(self) -> dict[str, Any] | None:
        return _read_json(self.error)


def write_job_parquet(path: Path, frame: Any, job_id: str, record: Mapping[str, Any]) -> _atomic.Written:
    """One of a job's Parquet files, atomically: ``job_id`` as its first column (so that
    duckdb/polars globs over ``jobs/*/evaluation.parquet`` join to ``jobs.parquet``) and the
    provenance ``record`` as key-value metadata (:mod:`ctgrid.provenance`)."""
    import pyarrow as pa

    from .provenance import parquet_metadata
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    if "job_id" in table.column_names:
        table = table.drop_columns(["job_id"])
    table = table.add_column(0, "job_id", pa.array([job_id] * table.num_rows, pa.string()))
    meta = {**(table.schema.metadata or {}), **parquet_metadata(job_id, dict(record))}
    return _atomic.write_parquet(path, table.replace_schema_metadata(meta))


def mark_done(paths: JobPaths, record: Mapping[str, Any], files: Iterable[_atomic.Written] = ()) -> None:
    """Write ``done.json`` (last), then drop the stale error record and the checkpoint.

    ``files`` (what the job's atomic writes returned) become its ``files`` entry: each file's
    name in the job directory -> ``{"bytes", "sha256"}``, what :mod:`ctgrid.integrity` checks."""
    entries = {}
    for written in files:
        if paths.dir / written.path.name != written.path:
            raise ValueError(f"{written.path} is not a file of job directory {paths.dir}")
        entries[written.path.name] = written.record()
    _write_json(paths.done, {"status": "done", "job_id": paths.job_id, "finished": now(), **record,
                             "files": entries})
    for stale in (paths.error, paths.checkpoint):
        stale.unlink(missing_ok=True)


@dataclass
class StoreStatus:
    """Counts per state over the grid's jobs, and the failure records."""

    counts: dict[str, int]
    failed: list[dict[str, Any]] = field(default_factory=list)
    n_points: int = 0
    n_other: int = 0   # job directories not in this grid (left by an earlier grid)

    @property
    def n_jobs(self) -> int:
        return sum(self.counts.values())


class ResultStore:
    """The directory ``<results>/<grid name>`` and everything written into it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def for_grid(cls, results_dir: str | os.PathLike, grid_name: str) -> "ResultStore":
        return cls(Path(results_dir) / check_grid_name(grid_name))

    grid_file = property(lambda self: self.root / "grid.yaml")
    jobs_file = property(lambda self: self.root / "jobs.parquet")
    lock_file = property(lambda self: self.root / ".lock")
    cache_dir = property(lambda self: self.root / "cache")

    def job(self, job_id: str) -> JobPaths:
        return JobPaths(self.root, job_id)

    def lock(self) -> RunLock:
        return RunLock(self.lock_file)

    # -- writing the grid ------------------------------------------------------------
    def initialise(self, grid: Grid, *, force: bool = False) -> None:
        """Write ``grid.yaml``, ``jobs.parquet`` (every point: its job id, name and all its
        parameters) and every job's ``config.yaml``.

        Call it while holding :meth:`lock`.
        """
        table = grid.point_table(all_parameters=True)
        self._check_same_grid(grid.source_text, table, force)
        self.check_no_links()
        self.root.mkdir(parents=True, exist_ok=True)
        for job_id, job in grid.jobs().items():
            self.write_config(job_id, job)
        _atomic.write_parquet(self.jobs_file, table)
        _atomic.write_text(self.grid_file, grid.source_text)

    def check_grid(self, grid: Grid, *, force: bool = False) -> None:
        """What :meth:`initialise` would refuse, without writing (``--dry-run``): another
        grid's results here without ``force``."""
        self._check_same_grid(grid.source_text, grid.point_table(), force, dry=True)
        self.check_no_links()

    def check_writable(self) -> None:
        """What taking the lock would refuse, without leaving anything (``--dry-run``): the
        results directory (or its nearest existing parent) must be a directory this process can
        create files in — probed with a temporary directory that is removed at once (permission
        bits alone say nothing for root, an immutable directory or a read-only mount)."""
        base = self.root
        while not base.exists() and base != base.parent:
            base = base.parent
        try:
            if not base.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(base))
            os.rmdir(tempfile.mkdtemp(prefix=".ctgrid-probe-", dir=base))
        except OSError as exc:
            raise unwritable(self.root, exc) from None

    def check_no_links(self) -> None:
        """The grid's directory, ``jobs/`` and ``cache/`` must be real directories: ctgrid never
        makes a symbolic link, and results are never written through one to somewhere else."""
        for sub in (self.root, self.root / "jobs", self.cache_dir):
            if sub.is_symlink():
                raise StoreError(f"{sub} is a symbolic link (to {os.readlink(sub)}); ctgrid writes "
                                 f"results only into real directories: remove the link")

    def _check_same_grid(self, source_text: str, table: pd.DataFrame, force: bool, dry: bool = False) -> None:
        if not self.grid_file.exists() and not self.grid_file.is_symlink():
            return
        if self.grid_file.is_symlink() or self.jobs_file.is_symlink():
            raise StoreError(f"{self.root}: grid.yaml / jobs.parquet is a symbolic link; ctgrid makes none "
                             f"(remove it, or use another --results)")
        try:
            if self.grid_file.read_text(encoding="utf-8") == source_text:
                return
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.grid_file}: unreadable ({exc}); use another --results") from None
        if self._same_points(table):
            return
        if not force:
            raise StoreError(f"{self.root} holds results of a different grid (its grid.yaml "
                             f"differs and expands to other jobs); use another --results or "
                             f"--force to switch it to this grid (finished shared jobs are reused)")
        if dry:
            return
        stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        os.replace(self.grid_file, self.root / f"grid.{stamp}.yaml")
        if self.jobs_file.exists():
            os.replace(self.jobs_file, self.root / f"jobs.{stamp}.parquet")

    def _same_points(self, table: pd.DataFrame) -> bool:
        try:
            old = self.point_table()
        except StoreError:
            return False
        def pairs(t: pd.DataFrame) -> list[tuple[int, str]]:
            return list(zip(t["point"].astype(int).tolist(), t["job_id"].astype(str).tolist()))
        return pairs(old) == pairs(table)

    def write_config(self, job_id: str, job: JobConfig, *, refresh: bool = False) -> _atomic.Written | None:
        """The job's canonical configuration as YAML. Skipped when the file is there, unless
        ``refresh`` (a job about to run): then rewritten unless it already holds exactly that
        text (a damaged copy is replaced), and its :class:`~ctgrid._atomic.Written` returned."""
        job_dir = self.job(job_id).dir
        if job_dir.is_symlink():   # ctgrid makes no links: never write through one out of the results
            job_dir.unlink()
        paths = self.job(job_id)
        if not refresh and paths.config.exists():
            return None
        text = config_text(job, job_id)
        try:
            if refresh and paths.config.read_bytes() == text.encode("utf-8"):
                return _atomic.Written.of(paths.config, text.encode("utf-8"))
        except OSError:
            pass
        return _atomic.write_text(paths.config, text)

    # -- reading -------------------------------------------------------------------------
    def point_table(self) -> pd.DataFrame:
        import pandas as pd
        if not self.jobs_file.exists():
            raise StoreError(f"{self.root} is not a ctgrid results directory (no jobs.parquet)")
        try:
            return pd.read_parquet(self.jobs_file)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors: a damaged file is bad input
            raise StoreError(f"{self.jobs_file}: unreadable ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None

    def point_job_ids(self) -> list[str]:
        """Each grid point's job id, in point order (pyarrow only: ``ctgrid status`` stays fast)."""
        import pyarrow.parquet as pq
        if not self.jobs_file.exists():
            raise StoreError(f"{self.root} is not a ctgrid results directory (no jobs.parquet)")
        try:
            table = pq.ParquetFile(self.jobs_file).read(columns=["job_id"])
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors: a damaged file is bad input
            raise StoreError(f"{self.jobs_file}: unreadable ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None
        return [str(i) for i in table.column(0).to_pylist()]

    def job_ids(self) -> list[str]:
        """The grid's distinct job ids, in order of first appearance in the point table."""
        return [check_job_id(i) for i in dict.fromkeys(self.point_job_ids())]

    def read_config(self, job_id: str) -> JobConfig:
        """The :class:`~ctgrid.grid.job.JobConfig` stored for ``job_id``."""
        import yaml
        from .grid.job import JobConfig
        return JobConfig.from_dict(yaml.safe_load(self.job(job_id).config.read_text(encoding="utf-8")))

    def status(self) -> StoreStatus:
        points = self.point_job_ids()
        ids = [check_job_id(i) for i in dict.fromkeys(points)]
        counts = {s: 0 for s in STATES}
        failed = []
        for job_id in ids:
            paths = self.job(job_id)
            state = paths.status
            counts[state] += 1
            if state == "failed":
                failed.append(paths.error_record() or {"job_id": job_id})
        others = 0
        jobs_dir = self.root / "jobs"
        if jobs_dir.is_dir():
            known = set(ids)
            others = sum(1 for p in jobs_dir.iterdir() if p.name not in known)
        return StoreStatus(counts, failed, n_points=len(points), n_other=others)

    # -- job records -------------------------------------------------------------------
    def mark_done(self, job_id: str, record: Mapping[str, Any], files: Iterable[_atomic.Written] = ()) -> None:
        """:func:`mark_done` of one of the grid's jobs."""
        mark_done(self.job(job_id), record, files)

    def mark_failed(self, job_id: str, exc: BaseException, record: Mapping[str, Any] | None = None,
                    *, drop_checkpoint: bool = False) -> dict[str, Any]:
        """Write ``error.json`` for ``exc`` (type, message, traceback, log path); return it."""
        paths = self.job(job_id)
        rec = {"status": "failed", "job_id": job_id, "time": now(),
               "error_type": type(exc).__name__, "message": str(exc).strip().splitlines()[0]
               if str(exc).strip() else "",
               "traceback": "".join(_tb.format_exception(type(exc), exc, exc.__traceback__)),
               "log_path": str(paths.log.absolute()), "host": socket.gethostname(), **(record or {})}
        _write_json(paths.error, rec)
        if drop_checkpoint:
            paths.checkpoint.unlink(missing_ok=True)
        return rec

    def begin(self, job_id: str) -> None:
        """A job (re)starts: drop its old error record and temporary files a killed run left."""
        paths = self.job(job_id)
        paths.error.unlink(missing_ok=True)
        if paths.dir.is_dir():
            for tmp in paths.dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def done_records(self, job_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The ``done.json`` records of the given (default: all of the grid's) finished jobs."""
        out = []
        for job_id in self.job_ids() if job_ids is None else job_ids:
            rec = self.job(job_id).done_record()
            if rec is not None:
                out.append(rec)
        return out


def find_stores(path: str | os.PathLike) -> list[ResultStore]:
    """``path`` itself if it is a grid results directory, else its grid subdirectories."""
    path = Path(path)
    if (path / "jobs.parquet").exists():
        return [ResultStore(path)]
    if not path.is_dir():
        raise StoreError(f"no results directory at {path}")
    stores = [ResultStore(p) for p in sorted(path.iterdir()) if (p / "jobs.parquet").exists()]
    if not stores:
        raise StoreError(f"{path} holds no ctgrid results (no jobs.parquet in it or its subdirectories)")
    return stores


# -- moved from ctgrid/modeldir.py (issue 22: modeldir imports store, never the reverse) --
def config_text(job: JobConfig, job_id: str) -> str:
    """``config.yaml``'s text: the canonical configuration, all groups, with an identifying header
    (the one writer of a job's or a model directory's config, :mod:`ctgrid.modeldir`)."""
    import yaml
    header = f"# ctgrid job {job_id} ({job.name}), training seed {job.seed}\n"
    return header + yaml.safe_dump(job.canonical().to_dict(), sort_keys=False, default_flow_style=None)


def write_config(path: Path, job: JobConfig, job_id: str) -> _atomic.Written:
    """``config.yaml`` (:func:`config_text`), atomically."""
    return _atomic.write_text(path, config_text(job, job_id))
