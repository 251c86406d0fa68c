"""User-defined classifiers for the tests of ``model.kind: module`` (importable as
``usermodels:...`` because pytest puts ``tests/`` on ``sys.path``)."""
from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """A residual block with LayerNorm and dropout (dropout draws from torch's global RNG)."""

    def __init__(self, n_features: int, n_classes: int, width: int = 16, dropout: float = 0.1):
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout))
        self.out = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.block(h))


def residual(n_features: int, n_classes: int) -> nn.Module:
    return ResidualMLP(n_features, n_classes)


def wrong_shape(n_features: int, n_classes: int) -> nn.Module:
    return nn.Linear(n_features, n_classes + 1)


def not_a_module(n_features: int, n_classes: int) -> object:
    return "a string"
