"""The splits of any dataset as numpy arrays (no torch): what :func:`ctgrid.data.load_dataset`
turns into tensors, and what the grid checks read a dataset's training rows and feature names
from (``ctgrid expand`` and a run's preflight, before anything is written). Each loader is
imported on demand: synthetic data needs neither pandas nor data files."""
from __future__ import annotations

import os

from .config import TABLE, DataConfig
from .specs import DatasetSpec, dataset_defaults, resolve_data_dir
from .splits import Splits


def data_spec(config: DataConfig) -> DatasetSpec:
    """The sizes, classes and batch size of ``config``'s data: the documented defaults of a
    built-in dataset (no data read), or what a table's file gives (read once per version)."""
    if config.name == TABLE:
        from . import table
        return table.table_spec(config)
    return dataset_defaults(config.name)


def load_splits(config: DataConfig, data_dir: str | os.PathLike | None = None) -> Splits:
    """Generate or read ``config.name`` and split it (``data_dir``, else ``$CTGRID_DATA``;
    a table reads ``config.path``)."""
    if config.name == TABLE:
        from . import table
        return table.load_table(config)
    spec = dataset_defaults(config.name)
    if spec.kind == "synthetic":
        from . import synthetic
        return synthetic.load_synthetic(config)
    root = resolve_data_dir(data_dir, spec.name)
    if spec.kind == "image":
        from . import mnist
        return mnist.load_mnist(config, root)
    from . import tabular
    return tabular.load_tabular(config, root)


def paper_mutability(name: str) -> dict[str | int, str]:
    """The paper's actionability setting of dataset ``name`` (``data.mutability: paper``) as a
    mapping feature -> ``none``; ConfigError for a dataset the paper gives none."""
    from ..errors import ConfigError
    spec = dataset_defaults(name)
    if not spec.paper_immutable:
        raise ConfigError(f"data.mutability: got 'paper'; dataset {spec.name!r} has no paper "
                          f"setting, give a mapping feature -> kind")
    return {k: "none" for k in spec.paper_immutable}
