"""The documented defaults of every dataset (sizes, batch size, class counts, the paper's
immutable features, raw files) — torch-free, so grid checks (``ctgrid expand``) need no data
and no torch. ``tests/test_data.py`` checks that loading gives exactly these numbers and
``docs/datasets.md`` shows them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .config import DATASETS

#: raw files of the tabular datasets (under --data-dir / $CTGRID_DATA)
TABULAR_FILES = {"adult": "adult.csv.gz", "cali": "cal_housing.csv.gz", "credit": "credit_default.csv.gz",
                 "gmsc": "gmsc.csv.gz", "german": "german_credit_numeric.csv.gz"}
#: raw files of MNIST (the idx files, gzipped)
MNIST_FILES = {
    "train_images": "mnist/train-images-idx3-ubyte.gz",
    "train_labels": "mnist/train-labels-idx1-ubyte.gz",
    "test_images": "mnist/t10k-images-idx3-ubyte.gz",
    "test_labels": "mnist/t10k-labels-idx1-ubyte.gz",
}
MNIST_PAPER_IMMUTABLE = tuple(range(0, 140)) + tuple(range(644, 784))  # top/bottom 5 pixel rows


@dataclass(frozen=True)
class DatasetSpec:
    """Documented defaults of one dataset (the sizes are what loading the defaults yields)."""

    name: str
    kind: str  # "synthetic" | "tabular" | "image"
    title: str
    batch_size: int
    n_train: int
    n_val: int
    n_test: int
    n_features: int
    n_classes: int
    train_counts: tuple[int, ...]  # rows per class of the default training split
    test_counts: tuple[int, ...]  # rows per class of the default test split
    paper_immutable: tuple[int | str, ...]  # feature names or 0-based indices
    files: tuple[str, ...] = ()


def _synthetic(name: str, title: str) -> DatasetSpec:
    return DatasetSpec(name, "synthetic", title, batch_size=30, n_train=3000, n_val=600,
                       n_test=900, n_features=2, n_classes=2, train_counts=(1500, 1500),
                       test_counts=(450, 450), paper_immutable=(0,))


def _tabular(name: str, title: str, **sizes: Any) -> DatasetSpec:
    return DatasetSpec(name, "tabular", title, n_classes=2,
                       files=(TABULAR_FILES[name],), **sizes)


SPECS: dict[str, DatasetSpec] = {s.name: s for s in (
    _synthetic("lin_sep", "linearly separable blobs (LS)"),
    _synthetic("over", "overlapping blobs (OL)"),
    _synthetic("circles", "concentric circles (Circ)"),
    _synthetic("moons", "two moons (Moon)"),
    _tabular("adult", "UCI Adult, 1 = income >50K", batch_size=1000, n_train=25049, n_val=1000,
             n_test=6512, n_features=108, train_counts=(19048, 6001), test_counts=(4912, 1600),
             paper_immutable=("age",)),
    _tabular("cali", "California housing, 1 = value >= median (CH)", batch_size=1000,
             n_train=15504, n_val=1000, n_test=4126, n_features=8, train_counts=(7752, 7752),
             test_counts=(2063, 2063), paper_immutable=("HouseAge",)),
    _tabular("credit", "Taiwan credit default, 1 = no default (Cred)", batch_size=1000,
             n_train=9618, n_val=1000, n_test=2654, n_features=33, train_counts=(4809, 4809),
             test_counts=(1327, 1327), paper_immutable=("age",)),
    _tabular("gmsc", "Give Me Some Credit, 1 = no delinquency (GMSC)", batch_size=1000,
             n_train=12371, n_val=1000, n_test=3343, n_features=10, train_counts=(6185, 6186),
             test_counts=(1672, 1671), paper_immutable=("age",)),
    DatasetSpec("mnist", "image", "MNIST digits, pixels in [-1, 1]", batch_size=1000,
                n_train=10000, n_val=1000, n_test=10000, n_features=784, n_classes=10,
                train_counts=(1000,) * 10,
                test_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
                paper_immutable=MNIST_PAPER_IMMUTABLE, files=tuple(MNIST_FILES.values())),
    _tabular("german", "German credit (numeric), 1 = good (extra, not in the paper)",
             batch_size=100, n_train=700, n_val=100, n_test=200, n_features=24,
             train_counts=(210, 490), test_counts=(60, 140), paper_immutable=()),
)}
assert tuple(SPECS) == DATASETS, "registry and DataConfig choices disagree"


def dataset_defaults(name: str) -> DatasetSpec:
    """Documented defaults of dataset ``name`` (kind, batch size, split sizes, class counts,
    paper immutables, files) as the typed :class:`DatasetSpec`; ConfigError for an unknown name."""
    if name not in SPECS:
        raise ConfigError(f"data.name: got {name!r}; allowed: {', '.join(DATASETS)}")
    return SPECS[name]


def resolve_data_dir(data_dir: str | os.PathLike | None, name: str) -> Path:
    """``data_dir``, else ``$CTGRID_DATA``; DataError when neither is set."""
    if data_dir is None:
        data_dir = os.environ.get("CTGRID_DATA") or None
    if data_dir is None:
        raise DataError(f"dataset {name!r} is read from data files: pass --data-dir or set "
                        f"CTGRID_DATA to the data directory")
    return Path(data_dir)


