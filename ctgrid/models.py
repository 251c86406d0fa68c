"""Classifiers trained by ctgrid: MLP (paper default 1x32 ReLU), linear, LeNet-style CNN.

All return logits of shape ``(n, K)`` (K = 2 for binary data). Hidden layers are
distinct modules (the reference tied weights for nlayers >= 3; docs/deviations.md, D16).
Weights use Glorot-uniform initialisation with zero biases, as Flux's ``Dense``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._validate import check, param
from .errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the classifier."""

    kind: str = param("mlp", choices=("mlp", "linear", "cnn"))
    nhidden: int = param(32, ge=1)
    nlayers: int = param(1, ge=1)
    activation: str = param("relu", choices=tuple(ACTIVATIONS))

    def __post_init__(self) -> None:
        check(self, "model")


class CNN(nn.Module):
    """LeNet-5 as the reference's MNIST CNN: input flattened ``(n, h*w)``."""

    def __init__(self, image_shape: tuple[int, int], n_classes: int, activation: str = "relu"):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.image_shape = image_shape
        h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), act(), nn.MaxPool2d(2))
        flat = 16 * (h // 4) * (w // 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 120), act(),
                                  nn.Linear(120, 84), act(), nn.Linear(84, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, *self.image_shape)))


def check_fits_data(config: ModelConfig, image_data: bool, data_name: str = "") -> None:
    """The one data-dependent rule of a model config: a CNN needs image data (exit 2 otherwise)."""
    if config.kind == "cnn" and not image_data:
        where = f", not {data_name!r}" if data_name else ""
        raise ConfigError(f"model.kind: got 'cnn'; allowed only for image data (mnist){where}")


def build_model(config: ModelConfig, n_features: int, n_classes: int, *,
                image_shape: tuple[int, int] | None = None,
                generator: torch.Generator | None = None) -> nn.Module:
    """Build a model with Glorot-uniform weights drawn from ``generator`` (seed 0 if None).

    Layers are constructed under ``torch.random.fork_rng`` so the global RNG is never
    consumed (their default initialisation is overwritten anyway).
    """
    check_fits_data(config, image_shape is not None)
    with torch.random.fork_rng(devices=[]):
        model = _layers(config, n_features, n_classes, image_shape)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * (m.weight[0].numel() // m.weight.shape[1])
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            with torch.no_grad():
                m.weight.copy_((torch.rand(m.weight.shape, generator=gen) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def _layers(config: ModelConfig, n_features: int, n_classes: int,
            image_shape: tuple[int, int] | None) -> nn.Module:
    if config.kind == "linear":
        return nn.Sequential(nn.Linear(n_features, n_classes))
    if config.kind == "cnn":
        assert image_shape is not None
        return CNN(image_shape, n_classes, config.activation)
    act = ACTIVATIONS[config.activation]
    layers: list[nn.Module] = [nn.Linear(n_features, config.nhidden), act()]
    for _ in range(config.nlayers - 1):
        layers += [nn.Linear(config.nhidden, config.nhidden), act()]
    layers.append(nn.Linear(config.nhidden, n_classes))
    return nn.Sequential(*layers)
