"""MNIST from the four standard gzip IDX files (docs/deviations.md, R23).

Pixels are scaled ``x / 255 * 2 - 1`` into [-1, 1] and flattened row-major to 784
features (``pixel_<row>_<col>``, 0-based). The training pool of ``n_train + n_val``
images (default 10000 + 1000) is drawn class-balanced from the 60000 training
images **without replacement**, seeded by ``split_seed`` -- the reference drew
with replacement, so its training set held duplicates, some shared with the
validation set (docs/deviations.md, D17). The validation rows are a stratified part of
that pool. The test set is the official 10000 test images (``n_test`` subsamples
it, stratified).
"""
from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .specs import MNIST_FILES
from .config import DataConfig
from .splits import STAGE_POOL, STAGE_TEST, Splits, carve, check_size, rng_for, stratified_pick

IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
DEFAULT_N_TRAIN, DEFAULT_N_VAL = 10000, 1000
FILES = MNIST_FILES
N_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
FEATURE_NAMES = tuple(f"pixel_{i // IMAGE_SHAPE[1]}_{i % IMAGE_SHAPE[1]}" for i in range(N_PIXELS))
_MAGIC = {3: 0x00000803, 1: 0x00000801}


def _expected(ndim: int) -> str:
    what = "N x 28 x 28 uint8 images" if ndim == 3 else "N uint8 labels 0-9"
    return f"a gzip IDX file with magic 0x{_MAGIC[ndim]:08x} holding {what}"


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int, ndim: int) -> np.ndarray:
    """Decode one IDX file; cached per process by path, mtime and size."""
    try:
        with gzip.open(path, "rb") as fh:
            buf = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: malformed data file ({type(exc).__name__}: {exc}); "
                        f"expected {_expected(ndim)}") from None
    header = 4 + 4 * ndim
    if len(buf) < header or int.from_bytes(buf[:4], "big") != _MAGIC[ndim]:
        raise DataError(f"{path}: malformed data file (bad IDX header); expected {_expected(ndim)}")
    dims = tuple(int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(buf) != header + int(np.prod(dims)) or (ndim == 3 and dims[1:] != IMAGE_SHAPE):
        raise DataError(f"{path}: malformed data file (dimensions {dims} do not match its "
                        f"{len(buf) - header} data bytes or 28x28); expected {_expected(ndim)}")
    data = np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)
    if ndim == 1 and data.size and int(data.max()) >= N_CLASSES:
        raise DataError(f"{path}: malformed data file (label {int(data.max())}); "
                        f"expected {_expected(ndim)}")
    data.flags.writeable = False
    return data


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read-only uint8 array from the IDX file ``path`` (``DataError`` if missing/malformed)."""
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"{path}: data file not found; expected {_expected(ndim)}") from None
    return _read_cached(str(path), st.st_mtime_ns, st.st_size, ndim)


def _read_pair(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(data_dir / FILES[f"{split}_images"], 3)
    labels_path = data_dir / FILES[f"{split}_labels"]
    labels = read_idx(labels_path, 1)
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: malformed data file ({len(labels)} labels for "
                        f"{len(images)} images); expected {_expected(1)}")
    return images, labels.astype(np.int64)


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(n, 28, 28)`` -> float32 ``(n, 784)`` in [-1, 1]."""
    return (images.reshape(len(images), N_PIXELS).astype(np.float32) / 255.0) * 2.0 - 1.0


def _pool_quota(n_pool: int, labels: np.ndarray) -> np.ndarray:
    """Images per class for a balanced pool of ``n_pool``; ConfigError if a class has too few."""
    quota = np.full(N_CLASSES, n_pool // N_CLASSES)
    quota[: n_pool % N_CLASSES] += 1
    available = np.bincount(labels, minlength=N_CLASSES)
    if (quota > available).any():
        limit = int(available.min()) * N_CLASSES
        raise ConfigError(f"data.n_train: n_train + n_val = {n_pool}; allowed: at most {limit} "
                          f"for dataset 'mnist' (class-balanced draw without replacement)")
    return quota


def load_mnist(config: DataConfig, data_dir: Path) -> Splits:
    """Balanced training pool without replacement, stratified validation, official test set."""
    data_dir = Path(data_dir)
    train_images, train_labels = _read_pair(data_dir, "train")
    test_images, test_labels = _read_pair(data_dir, "test")
    n_train = DEFAULT_N_TRAIN if config.n_train is None else config.n_train
    n_val = DEFAULT_N_VAL if config.n_val is None else config.n_val
    quota = _pool_quota(n_train + n_val, train_labels)
    pool = stratified_pick(train_labels, int(quota.sum()), rng_for(config.split_seed, STAGE_POOL),
                           per_class=quota)
    train, val = carve(train_labels, pool, n_val=n_val, n_train=None,
                       seed=config.split_seed, name="mnist")
    test = np.arange(len(test_labels))
    if config.n_test is not None:
        check_size("n_test", config.n_test, len(test), "mnist")
        test = stratified_pick(test_labels, config.n_test, rng_for(config.split_seed, STAGE_TEST))
    meta = {"source": str(data_dir / "mnist"),
            "index": {"train": train, "val": val, "test": test}}
    return Splits(scale(train_images[train]), train_labels[train],
                  scale(train_images[val]), train_labels[val],
                  scale(test_images[test]), test_labels[test],
                  FEATURE_NAMES, image_shape=IMAGE_SHAPE, meta=meta)
