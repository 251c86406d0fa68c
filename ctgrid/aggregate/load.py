"""Read the finished jobs of one or more results directories into data frames.

Every per-job Parquet kind (``evaluation``, ``performance``, ``history``) is read
with one ``pyarrow.dataset`` scan per results directory over all its done jobs,
with the schema unified over *all* files (pyarrow otherwise takes the first file's
schema and silently drops columns only some files have). The job id comes from
the directory name (a one-level directory partitioning under ``jobs/``), so no
Python loop of ``read_table`` + ``concat`` is needed. Paths come from
:mod:`ctgrid.store`, the one module that owns them.

A done job whose files are not what its ``done.json`` recorded (:mod:`ctgrid.integrity`,
the size check) is refused with one line naming the file and ``ctgrid verify``, or left
out with ``skip_damaged`` (``Results.skipped`` says which); a file that is damaged in a
way no size shows is named the same way when pyarrow cannot read it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import yaml

from ..errors import ConfigError, StoreError
from ..grid.job import JobConfig
from ..integrity import JobCheck, check_job, verify_command
from ..store import ResultStore, find_stores

try:  # the C loader parses thousands of config.yaml files several times faster
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

#: Columns that identify a job's place in the pairing rather than a hyper-parameter setting.
NON_SETTING = ("data.name", "training.seed", "data.mutability", "evaluation.mutability")
_PART = "__job_dir"


@dataclass(frozen=True)
class Source:
    """One grid results directory: where it is, its grid file and varied axes."""

    index: int
    name: str
    root: Path
    grid_file: Path | None
    varied: tuple[str, ...]
    n_jobs: int
    n_done: int


def flatten(mapping: dict[str, Any]) -> dict[str, Any]:
    """``{group: {key: v}}`` -> ``{"group.key": v}``; lists/dicts become compact JSON text."""
    out: dict[str, Any] = {}
    for group, values in mapping.items():
        if not isinstance(values, dict):
            continue
        for key, v in values.items():
            out[f"{group}.{key}"] = v if v is None or isinstance(v, (str, int, float, bool)) \
                else json.dumps(v, separators=(",", ":"))
    return out


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, yaml.YAMLError) as exc:
        raise StoreError(f"unreadable job config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise StoreError(f"job config {path} is not a mapping")
    return data


def _read_done(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"unreadable completion record {path}: {exc}") from exc


def _varied(points: pd.DataFrame, flat: pd.DataFrame) -> tuple[str, ...]:
    """The grid's varied ``group.key`` axes: point-table columns, else config columns with >1 value."""
    cols = [c for c in points.columns if "." in c]
    if cols:
        return tuple(cols)
    if flat.empty:
        return ()
    return tuple(c for c in flat.columns if "." in c and flat[c].astype(str).nunique() > 1)


def damaged_error(store: ResultStore, check: JobCheck) -> StoreError:
    """The one line for a damaged job: its first damaged file, and what to do about it."""
    first = check.problems[0]
    more = f" (and {len(check.problems) - 1} more of its files)" if len(check.problems) > 1 else ""
    return StoreError(f"{store.job(check.job_id).dir / first.file} {first.text}{more}: the job's results "
                      f"are damaged; '{verify_command(store.root)}' lists all such files (--repair, then "
                      f"'ctgrid run', re-runs them), or aggregate the rest with --skip-damaged")


def _scan_store(index: int, store: ResultStore, points: pd.DataFrame, skip_damaged: bool,
                skipped: list[str]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The flattened configs of the grid's done jobs (point-table order) and their raw dicts;
    damaged jobs raise :func:`damaged_error`, or with ``skip_damaged`` are noted in ``skipped``."""
    ids = list(dict.fromkeys(points["job_id"].astype(str)))
    rows, raw = [], {}
    for job_id in ids:
        paths = store.job(job_id)
        check = check_job(paths)
        if check is None:
            continue
        if check.damaged:
            if not skip_damaged:
                raise damaged_error(store, check)
            skipped.append(f"{store.root.name}: job {job_id} skipped (--skip-damaged): {check.describe()} "
                           f"({verify_command(store.root)})")
            continue
        cfg = _read_config(paths.config)
        done = _read_done(paths.done)
        summary = done.get("data_summary") or cfg.pop("data_summary", None)
        raw[job_id] = cfg
        rows.append({"source": index, "job_id": job_id, **flatten(cfg),
                     "data_summary": json.dumps(summary) if summary else None})
    return pd.DataFrame(rows), raw


def _read_kind(root: Path, job_ids: Sequence[str], kind: str, columns: Sequence[str] | None,
               filt: Any, all_ids: pa.Array) -> pa.Table | None:
    """One dataset scan over ``jobs/<id>/<kind>.parquet`` of ``job_ids`` (merged schema).

    The job id column is dictionary-encoded over ``all_ids``, one dictionary shared by
    every results directory, so tables of several directories concatenate and group."""
    store = ResultStore(root)
    files = [str(p) for p in (getattr(store.job(j), kind) for j in job_ids) if p.exists()]
    if not files:
        return None
    base = str(store.job(job_ids[0]).dir.parent)
    # a dictionary-typed job id (one dictionary for all files): no per-row strings
    part = ds.DirectoryPartitioning(pa.schema([(_PART, pa.dictionary(pa.int32(), pa.string()))]),
                                    dictionaries={_PART: all_ids})
    opts = ds.FileSystemFactoryOptions(partition_base_dir=base, partitioning=part)
    try:
        factory = ds.FileSystemDatasetFactory(pafs.LocalFileSystem(), files, ds.ParquetFileFormat(), opts)
        schema = factory.inspect(promote_options="permissive", fragments=None)
        dataset = factory.finish(schema)
        names = schema.names
        cols = [c for c in (columns or names) if c in names and c not in (_PART, "job_id")] + [_PART]
        if filt is not None and not all(ref in names for ref in filt[0]):
            filt = None
        table = dataset.to_table(columns=cols, filter=None if filt is None else filt[1])
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(root, files, exc) from None
    return table.rename_columns([("job_id" if c == _PART else c) for c in table.column_names])


def _unreadable(root: Path, files: Sequence[str], exc: Exception) -> StoreError:
    """The one line for a scan that pyarrow could not read: the first file it cannot open."""
    import pyarrow.parquet as pq
    for path in files:
        try:
            pq.read_schema(path)
        except (pa.ArrowException, OSError) as bad:
            return StoreError(f"{path}: not a readable Parquet file ({type(bad).__name__}: "
                              f"{str(bad).splitlines()[0][:160]}); its job's results are damaged: "
                              f"'{verify_command(root)} --full' lists such files")
    return StoreError(f"{root}: reading the jobs' Parquet files failed ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200]}); '{verify_command(root)} --full' checks them")


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """``table`` as a data frame with dictionary (label) columns decoded to plain strings."""
    cols = [pc.cast(c, c.type.value_type) if pa.types.is_dictionary(c.type) else c
            for c in table.columns]
    return pa.table(cols, names=table.column_names).to_pandas()


def metric_filter(metrics: Sequence[str] | None) -> tuple[tuple[str, ...], Any] | None:
    """A scan filter keeping the rows of ``metrics`` (None: all rows)."""
    return None if metrics is None else (("metric",), pc.field("metric").isin(list(metrics)))


@dataclass
class Results:
    """Done jobs of the given results directories, and lazy readers of their Parquet files.

    ``jobs`` has one row per (source, job): ``source``, ``job_id``, the flattened
    canonical configuration (``data.name``, ``training.objective``, ...) and
    ``data_summary`` (JSON text, when the runner stored one in ``done.json``).
    """

    sources: tuple[Source, ...]
    jobs: pd.DataFrame
    raw_configs: dict[str, dict] = field(repr=False)
    skipped: list[str] = field(default_factory=list)   # damaged jobs left out (skip_damaged): notes
    _configs: dict[str, JobConfig] = field(default_factory=dict, repr=False)
    _datasets: dict[Any, Any] = field(default_factory=dict, repr=False)
    _axis_values: dict[int, pd.DataFrame] = field(default_factory=dict, repr=False)
    device: str = "cpu"   # where the model-based figures compute (datasets and models go there)

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike], *, skip_damaged: bool = False) -> "Results":
        """The done jobs of ``paths``; a damaged one is a :class:`StoreError` unless
        ``skip_damaged`` (then left out, and listed in ``skipped``)."""
        stores: list[ResultStore] = []
        for p in paths:
            stores.extend(find_stores(p))
        sources, frames, raw = [], [], {}
        skipped: list[str] = []
        names = [s.root.name for s in stores]
        for i, store in enumerate(stores):
            points = store.point_table()
            flat, cfgs = _scan_store(i, store, points, skip_damaged, skipped)
            raw.update(cfgs)
            grid_file = store.grid_file if store.grid_file.exists() else None
            name = names[i] if names.count(names[i]) == 1 else f"{names[i]}-{i + 1}"
            sources.append(Source(i, name, store.root, grid_file, _varied(points, flat),
                                  points["job_id"].nunique(), len(flat)))
            frames.append(flat)
        jobs = pd.concat([f for f in frames if not f.empty], ignore_index=True) \
            if any(not f.empty for f in frames) else pd.DataFrame()
        if jobs.empty:
            where = ", ".join(str(s.root) for s in sources)
            what = "intact finished jobs (the others are damaged)" if skipped else "finished jobs (done.json)"
            raise StoreError(f"no {what} in {where}: nothing to aggregate")
        return cls(tuple(sources), jobs, raw, skipped)

    def config(self, job_id: str) -> JobConfig:
        """The job's :class:`JobConfig` (parsed from its stored ``config.yaml``)."""
        if job_id not in self._configs:
            try:
                self._configs[job_id] = JobConfig.from_dict(self.raw_configs[job_id])
            except ConfigError as exc:
                raise StoreError(f"job {job_id}: its config.yaml is not a valid job: {exc}") from None
        return self._configs[job_id]

    def axis_values(self, source: int) -> pd.DataFrame:
        """Per job of ``source`` (index ``job_id``): the value its grid points give each varied
        axis, or NaN/None where the job stands for several values of that axis — the job
        ignores it (the penalties grid's one vanilla job; Generic's and REVISE's
        ``generator.lambda_energy``), so it belongs to none of the axis's levels."""
        if source not in self._axis_values:
            points = ResultStore(self.sources[source].root).point_table()
            axes = [c for c in points.columns if "." in c]
            by_job = points.groupby(points["job_id"].astype(str), sort=False)[axes]
            self._axis_values[source] = by_job.first().where(by_job.nunique(dropna=False) == 1)
        return self._axis_values[source]

    def read_table(self, kind: str, columns: Sequence[str] | None = None,
                   filt: tuple[tuple[str, ...], Any] | None = None) -> pa.Table | None:
        """``<kind>.parquet`` of every done job as one Arrow table with ``source`` and ``job_id``
        (one scan per results directory; ``filt`` = (columns it needs, expression))."""
        tables = []
        all_ids = pa.array(sorted(set(self.jobs["job_id"])), pa.string())
        for src in self.sources:
            ids = self.jobs.loc[self.jobs["source"] == src.index, "job_id"].tolist()
            table = _read_kind(src.root, ids, kind, columns, filt, all_ids) if ids else None
            if table is not None and table.num_rows:
                tables.append(table.add_column(0, "source", pa.array(
                    [src.index] * table.num_rows, pa.int64())))
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    def _read(self, kind: str, columns: Sequence[str] | None = None,
              filt: tuple[tuple[str, ...], Any] | None = None) -> pd.DataFrame:
        table = self.read_table(kind, columns, filt)
        return pd.DataFrame() if table is None else to_pandas(table)

    def evaluation(self, metrics: Sequence[str] | None = None,
                   columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Rows of ``evaluation.parquet`` (optionally only ``metrics``), with ``source`` and ``job_id``."""
        return self._read("evaluation", columns, metric_filter(metrics))

    def performance(self) -> pd.DataFrame:
        return self._read("performance")

    def history(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return self._read("history", columns)

    def model_path(self, source: int, job_id: str) -> Path:
        return ResultStore(self.sources[source].root).job(job_id).model

    def dataset(self, job_id: str, data_dir: str | os.PathLike | None = None) -> Any:
        """The job's :class:`~ctgrid.data.Dataset` (loaded once per data configuration)."""
        from ..data import load_dataset
        data = self.config(job_id).data
        if data not in self._datasets:
            self._datasets[data] = load_dataset(data, data_dir).to(self.device)
        return self._datasets[data]

    def model(self, source: int, job_id: str, data_dir: str | os.PathLike | None = None) -> Any:
        """The job's trained model, in eval mode, on :attr:`device` (its dataset from :meth:`dataset`)."""
        from ..modeldir import load_trained
        return load_trained(self.model_path(source, job_id).parent, self.dataset(job_id, data_dir),
                            device=self.device)[1]


def setting_axes(results: Results, source: int, ct_objectives: int) -> tuple[str, ...]:
    """The varied axes that label a CT setting of ``source`` (not dataset, replicate, constraints;
    the objective only when several CT objectives are present)."""
    skip = set(NON_SETTING)
    if ct_objectives <= 1:
        skip.add("training.objective")
    return tuple(a for a in results.sources[source].varied if a not in skip)
