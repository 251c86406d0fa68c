"""The paper's four synthetic 2-D datasets, generated in-package (docs/deviations.md, R21, D18).

The geometry and parameters follow the MLJBase generators the reference used
(moons: noise 0.1, second moon shifted by (1.0, 0.3); circles: noise 0.15,
factor 0.01; blobs: two centres drawn from U([-10, 10]^2), cluster_std 0.5 for
``lin_sep`` and 2.0 for ``over``). Differences from the reference, on purpose:

* only the points needed are generated (``n_train + n_val + n_test``, default
  3000 + 600 + 900), not 100,000 of which 4,500 were kept;
* the draws come from ``numpy.random.default_rng(data_seed)`` (the reference used
  Julia's ``Xoshiro(42)``), so the points differ but the distribution is the same;
* every split is stratified, so all three splits are exactly balanced.

Features are not standardised (neither were the reference's).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .config import DataConfig
from .splits import STAGE_TEST, Splits, carve, rest, rng_for, stratified_pick

SYNTHETIC = ("lin_sep", "over", "circles", "moons")
DEFAULT_N_TRAIN, DEFAULT_N_VAL, DEFAULT_N_TEST = 3000, 600, 900
FEATURE_NAMES = ("x0", "x1")


def _halves(n: int) -> tuple[int, int]:
    """Class sizes: the first ``n // 2`` points are class 0, the rest class 1 (as MLJBase)."""
    return n // 2, n - n // 2


def make_moons(n: int, rng: np.random.Generator, noise: float = 0.1,
               xshift: float = 1.0, yshift: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles: angle ~ U(0, pi); class 1 mirrored, moved by (xshift, yshift)."""
    n0, n1 = _halves(n)
    theta = rng.uniform(0.0, math.pi, n)
    theta[n0:] *= -1.0
    X = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    X[n0:] += (xshift, yshift)
    X += noise * rng.standard_normal((n, 2))
    y = np.repeat([0, 1], [n0, n1])
    return X, y


def make_circles(n: int, rng: np.random.Generator, noise: float = 0.15,
                 factor: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Concentric circles: class 0 on a circle of radius ``factor``, class 1 on the unit circle."""
    n0, n1 = _halves(n)
    theta = rng.uniform(0.0, 2.0 * math.pi, n)
    X = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    X[:n0] *= factor
    X += noise * rng.standard_normal((n, 2))
    y = np.repeat([0, 1], [n0, n1])
    return X, y


def make_blobs(n: int, rng: np.random.Generator, cluster_std: float,
               box: tuple[float, float] = (-10.0, 10.0)) -> tuple[np.ndarray, np.ndarray]:
    """Two isotropic Gaussian blobs whose centres are drawn uniformly from ``box``^2."""
    centers = rng.uniform(box[0], box[1], size=(2, 2))
    y = np.repeat([0, 1], _halves(n))
    X = centers[y] + cluster_std * rng.standard_normal((n, 2))
    return X, y


GENERATORS: dict[str, Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "lin_sep": lambda n, rng: make_blobs(n, rng, cluster_std=0.5),
    "over": lambda n, rng: make_blobs(n, rng, cluster_std=2.0),
    "circles": lambda n, rng: make_circles(n, rng, noise=0.15, factor=0.01),
    "moons": lambda n, rng: make_moons(n, rng, noise=0.1),
}


def generate(name: str, n: int, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` shuffled points of dataset ``name`` (float64 ``(n, 2)``, int64 labels)."""
    rng = np.random.default_rng(data_seed)
    X, y = GENERATORS[name](n, rng)
    order = rng.permutation(n)
    return X[order], y[order].astype(np.int64)


def load_synthetic(config: DataConfig) -> Splits:
    """Generate ``n_train + n_val + n_test`` points and split them (stratified, ``split_seed``)."""
    n_train = DEFAULT_N_TRAIN if config.n_train is None else config.n_train
    n_val = DEFAULT_N_VAL if config.n_val is None else config.n_val
    n_test = DEFAULT_N_TEST if config.n_test is None else config.n_test
    n = n_train + n_val + n_test
    X, y = generate(config.name, n, config.data_seed)
    test = stratified_pick(y, n_test, rng_for(config.split_seed, STAGE_TEST))
    train, val = carve(y, rest(n, test), n_val=n_val, n_train=None,
                       seed=config.split_seed, name=config.name)
    f32 = np.float32
    return Splits(X[train].astype(f32), y[train], X[val].astype(f32), y[val],
                  X[test].astype(f32), y[test], FEATURE_NAMES,
                  meta={"source": "generated", "data_seed": config.data_seed,
                        "index": {"train": train, "val": val, "test": test}})
