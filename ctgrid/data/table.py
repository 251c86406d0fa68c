"""A user's own tabular file (or data frame) as a dataset: ``data.name: table``.

``data: {name: table, path: loans.csv, target: default, categorical: [purpose], drop: [id],
mutability: {age: none}}`` reads a CSV file (``.csv``, gzip-compressed ``.csv.gz``) or a Parquet
file (``.parquet``, ``.pq``) with pandas/pyarrow and prepares it as the built-in tabular sets
are prepared (:mod:`.tabular`; docs/datasets.md, "Your own data"):

1. *checks* (one :class:`~ctgrid.errors.DataError` line naming the column): the target and
   every named column exist; missing values are an error unless ``na: drop`` drops their rows
   (nothing is imputed); the target has 2 to :data:`MAX_CLASSES` classes; every feature is
   numeric (or boolean) unless declared categorical, finite and not constant; a categorical
   column has at most :data:`MAX_LEVELS` levels; the file has at least :data:`MIN_ROWS` rows.
2. *labels*: the target's distinct values in sorted order (numbers ascending, anything else
   as text in code-point order) are classes ``0, 1, ...`` (``Dataset.meta["classes"]``).
3. *splits* from ``split_seed`` (:func:`.splits.split_rows`): 20 % test, then ``n_val``
   validation rows (default 10 % of the rows, at most 1000), the rest for training; both
   draws stratified by label unless ``stratify: false``.
4. *preprocessing* (:func:`.tabular.encode`): numeric columns z-scored with the training
   split's mean and sample sd, categorical columns one-hot encoded in place (``purpose=car``)
   and registered as one-hot groups (so ``generator.categorical``, ``evaluation.categorical``
   and a group's mutability apply) — the levels, as for Adult and Credit, are the column's
   values in the whole file, so that every row has exactly one 1 per group.

The file's SHA-256 (``data.sha256``) is part of the job's identity, its path is not.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from .config import TABLE, DataConfig, file_format, file_sha256
from .specs import DatasetSpec
from .splits import Splits, round_half_up, split_rows
from .tabular import encode

#: a target with more distinct values than this is not a classification target
MAX_CLASSES = 50
#: a categorical column with more distinct values than this is refused (an id? bin it)
MAX_LEVELS = 100
#: fewest usable rows (after ``na: drop``) a file must have for three splits
MIN_ROWS = 20
#: default validation share of the rows, and its cap (the built-in sets use 1000)
VAL_SHARE, MAX_VAL = 0.1, 1000


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """The file as read (cached per process by path, mtime and size; callers copy)."""
    kind = file_format(path)
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        names = [str(v) for v in header.iloc[0]] if len(header) else []
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"data.path: {path}: column {twice[0]!r} appears twice in the header")
        return pd.read_csv(path, low_memory=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, EOFError, ValueError,
            UnicodeDecodeError, zlib.error, ImportError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"data.path: {path}: not a readable {kind} file ({type(exc).__name__}: "
                        f"{first})") from None


def read_file(config: DataConfig) -> pd.DataFrame:
    """A private copy of ``config.path``'s table, after checking its content is the one the
    configuration names (``data.sha256``)."""
    if config.path is None:
        raise DataError(f"data.path: none given; this table configuration (sha256 "
                        f"{config.sha256}) was made from a data frame: load it from a file")
    sha = file_sha256(config.path)
    if sha != config.sha256:
        raise DataError(f"data.path: {config.path} has changed (its sha256 is {sha[:12]}..., the "
                        f"configuration's data.sha256 {str(config.sha256)[:12]}...): restore it, "
                        f"or leave data.sha256 out to use its new content (new job ids)")
    st = os.stat(config.path)
    return _read(config.path, st.st_mtime_ns, st.st_size).copy()


def frame_sha256(frame: pd.DataFrame) -> str:
    """A content hash of a data frame (column names, dtypes and values; not its index)."""
    h = hashlib.sha256("\x1f".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items()).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- checks

def _where(rows: np.ndarray, csv: bool) -> str:
    """``line 5`` (CSV: header is line 1) or ``row 3`` (0-based data row) of the first of ``rows``."""
    first = int(rows[0])
    return f"line {first + 2}" if csv else f"row {first}"


def _no_column(key: str, name: str, columns: list[str], source: str) -> DataError:
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (columns: {', '.join(columns[:20])})"
    return DataError(f"{key}: no column {name!r} in {source}{hint}")


def _check_columns(frame: pd.DataFrame, config: DataConfig, source: str) -> list[str]:
    """The feature columns (file order); DataError for a named column the file lacks."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    assert config.target is not None  # DataConfig requires it for a table
    if config.target not in columns:
        raise _no_column("data.target", config.target, columns, source)
    for key in ("categorical", "drop"):
        for name in getattr(config, key):
            if name not in columns:
                raise _no_column(f"data.{key}", name, columns, source)
    features = [c for c in columns if c != config.target and c not in config.drop]
    if not features:
        raise DataError(f"data.drop: no feature column is left in {source} (all but the target dropped)")
    if isinstance(config.mutability, tuple):
        for name, _ in config.mutability:
            variable = name.split("=", 1)[0]
            if name == config.target:
                raise DataError(f"data.mutability[{name!r}]: {name!r} is the target column, not a feature")
            if name in config.drop or variable in config.drop:
                raise DataError(f"data.mutability[{name!r}]: column {variable!r} is dropped (data.drop)")
    return features


def _missing(frame: pd.DataFrame, used: list[str], config: DataConfig, source: str,
             csv: bool) -> pd.DataFrame:
    """``frame`` without rows that miss a value (``na: drop``), else DataError saying where."""
    mask = frame[used].isna()
    if not mask.to_numpy().any():
        return frame
    if config.na == "drop":
        return frame[~mask.any(axis=1)]
    counts = mask.sum()
    parts = [f"column {c!r}: {int(n)} ({_where(np.flatnonzero(mask[c].to_numpy()), csv)})"
             for c, n in counts.items() if n]
    raise DataError(f"data.na: {int(mask.to_numpy().sum())} missing value(s) in {source}: "
                    f"{'; '.join(parts[:5])}{'; ...' if len(parts) > 5 else ''}; set data.na: drop to "
                    f"drop those rows (nothing is imputed), or data.drop the column")


def _sorted_levels(values: pd.Series) -> list[Any]:
    """Distinct values in the documented order: numbers ascending, anything else as text."""
    levels = list(pd.unique(values))
    if all(isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating)) for v in levels):
        return [v.item() if isinstance(v, np.generic) else v for v in sorted(levels)]
    return sorted((str(v) for v in levels))


def _labels(values: pd.Series, config: DataConfig, source: str) -> tuple[np.ndarray, list[Any]]:
    classes = _sorted_levels(values)
    key = f"data.target: column {config.target!r} of {source}"
    if len(classes) < 2:
        raise DataError(f"{key} has one class ({classes[0]!r}) in every row; need at least 2")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{key} has {len(classes)} distinct values; allowed: at most {MAX_CLASSES} "
                        f"classes (is it a continuous quantity? ctgrid trains classifiers)")
    keys = values.astype(str) if isinstance(classes[0], str) else values
    y = pd.Categorical(keys, categories=classes).codes.astype(np.int64)
    assert (y >= 0).all()
    return y, classes


def _check_features(frame: pd.DataFrame, features: list[str], config: DataConfig, source: str,
                    csv: bool) -> pd.DataFrame:
    """Features numeric unless categorical, finite, not constant; categoricals within the cap."""
    out = {}
    for col in features:
        values = frame[col]
        if col in config.categorical:
            levels = values.nunique()
            if levels > MAX_LEVELS:
                raise DataError(f"data.categorical: column {col!r} of {source} has {levels} distinct values; "
                                f"allowed: at most {MAX_LEVELS} levels (an identifier? data.drop it, or bin it)")
            numeric = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
            values = values if numeric else values.astype(str)
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            values = values.astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(values.to_numpy()))
            if bad.size:
                raise DataError(f"column {col!r} of {source}: non-finite value {values.iloc[bad[0]]} "
                                f"({_where(bad, csv)}); fix the file or data.drop the column")
        else:
            example = values.iloc[0]
            raise DataError(f"column {col!r} of {source} is not numeric (e.g. {example!r}, "
                            f"{_where(np.array([0]), csv)}); list it in data.categorical "
                            f"(one-hot encoded) or data.drop")
        if values.nunique() < 2:
            first = values.iloc[0]
            first = first.item() if isinstance(first, np.generic) else first
            raise DataError(f"column {col!r} of {source} is constant ({first!r} in every "
                            f"row): it cannot inform a model; data.drop it")
        out[col] = values.to_numpy()
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- splits

def table_splits(frame: pd.DataFrame, config: DataConfig, source: str, *, csv: bool = False) -> Splits:
    """Check, label, split and encode ``frame`` as ``config`` says (module docstring)."""
    rows_read = len(frame)
    frame = frame.reset_index(drop=True)
    features = _check_columns(frame, config, source)
    frame = _missing(frame, [*features, str(config.target)], config, source, csv)
    source_rows = frame.index.to_numpy()
    if len(frame) < MIN_ROWS:
        after = f" after dropping {rows_read - len(frame)} with missing values" if rows_read > len(frame) else ""
        raise DataError(f"data.path: {source} has {len(frame)} usable rows{after}; need at least "
                        f"{MIN_ROWS} for a training, a validation and a test split")
    y, classes = _labels(frame[str(config.target)], config, source)
    X_frame = _check_features(frame, features, config, source, csv)
    strata = y if config.stratify else np.zeros_like(y)
    n_val = min(MAX_VAL, round_half_up(VAL_SHARE * len(y)))
    train, val, test = split_rows(strata, config, n_val=n_val)
    missing = [c for c in range(len(classes)) if not (y[train] == c).any()]
    if missing:
        c = missing[0]
        raise DataError(f"data.target: class {classes[c]!r} of column {config.target!r} has "
                        f"{int((y == c).sum())} row(s), none in the training split; too few "
                        f"for this class{'' if config.stratify else ' (data.stratify: true may help)'}")
    X, names, groups, mean, sd = encode(X_frame, tuple(config.categorical), train)
    meta = {"source": source, "sha256": config.sha256, "rows_read": rows_read, "rows_used": len(y),
            "na_dropped": rows_read - len(y), "target": config.target, "classes": classes,
            "columns": features, "categorical": list(config.categorical),
            "feature_mean": mean, "feature_std": sd,
            "index": {"train": source_rows[train], "val": source_rows[val], "test": source_rows[test]}}
    return Splits(X[train], y[train], X[val], y[val], X[test], y[test], names, groups, meta=meta)


def load_table(config: DataConfig) -> Splits:
    """The splits of ``config.path`` (after checking its content hash)."""
    frame = read_file(config)
    return table_splits(frame, config, str(config.path), csv=file_format(str(config.path)) == "csv")


def frame_config(frame: pd.DataFrame, target: str, **options: Any) -> DataConfig:
    """The :class:`DataConfig` of a data frame: ``name: table`` with the frame's content hash
    as ``sha256`` (no ``path``); ``options``: any other ``DataConfig`` field."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    return DataConfig(name=TABLE, target=target, sha256=frame_sha256(frame), **options)


def batch_size(n_train: int) -> int:
    """A table's default mini-batch: a tenth of the training rows, within 30..1000 (the built-in
    sets: 30 synthetic, 100 German, 1000 the large tabular ones); ``training.batch_size`` overrides."""
    return int(min(1000, max(30, round_half_up(n_train / 10))))


def spec_of(splits: Splits, config: DataConfig) -> DatasetSpec:
    """The :class:`DatasetSpec` a table's splits give (sizes, classes, batch size)."""
    k = len(splits.meta["classes"])
    counts = [tuple(int(c) for c in np.bincount(y, minlength=k)) for y in (splits.y_train, splits.y_test)]
    return DatasetSpec(TABLE, "table", f"{config.label} ({splits.meta['source']})",
                       batch_size=batch_size(len(splits.y_train)), n_train=len(splits.y_train),
                       n_val=len(splits.y_val), n_test=len(splits.y_test),
                       n_features=splits.X_train.shape[1], n_classes=k, train_counts=counts[0],
                       test_counts=counts[1], paper_immutable=())


@functools.lru_cache(maxsize=32)
def _spec_cached(config: DataConfig, stat: tuple[int, int]) -> DatasetSpec:
    return spec_of(load_table(config), config)


def table_spec(config: DataConfig) -> DatasetSpec:
    """The sizes of ``config``'s table (read, checked and split once per file version)."""
    try:
        st = os.stat(Path(str(config.path)))
        stamp = (st.st_mtime_ns, st.st_size)
    except (OSError, TypeError):
        stamp = (0, 0)      # no file: load_table says why
    return _spec_cached(config, stamp)
