"""Shared test set-up: one torch thread per test process, and the shared data directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data`` beside the repository root (or ``CTGRID_DATA``)."""
    path = Path(os.environ.get("CTGRID_DATA", SHARED_DATA))
    if not path.is_dir():
        pytest.fail(f"real data not found at {path}: tests need ../shared/data or CTGRID_DATA")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where torch sees a CUDA device (CI has none), or on the CPU
    with ``CTGRID_GPU_TESTS_DEVICE=cpu`` (a check of the tests themselves: tests/test_gpu.py)."""
    if torch.cuda.is_available() or os.environ.get("CTGRID_GPU_TESTS_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (benchmarks/gpu_check.sh runs these on one)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
