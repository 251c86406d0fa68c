"""Two-stage (hierarchical) bootstrap: trained models first, then what each one was measured on.

A headline number of ctgrid is a mean over *models* (training seeds of a BL/CT pair, base
models of a consistency arm) of a mean over what each model was measured on (evaluation
runs, factuals). Resampling only the inner units — as a bootstrap over the runs of one model
pair does — treats the models as fixed: its interval narrows with the number of runs and says
nothing about another training seed. The two-stage bootstrap resamples both levels (Davison
& Hinkley 1997, §3.8; "resample groups, then units within each drawn group"):

1. draw ``S`` groups with replacement from the ``S`` groups;
2. for each drawn group, draw its ``n_s`` units with replacement;
3. the statistic of the replicate is the mean over the drawn groups of their resampled means.

The point estimate is the mean of the group means (every model weighs the same). With one
group step 1 is void and the interval is the one-stage bootstrap of that group's units; with
identical units inside each group step 2 is void and the interval is the bootstrap of the
group means alone (the tests use both to check the replicates against hand enumerations).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def group_means(groups: Sequence[np.ndarray]) -> float:
    """The point estimate: the mean over groups of each group's mean (NaN without groups)."""
    means = [float(np.mean(g)) for g in groups if len(g)]
    return float(np.mean(means)) if means else float("nan")


def two_stage(groups: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot,)`` replicates of :func:`group_means` under the two-stage resampling.

    ``groups``: one 1-D array of unit values per group (empty groups are left out). For each
    group ``s`` every slot at which a replicate drew it gets a fresh resample of its units, so
    a group drawn twice into one replicate contributes two independent resamples.
    """
    groups = [np.asarray(g, float) for g in groups if len(g)]
    n_groups = len(groups)
    if not n_groups or n_boot <= 0:
        return np.zeros(0)
    drawn = rng.integers(0, n_groups, size=(n_boot, n_groups))
    total = np.zeros(n_boot)
    for s, values in enumerate(groups):
        rows = np.nonzero(drawn == s)[0]              # one entry per slot that drew group s
        if not len(rows):
            continue
        idx = rng.integers(0, len(values), size=(len(rows), len(values)))
        np.add.at(total, rows, values[idx].mean(axis=1))
    return total / n_groups


def percentile(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``replicates`` (NaNs without any)."""
    if not len(replicates):
        return float("nan"), float("nan")
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(replicates, [a, 1.0 - a])
    return float(lo), float(hi)
