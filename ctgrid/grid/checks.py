"""Grid checks that need the datasets' sizes or feature names: made by ``ctgrid expand``,
``--dry-run`` and ``run`` before the lock and before anything is written (exit 2, one line
naming the key), so a job never fails at run time for a grid error.

:func:`check_sizes` needs only the documented sizes (:mod:`ctgrid.data.specs`: no data files,
no torch, no pandas); the training rows it derives equal what loading gives (tested). A user's
table (``data.name: table``) has no documented sizes: its file is read, checked and split
(:mod:`ctgrid.data.table`, pandas, no torch), so bad data is one line and exit 2 here too.
:func:`check_features` reads the feature names of the datasets whose mutability is given by
name (:func:`ctgrid.data.loaders.load_splits`, no torch), once per distinct data configuration.
"""
from __future__ import annotations

import os
from typing import Mapping

from ..data.config import DataConfig
from ..data.loaders import data_spec
from ..data.specs import DatasetSpec, dataset_defaults
from ..errors import ConfigError
from ..models.config import check_fits_data
from .job import JobConfig


def training_rows(data: DataConfig, spec: DatasetSpec) -> int:
    """The training rows ``data`` gives: its ``n_train``, else the dataset's default — for the
    tabular sets the pool (documented train + validation rows) less the validation rows; a
    table's spec holds the rows its file gives under ``data``."""
    if spec.kind == "table":
        return spec.n_train
    if data.n_train is not None:
        return data.n_train
    if spec.kind == "tabular" and data.n_val is not None:
        return spec.n_train + spec.n_val - data.n_val
    return spec.n_train


#: synthetic sets are generated in memory: more rows than this is a typo, not a study
MAX_SYNTHETIC_ROWS = 1_000_000
#: MNIST's class-balanced pool: 10 x the rarest digit's 5421 official training images
MNIST_POOL = 54_210


def _check_split_sizes(data: DataConfig, spec: DatasetSpec) -> None:
    n_train = spec.n_train if data.n_train is None else data.n_train
    n_val = spec.n_val if data.n_val is None else data.n_val
    if spec.kind == "synthetic":
        n_test = spec.n_test if data.n_test is None else data.n_test
        if n_train + n_val + n_test > MAX_SYNTHETIC_ROWS:
            raise ConfigError(f"data.n_train: got {n_train} (+ n_val {n_val} + n_test {n_test}); allowed: "
                              f"at most {MAX_SYNTHETIC_ROWS} rows in all for a synthetic dataset")
        return
    if spec.kind == "image":
        if n_train + n_val > MNIST_POOL:
            raise ConfigError(f"data.n_train: n_train + n_val = {n_train + n_val}; allowed: at most "
                              f"{MNIST_POOL} for dataset {spec.name!r} (class-balanced draw without replacement)")
        if data.n_test is not None and data.n_test > spec.n_test:
            raise ConfigError(f"data.n_test: got {data.n_test}; allowed: at most {spec.n_test} "
                              f"for dataset {spec.name!r}")
        return
    pool = spec.n_train + spec.n_val
    n_val = spec.n_val if data.n_val is None else data.n_val
    if n_val > pool - 1:
        raise ConfigError(f"data.n_val: got {n_val}; allowed: at most {pool - 1} for dataset {spec.name!r}")
    if data.n_train is not None and data.n_train > pool - n_val:
        raise ConfigError(f"data.n_train: got {data.n_train}; allowed: at most {pool - n_val} "
                          f"for dataset {spec.name!r} (with n_val {n_val})")
    if data.n_test is not None and data.n_test > spec.n_test:
        raise ConfigError(f"data.n_test: got {data.n_test}; allowed: at most {spec.n_test} "
                          f"for dataset {spec.name!r}")


def check_sizes(jobs: Mapping[str, JobConfig]) -> None:
    """The checks that need only the dataset's documented sizes: split sizes, CNN on images,
    ``training.nce`` and ``training.leave_out`` within the training rows, one domain pair or
    one per feature, ``data.mutability: paper`` only where the paper gives one."""
    seen: set[tuple[DataConfig, object, object]] = set()
    for job in jobs.values():
        key = (job.data, job.model, (job.training.nce, job.training.leave_out,
                                     job.training.needs_counterfactuals))
        if key in seen:      # a 20,000-point grid has few distinct combinations
            continue
        seen.add(key)
        spec = data_spec(job.data)    # a table: its file read, checked and split (DataError)
        if spec.kind != "table":      # (a table's split sizes are checked when it is split)
            _check_split_sizes(job.data, spec)
        check_fits_data(job.model, spec.kind == "image", job.data.name)
        if job.model.kind == "module":   # a user's factory: importable, (n, d) -> (n, k) logits
            from ..models.custom import build_custom
            build_custom(job.model, spec.n_features, spec.n_classes)
        n_train = training_rows(job.data, spec)
        if job.training.needs_counterfactuals and job.training.nce > n_train:
            raise ConfigError(f"training.nce: got {job.training.nce}; allowed: at most {n_train} "
                              f"(the training rows of {job.data.label!r})")
        if job.training.leave_out >= n_train:
            raise ConfigError(f"training.leave_out: got {job.training.leave_out}; allowed: -1 (none) or "
                              f"0..{n_train - 1} (the training rows of {job.data.label!r})")
        n_pairs = len(job.data.domain or ())
        if n_pairs not in (0, 1, spec.n_features):
            raise ConfigError(f"data.domain: got {n_pairs} [lower, upper] pairs; allowed: 1 (every feature) "
                              f"or {spec.n_features} (one per feature of {job.data.label!r})")
        if job.data.mutability == "paper":
            from ..data.loaders import paper_mutability
            paper_mutability(job.data.name)


def names_features(job: JobConfig) -> bool:
    """Whether ``job`` gives a mutability by feature name or index (data or evaluation)."""
    return (isinstance(job.data.mutability, tuple) and bool(job.data.mutability)) \
        or bool(job.evaluation.mutability)


def check_features(jobs: Mapping[str, JobConfig], data_dir: str | os.PathLike | None, *,
                   read_every_dataset: bool = False) -> None:
    """``data.mutability`` and ``evaluation.mutability`` name features the data has (by name,
    one-hot variable or index; ``did you mean``), read once per distinct data configuration.
    With ``read_every_dataset`` (a run and its dry run) every data file of the grid is read
    once as well, so a truncated or malformed file is bad input (exit 2), not a job failing at
    run time. Raises DataError when the data files are missing or unreadable."""
    from .._mutability import resolve_mutability
    from ..data.loaders import load_splits
    by_data: dict[DataConfig, list[JobConfig]] = {}
    first: dict[object, DataConfig] = {}
    for job in jobs.values():   # one configuration per dataset (per table file)
        first.setdefault((job.data.name, job.data.sha256), job.data)
        if names_features(job):
            by_data.setdefault(job.data, []).append(job)
    if read_every_dataset:
        for data in first.values():
            if data.name == "table" or dataset_defaults(data.name).files:
                by_data.setdefault(data, [])
    for data, group in by_data.items():
        splits = load_splits(data, data_dir)
        names, groups = splits.feature_names, splits.categorical_groups
        checked: set[object] = set()
        for job in group:
            for where, spec in (("data.mutability", job.data.mutability),
                                ("evaluation.mutability", job.evaluation.mutability)):
                if isinstance(spec, tuple) and (where, spec) not in checked:
                    checked.add((where, spec))
                    resolve_mutability(dict(spec), names, groups, where)
