"""Classifiers trained by ctgrid: MLP (paper default 1x32 ReLU), linear, LeNet-style CNN, or
any torch module of the user's (:mod:`.custom`: ``kind: module`` or an ``nn.Module`` / factory).

All return logits of shape ``(n, K)`` (K = 2 for binary data). Hidden layers are
distinct modules (the reference tied weights for nlayers >= 3; docs/deviations.md, D16).
Weights use Glorot-uniform initialisation with zero biases, as Flux's ``Dense``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import ACTIVATION_NAMES, ModelConfig, check_fits_data

if TYPE_CHECKING:
    from .networks import ACTIVATIONS, CNN, build_model

__all__ = ["ACTIVATIONS", "ACTIVATION_NAMES", "CNN", "ModelConfig", "build_model", "check_fits_data"]


def __getattr__(name: str) -> Any:   # the torch half on first use
    if name in ("ACTIVATIONS", "CNN", "build_model"):
        return getattr(importlib.import_module(".networks", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
