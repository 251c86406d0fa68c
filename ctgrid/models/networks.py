"""The networks: MLP, linear, LeNet-style CNN, with Glorot-uniform initialisation."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig, check_fits_data

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


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


def build_model(config: ModelConfig, n_features: int, n_classes: int, *,
                image_shape: tuple[int, int] | None = None,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> nn.Module:
    """Build a model with Glorot-uniform weights drawn from ``generator`` (seed 0 if None).

    Layers are constructed under ``torch.random.fork_rng`` so the global RNG is never
    consumed (their default initialisation is overwritten anyway). The weights are drawn on
    the CPU (``generator`` is a CPU generator) and the model is then moved to ``device``
    (default: it stays on the CPU), so every device starts from the same weights.
    """
    model = _initialised(config, n_features, n_classes, image_shape, generator)
    return model if device is None else model.to(device)


def _initialised(config: ModelConfig, n_features: int, n_classes: int,
                 image_shape: tuple[int, int] | None, generator: torch.Generator | None) -> nn.Module:
    check_fits_data(config, image_shape is not None)
    if config.kind == "module":   # a user's factory (ctgrid.models.custom): its own initialisation
        from .custom import build_custom
        return build_custom(config, n_features, n_classes, generator)
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
    widths = (n_features, *config.widths)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(widths[-1], n_classes))
    return nn.Sequential(*layers)
