"""A trained model's directory: the one layout that a grid job and ``ctgrid train --out`` write,
and the one reader every command uses.

Files (names from :class:`~ctgrid.store.JobPaths`): ``config.yaml`` — the job's canonical
:class:`~ctgrid.grid.job.JobConfig` with all five groups, under a comment naming the job id
and its training seed; ``model.pt`` — ``{"state_dict", "job_id", "config"}``;
``history.parquet`` — one row per epoch; ``done.json`` — written last, with each file's size and
SHA-256 (:mod:`ctgrid.integrity`). A grid job adds
``evaluation.parquet``, ``performance.parquet`` and ``log.txt``. Directories written by
``ctgrid train`` before 0.2 (four config groups, a bare or differently wrapped state dict)
still read.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _atomic
from .errors import DataError
from .store import JobPaths, write_config, write_job_parquet

__all__ = ["build_trained", "load_trained", "read_model_dir", "write_config", "write_model"]

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .data.dataset import Dataset
    from .grid.job import JobConfig
    from .training.loop import TrainResult


def write_model(paths: JobPaths, job: JobConfig, result: TrainResult,
                record: dict[str, Any]) -> list[_atomic.Written]:
    """``model.pt`` and ``history.parquet`` of a finished training (``TrainResult``);
    ``record``: the provenance stored with them (:mod:`ctgrid.provenance`). The weights are
    written as CPU tensors whatever device holds the model, so ``model.pt`` loads anywhere."""
    from ._torch import cpu_state
    model = _atomic.save_torch(paths.model, {"state_dict": cpu_state(result.model.state_dict()),
                                             "job_id": paths.job_id,
                                             "config": job.canonical().to_dict(), "provenance": record})
    return [model, write_job_parquet(paths.history, result.history, paths.job_id, record)]


def read_model_dir(model_dir: str | Path) -> tuple[JobConfig, dict]:
    """``(JobConfig, state dict)`` of a model directory; :class:`DataError` for bad files."""
    import torch
    import yaml

    from .grid.job import JobConfig
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(f"MODEL_DIR {str(model_dir)!r}: not a directory")
    cfg_path, model_path = model_dir / "config.yaml", model_dir / "model.pt"
    for path in (cfg_path, model_path):
        if not path.is_file():
            raise DataError(f"{path}: not found (expected a directory written by 'ctgrid train' "
                            "or a grid job)")
    try:
        mapping = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{cfg_path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{cfg_path}: expected a mapping of config groups, got {type(mapping).__name__}")
    job = JobConfig.from_dict(mapping)
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a data error
        raise DataError(f"{model_path}: not a readable torch file ({exc.__class__.__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"{model_path}: expected a state dict, got {type(state).__name__}")
    return job, state


def build_trained(job: JobConfig, state: dict, dataset: Dataset, where: str | Path,
                  device: torch.device | str | None = None) -> nn.Module:
    """The model of ``job`` for ``dataset`` with weights ``state`` (CPU tensors, as read), in
    eval mode, on ``device`` (default: the CPU)."""
    from .models import build_model
    model = build_model(job.model, dataset.n_features, dataset.n_classes, image_shape=dataset.image_shape)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"{where}: does not fit the model in config.yaml ({first})") from None
    return (model if device is None else model.to(device)).eval()


def load_trained(model_dir: str | Path, dataset: Dataset | None = None, *,
                 data_dir: str | Path | None = None,
                 device: torch.device | str | None = None) -> tuple[JobConfig, nn.Module]:
    """``(JobConfig, model)`` of a model directory (its dataset loaded unless given), the model
    on ``device`` (default: the CPU; the file's tensors are read onto the CPU first)."""
    from .data import load_dataset
    job, state = read_model_dir(model_dir)
    data = dataset if dataset is not None else load_dataset(job.data, data_dir)
    return job, build_trained(job, state, data, Path(model_dir) / "model.pt", device)
