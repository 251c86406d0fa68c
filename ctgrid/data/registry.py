"""The dataset registry and :func:`load_dataset`, the one entry point of ``ctgrid.data``.

Each registry entry records the documented defaults (sizes, batch size, the
paper's immutable features); ``tests/test_data.py`` checks that loading gives
exactly these numbers, and ``docs/datasets.md`` shows them.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..constraints import Constraints
from ..errors import ConfigError
from .config import TABLE
from .dataset import DataConfig, Dataset
from .specs import (MNIST_PAPER_IMMUTABLE, SPECS, DatasetSpec, dataset_defaults,  # noqa: F401 (re-exported)
                    resolve_data_dir)
from .loaders import load_splits, paper_mutability
from .splits import Splits

if TYPE_CHECKING:
    import pandas as pd


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
        mapping: dict[str | int, str] = paper_mutability(spec.name)
    elif isinstance(config.mutability, tuple):
        mapping = dict(config.mutability)
    else:  # DataConfig admits only 'paper' as a string
        raise ConfigError(f"data.mutability: got {config.mutability!r}; allowed: a mapping or 'paper'")
    if mapping:
        constraints = constraints.with_mutability(mapping, splits.feature_names)
    return constraints


def _features(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _labels(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def load_dataset(config: DataConfig, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load, split and preprocess ``config.name`` and attach its actionability constraints.

    ``data_dir`` (else ``$CTGRID_DATA``) holds the raw files of the real datasets
    (``../shared/data/PROVENANCE.md``); synthetic sets need none, a table reads
    ``config.path``. Deterministic in ``config``: the same config gives identical tensors in
    any process.
    """
    if not isinstance(config, DataConfig):
        raise TypeError(f"load_dataset expects a DataConfig, got {type(config).__name__}")
    return dataset_of(config, load_splits(config, data_dir))


def table_dataset(frame: pd.DataFrame, target: str, **options: Any) -> Dataset:
    """A :class:`Dataset` from a pandas data frame, prepared exactly as a ``name: table`` file
    (:mod:`ctgrid.data.table`): ``table_dataset(df, "default", categorical=["purpose"],
    mutability={"age": "none"})``; ``options`` are :class:`DataConfig` fields. Its
    ``meta["config"]`` is the DataConfig (``sha256``: the frame's content hash)."""
    from .table import frame_config, table_splits
    config = frame_config(frame, target, **options)
    dataset = dataset_of(config, table_splits(frame, config, "the data frame"))
    return replace(dataset, meta={**dataset.meta, "config": config})


def dataset_of(config: DataConfig, splits: Splits) -> Dataset:
    """The :class:`Dataset` of ``config`` from its (numpy) ``splits``: tensors, constraints."""
    if config.name == TABLE:
        from .table import spec_of
        spec = spec_of(splits, config)
    else:
        spec = dataset_defaults(config.name)
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
