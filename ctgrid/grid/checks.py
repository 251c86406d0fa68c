"""Grid checks that need only the datasets' documented sizes (:mod:`ctgrid.data.specs`)."""
from __future__ import annotations

from typing import Mapping

from ..data.specs import dataset_defaults
from ..errors import ConfigError
from ..models.config import check_fits_data
from .job import JobConfig


def check_sizes(jobs: Mapping[str, JobConfig]) -> None:
    """The checks that need only the dataset's documented sizes (no data files): CNN on images,
    ``leave_out`` within the training rows, one domain pair or one per feature.
    ``ctgrid expand``, ``--dry-run`` and ``run`` make them (before the lock: exit 2, nothing
    written); standard library only, no data files, no torch."""
    for job in jobs.values():
        spec = dataset_defaults(job.data.name)
        check_fits_data(job.model, spec.kind == "image", job.data.name)
        n_train = job.data.n_train or spec.n_train
        if job.training.leave_out >= n_train:
            raise ConfigError(f"training.leave_out: got {job.training.leave_out}; allowed: -1 (none) or "
                              f"0..{n_train - 1} (the training rows of {job.data.name!r})")
        n_pairs = len(job.data.domain or ())
        if n_pairs not in (0, 1, spec.n_features):
            raise ConfigError(f"data.domain: got {n_pairs} [lower, upper] pairs; allowed: 1 (every feature) "
                              f"or {spec.n_features} (one per feature of {job.data.name!r})")
