"""Which dataset to load and how to split and constrain it (torch-free: grid files,
``ctgrid expand`` and ``ctgrid config`` validate it without loading anything)."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from .._mutability import mutability_pairs
from .._validate import check, param
from ..errors import ConfigError, DataError

DATASETS = ("lin_sep", "over", "circles", "moons", "adult", "cali", "credit", "gmsc", "mnist", "german")
#: ``data.name`` of a user's own tabular file (``data.path``; :mod:`ctgrid.data.table`)
TABLE = "table"
#: fields only a ``table`` reads (set for a built-in dataset they are an error)
TABLE_FIELDS = ("path", "sha256", "target", "categorical", "drop", "na", "stratify")
#: fields that say where the data lies, not what it is: not part of a job's identity (a
#: moved file keeps its job ids and results; its content is identified by ``sha256``)
LOCATION_FIELDS = ("path",)
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
#: file name endings of a table and their formats
SUFFIXES = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}


def file_format(path: str) -> str:
    """``csv`` or ``parquet`` from the file name; ConfigError for any other ending."""
    name = path.lower()
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise ConfigError(f"data.path: got {path!r}; allowed: a file ending in {', '.join(SUFFIXES)}")


@lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (cached per path, mtime and size); DataError if unreadable."""
    try:
        st = os.stat(path)
        if not os.path.isfile(path):
            raise IsADirectoryError(f"{path} is not a file")
        return _file_sha256(os.fspath(path), st.st_mtime_ns, st.st_size)
    except OSError as exc:
        why = "no such file" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc.strerror or exc})"
        raise DataError(f"data.path: {path}: {why}") from None


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split and constrain it.

    ``None`` sizes take the dataset's reference default (README table).
    ``mutability`` maps feature names or 0-based indices to ``both|increase|decrease|none``;
    the string ``"paper"`` selects the paper's actionability setting for the dataset
    (docs/deviations.md, R16: synthetic first feature, Adult ``age``, ...). ``domain`` gives explicit
    bounds: one ``[lower, upper]`` pair for all features or one pair per feature; else
    bounds are inferred with ``domain_nstd`` standard deviations (reference: 2, paper text: 3).

    ``name: table`` reads a user's CSV (optionally gzip) or Parquet file ``path`` with label
    column ``target`` (docs/datasets.md, "Your own data"): ``categorical`` columns are one-hot
    encoded, ``drop`` columns ignored, ``na: drop`` drops rows with missing values (else they
    are an error), ``stratify`` stratifies the splits by label. ``sha256`` is the file's
    content hash, filled in from the file when not given: it, not the path, is what the job
    id hashes, and a file whose content no longer matches is refused.
    """

    name: str = param("moons", choices=(*DATASETS, TABLE))
    n_train: int | None = param(None, ge=10)
    n_val: int | None = param(None, ge=0)
    n_test: int | None = param(None, ge=10)
    data_seed: int = param(42, ge=0, doc="seed of synthetic generation (reference Xoshiro(42))")
    split_seed: int = param(2025, ge=0, doc="seed of shuffling/splitting (reference 2025)")
    domain_nstd: float = param(2.0, gt=0)
    domain: tuple[tuple[float, float], ...] | None = param(None)
    mutability: tuple[tuple[str, str], ...] | str = param(())
    path: str | None = param(None, since="0.3", doc="table: the CSV / CSV.gz / Parquet file (relative: to the "
                                       "working directory; stored absolute)")
    sha256: str | None = param(None, since="0.3", doc="table: SHA-256 of the file's bytes (default: "
                                                         "computed)")
    target: str | None = param(None, since="0.3", doc="table: the label column")
    categorical: tuple[str, ...] = param((), since="0.3", doc="table: columns one-hot encoded")
    drop: tuple[str, ...] = param((), since="0.3", doc="table: columns left out")
    na: str = param("error", choices=("error", "drop"), since="0.3",
                    doc="table: rows with missing values")
    stratify: bool = param(True, since="0.3", doc="table: stratify the test and validation draws "
                                                  "by label")

    def __post_init__(self) -> None:
        object.__setattr__(self, "mutability", mutability_pairs(self.mutability, "data.mutability"))
        for key in ("categorical", "drop"):   # one column name is a list of one
            if isinstance(getattr(self, key), str):
                object.__setattr__(self, key, (getattr(self, key),))
        check(self, "data")
        for i, (lower, upper) in enumerate(self.domain or ()):
            if lower > upper:
                raise ConfigError(f"data.domain[{i}]: got {[lower, upper]}; allowed: lower <= upper")
        if isinstance(self.mutability, str) and self.mutability != "paper":
            raise ConfigError(f"data.mutability: got {self.mutability!r}; "
                              "allowed: a mapping feature -> kind, or 'paper'")
        if self.name == TABLE:
            self._check_table()
            return
        for key in TABLE_FIELDS:
            if getattr(self, key) != type(self).__dataclass_fields__[key].default:
                raise ConfigError(f"data.{key}: got {getattr(self, key)!r}; allowed only with "
                                  f"data.name: table (not {self.name!r})")

    def _check_table(self) -> None:
        if not self.target:
            raise ConfigError("data.target: required with data.name: table (the label column)")
        if self.path is None and self.sha256 is None:
            raise ConfigError("data.path: required with data.name: table (a .csv, .csv.gz or "
                              ".parquet file)")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ConfigError(f"data.sha256: got {self.sha256!r}; allowed: 64 lower-case hex digits")
        for key in ("categorical", "drop"):
            names = getattr(self, key)
            if self.target in names:
                raise ConfigError(f"data.{key}: got {list(names)!r}; the target column "
                                  f"{self.target!r} cannot be one of them")
            if len(set(names)) != len(names):
                raise ConfigError(f"data.{key}: got {list(names)!r}; a column is listed twice")
        both = sorted(set(self.categorical) & set(self.drop))
        if both:
            raise ConfigError(f"data.drop: column {both[0]!r} is also in data.categorical; give one")
        if self.path is not None:
            file_format(self.path)
            object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(self.path)))
            if self.sha256 is None:
                object.__setattr__(self, "sha256", file_sha256(self.path))

    def identity(self) -> dict:
        """The plain values that identify the data (job ids, training seeds, packs): every
        field but where the file lies (``path``: a table is identified by its ``sha256``), and
        the table fields only where set (so the built-in datasets' job ids and seeds are those
        of releases without tables: :func:`ctgrid._validate.seed_dict`)."""
        from .._validate import seed_dict
        return {k: v for k, v in seed_dict(self).items() if k not in LOCATION_FIELDS}

    @property
    def label(self) -> str:
        """A short name for logs and job names: the dataset, or a table's file name."""
        if self.name != TABLE or self.path is None:
            return self.name
        base = os.path.basename(self.path)
        for suffix in SUFFIXES:
            base = base[: -len(suffix)] if base.lower().endswith(suffix) else base
        return base or TABLE


def data_provenance(config: DataConfig) -> dict:
    """What a result's provenance records about its data: a table's file (``data_file``: path
    and SHA-256); nothing for the built-in datasets (their name and seeds say it all)."""
    if config.name != TABLE:
        return {}
    return {"data_file": {"path": config.path, "sha256": config.sha256}}
