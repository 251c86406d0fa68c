"""Seeded, stratified row selection shared by every loader.

Every draw comes from its own ``numpy.random.Generator`` seeded by
``(seed, stage)``, so e.g. the validation split does not change when the test
set is subsampled. Selections are stratified by label with the
largest-remainder rule, so class shares are kept as exactly as integers allow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

#: share of a tabular dataset's rows in its test split (``n - round(0.8 n)`` rows)
TEST_SHARE = 0.2

# Independent random streams per stage of the pipeline.
STAGE_BALANCE, STAGE_TEST, STAGE_VAL, STAGE_TRAIN, STAGE_ORDER, STAGE_POOL = range(1, 7)


def rng_for(seed: int, stage: int) -> np.random.Generator:
    """The generator of one pipeline stage for ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stage)]))


def round_half_up(x: float) -> int:
    """Round like Julia's ``round`` on positive numbers (0.5 goes up)."""
    return int(np.floor(x + 0.5))


def allocate(counts: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` over classes in proportion to ``counts`` (largest remainder; ties: lower class)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if not 0 <= k <= total:
        raise ValueError(f"cannot take {k} of {total} rows")
    if total == 0:
        return np.zeros_like(counts)
    exact = counts * (k / total)
    share = np.minimum(np.floor(exact).astype(np.int64), counts)
    order = np.argsort(-(exact - share), kind="stable")
    for c in order[: k - int(share.sum())]:
        share[c] += 1
    return share


def stratified_pick(y: np.ndarray, k: int, rng: np.random.Generator,
                    per_class: np.ndarray | None = None) -> np.ndarray:
    """Sorted positions of ``k`` rows drawn without replacement, stratified by ``y``.

    ``per_class`` (one count per label ``0..K-1``) overrides the proportional allocation.
    """
    y = np.asarray(y)
    labels = np.arange(int(y.max()) + 1 if y.size else 0)
    members = [np.flatnonzero(y == c) for c in labels]
    counts = np.array([len(m) for m in members], dtype=np.int64)
    share = allocate(counts, k) if per_class is None else np.asarray(per_class, dtype=np.int64)
    picked = [rng.choice(m, size=int(s), replace=False) for m, s in zip(members, share)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def undersample(y: np.ndarray, seed: int) -> np.ndarray:
    """Sorted positions of a class-balanced subset: every class cut to the rarest one's size."""
    counts = np.bincount(y)
    rng = rng_for(seed, STAGE_BALANCE)
    return stratified_pick(y, int(counts.min()) * len(counts), rng,
                           per_class=np.full(len(counts), counts.min()))


def rest(n: int, taken: np.ndarray) -> np.ndarray:
    """Positions ``0..n-1`` not in ``taken`` (sorted)."""
    mask = np.ones(n, dtype=bool)
    mask[taken] = False
    return np.flatnonzero(mask)


def check_size(key: str, value: int, available: int, name: str) -> None:
    """ConfigError when a requested split size exceeds the rows available."""
    if value > available:
        raise ConfigError(f"data.{key}: got {value}; allowed: at most {available} "
                          f"for dataset {name!r}")


@dataclass(frozen=True)
class Splits:
    """Numpy arrays of the three splits plus what the Dataset needs besides them."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    categorical_groups: tuple[tuple[int, ...], ...] = ()
    image_shape: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def carve(y: np.ndarray, pool: np.ndarray, *, n_val: int, n_train: int | None,
          seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions ``pool`` into (train, val): val stratified, train maybe subsampled.

    The training rows come back in a seeded random order (the reference fed
    them in file order; docs/deviations.md, D19); validation rows stay sorted.
    """
    check_size("n_val", n_val, max(0, len(pool) - 1), name)
    val_pos = stratified_pick(y[pool], n_val, rng_for(seed, STAGE_VAL))
    train_pos = rest(len(pool), val_pos)
    if n_train is not None:
        check_size("n_train", n_train, len(train_pos), name)
        keep = stratified_pick(y[pool][train_pos], n_train, rng_for(seed, STAGE_TRAIN))
        train_pos = train_pos[keep]
    train_pos = rng_for(seed, STAGE_ORDER).permutation(train_pos)
    return pool[train_pos], pool[val_pos]


def split_rows(strata: np.ndarray, config: Any, *, n_val: int, test_last: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, test)`` row positions of a tabular dataset (docs/datasets.md): the test
    part is ``n - round(0.8 n)`` rows (the last ones with ``test_last``, else a draw stratified
    by ``strata`` seeded by ``config.split_seed``), subsampled to ``config.n_test``; then
    :func:`carve` takes ``config.n_val`` (default ``n_val``) validation rows and the training
    rows out of the rest. ``strata`` is the label (all zeros: unstratified draws)."""
    n = len(strata)
    n_test_all = n - round_half_up((1 - TEST_SHARE) * n)
    test_rng = rng_for(config.split_seed, STAGE_TEST)
    test = (np.arange(n - n_test_all, n) if test_last
            else stratified_pick(strata, n_test_all, test_rng))
    pool = rest(n, test)
    if config.n_test is not None:
        check_size("n_test", config.n_test, len(test), config.label)
        test = test[stratified_pick(strata[test], config.n_test, test_rng)]
    n_val = n_val if config.n_val is None else config.n_val
    train, val = carve(strata, pool, n_val=n_val, n_train=config.n_train,
                       seed=config.split_seed, name=config.label)
    return train, val, test
