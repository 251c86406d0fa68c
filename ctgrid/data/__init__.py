"""Datasets of the paper: registry, loaders and the :class:`Dataset` they produce.

``load_dataset(DataConfig(name="adult"), data_dir)`` is the entry point; see
``docs/datasets.md`` for sizes, class balance and preprocessing.
"""
from .dataset import DATASETS, DataConfig, Dataset
from .registry import SPECS, DatasetSpec, dataset_defaults, load_dataset

__all__ = ["DATASETS", "DataConfig", "Dataset", "DatasetSpec", "SPECS", "dataset_defaults",
           "load_dataset"]
