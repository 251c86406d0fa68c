"""Datasets of the paper: registry, loaders and the :class:`Dataset` they produce.

``load_dataset(DataConfig(name="adult"), data_dir)`` is the entry point; see
``docs/datasets.md`` for sizes, class balance and preprocessing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .config import DATASETS, DataConfig
    from .dataset import Dataset
    from .registry import load_dataset, table_dataset
    from .specs import SPECS, DatasetSpec, dataset_defaults

_EXPORTS = {
    "DATASETS": ".config",
    "DataConfig": ".config",
    "Dataset": ".dataset",
    "SPECS": ".specs",
    "DatasetSpec": ".specs",
    "dataset_defaults": ".specs",
    "load_dataset": ".registry",
    "table_dataset": ".registry",
}
__all__ = ["DATASETS", "DataConfig", "Dataset", "DatasetSpec", "SPECS", "dataset_defaults", "load_dataset",
           "table_dataset"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
