"""``ctgrid.train`` with a ``device``: the public entry point of training (docs/gpu.md).

The epoch loop (:mod:`.loop`) computes where its data are. This wrapper puts the data where
training runs (:func:`ctgrid.device.training_device`: the device itself once the training loop is
device-aware, until then the CPU), trains, and hands back the model on ``device``; initial
weights, batch orders and CE draws come from CPU generators on every device, so a model starts
and sees its batches the same way wherever it trains. ``device="cpu"`` (the default) is exactly
:func:`ctgrid.training.loop.train`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .._torch import model_device
from ..data import Dataset
from ..generators import GeneratorConfig
from ..models.custom import ModelSpec
from . import loop
from .config import TrainingConfig
from .search import SearchWrapper


def train(dataset: Dataset, model_config: ModelSpec, generator_config: GeneratorConfig,
          config: TrainingConfig, *, checkpoint_path: Path | None = None,
          cache_dir: Path | None = None,
          progress: Callable[[dict], None] | None = None,
          stop: Callable[[], bool] | None = None,
          wrap_search: SearchWrapper | None = None,
          device: torch.device | str = "cpu") -> loop.TrainResult:
    """:func:`ctgrid.training.loop.train` (all arguments as there) on ``device`` (``"cpu"``,
    ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``): the result's ``model`` is on
    ``device``, its checkpoints hold CPU tensors. A user's ``nn.Module`` is copied, as always."""
    from ..device import configure, resolve_device, training_device
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    configure(dev)
    where = training_device(dev)
    if isinstance(model_config, nn.Module) and model_device(model_config, where) != where:
        model_config = copy.deepcopy(model_config).to(where)
    result = loop.train(dataset.to(where), model_config, generator_config, config,
                        checkpoint_path=checkpoint_path, cache_dir=cache_dir, progress=progress,
                        stop=stop, wrap_search=wrap_search)
    result.model.to(dev)
    return result
