"""The dataset registry and :func:`load_dataset`, the one entry point of ``ctgrid.data``.

Each registry entry records the documented defaults (sizes, batch size, the
paper's immutable features); ``tests/test_data.py`` checks that loading gives
exactly these numbers, and ``docs/datasets.md`` shows them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constraints import Constraints
from ..errors import ConfigError, DataError
from . import mnist, synthetic, tabular
from .dataset import DATASETS, DataConfig, Dataset
from .splits import Splits

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
                       files=(tabular.SOURCES[name].file,), **sizes)


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
                paper_immutable=MNIST_PAPER_IMMUTABLE, files=tuple(mnist.FILES.values())),
    _tabular("german", "German credit (numeric), 1 = good (extra, not in the paper)",
             batch_size=100, n_train=700, n_val=100, n_test=200, n_features=24,
             train_counts=(210, 490), test_counts=(60, 140), paper_immutable=()),
)}
assert tuple(SPECS) == DATASETS, "registry and DataConfig choices disagree"


def _spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ConfigError(f"data.name: got {name!r}; allowed: {', '.join(DATASETS)}")
    return SPECS[name]


def dataset_defaults(name: str) -> DatasetSpec:
    """Documented defaults of dataset ``name`` (kind, batch size, split sizes, class counts,
    paper immutables, files) as the typed :class:`DatasetSpec`; ConfigError for an unknown name."""
    return _spec(name)


def resolve_data_dir(data_dir: str | os.PathLike | None, name: str) -> Path:
    """``data_dir``, else ``$CTGRID_DATA``; DataError when neither is set."""
    if data_dir is None:
        data_dir = os.environ.get("CTGRID_DATA") or None
    if data_dir is None:
        raise DataError(f"dataset {name!r} is read from data files: pass --data-dir or set "
                        f"CTGRID_DATA to the data directory")
    return Path(data_dir)


def _domain(config: DataConfig, spec: DatasetSpec, X_train: np.ndarray) -> Constraints:
    d = X_train.shape[1]
    if config.domain is None:
        if spec.kind == "image":
            return Constraints.unconstrained(d, -1.0, 1.0)
        return Constraints.infer(torch.from_numpy(X_train), config.domain_nstd)
    pairs = config.domain
    if len(pairs) not in (1, d):
        raise ConfigError(f"data.domain: got {len(pairs)} [lower, upper] pairs; allowed: 1 (all "
                          f"features) or {d} (one per feature of {spec.name!r})")
    bounds = torch.tensor(pairs * d if len(pairs) == 1 else pairs, dtype=torch.float32)  # lower <= upper: DataConfig
    return Constraints(bounds[:, 0].contiguous(), bounds[:, 1].contiguous(), ("both",) * d)


def _constraints(config: DataConfig, spec: DatasetSpec, splits: Splits) -> Constraints:
    constraints = replace(_domain(config, spec, splits.X_train), groups=splits.categorical_groups)
    if config.mutability == "paper":
        if not spec.paper_immutable:
            raise ConfigError(f"data.mutability: got 'paper'; dataset {spec.name!r} has no paper "
                              f"setting, give a mapping feature -> kind")
        mapping: dict[str | int, str] = {k: "none" for k in spec.paper_immutable}
    elif isinstance(config.mutability, tuple):
        mapping = dict(config.mutability)
    else:  # DataConfig admits only 'paper' as a string
        raise ConfigError(f"data.mutability: got {config.mutability!r}; allowed: a mapping or 'paper'")
    if mapping:
        constraints = constraints.with_mutability(mapping, splits.feature_names)
    return constraints


def _splits(config: DataConfig, spec: DatasetSpec, data_dir: str | os.PathLike | None) -> Splits:
    if spec.kind == "synthetic":
        return synthetic.load_synthetic(config)
    root = resolve_data_dir(data_dir, spec.name)
    if spec.kind == "image":
        return mnist.load_mnist(config, root)
    return tabular.load_tabular(config, root)


def _features(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _labels(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def load_dataset(config: DataConfig, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load, split and preprocess ``config.name`` and attach its actionability constraints.

    ``data_dir`` (else ``$CTGRID_DATA``) holds the raw files of the real datasets
    (``../shared/data/PROVENANCE.md``); synthetic sets need none. Deterministic in
    ``config``: the same config gives identical tensors in any process.
    """
    if not isinstance(config, DataConfig):
        raise TypeError(f"load_dataset expects a DataConfig, got {type(config).__name__}")
    spec = _spec(config.name)
    splits = _splits(config, spec, data_dir)
    constraints = _constraints(config, spec, splits)

    meta = {"kind": spec.kind, "data_seed": config.data_seed, "split_seed": config.split_seed,
            **splits.meta}
    return Dataset(name=spec.name,
                   X_train=_features(splits.X_train), y_train=_labels(splits.y_train),
                   X_val=_features(splits.X_val), y_val=_labels(splits.y_val),
                   X_test=_features(splits.X_test), y_test=_labels(splits.y_test),
                   feature_names=splits.feature_names, constraints=constraints,
                   n_classes=spec.n_classes, batch_size=spec.batch_size,
                   categorical_groups=splits.categorical_groups,
                   image_shape=splits.image_shape, meta=meta)
