"""Any torch classifier: a user's ``nn.Module``, a factory ``(n_features, n_classes) -> nn.Module``
or ``ModelConfig(kind="module", factory="pkg.mod:fn")`` (a factory a grid can name).

Such a model gets everything a built-in one gets — the CT objective, the CE phase,
checkpoints that resume bit for bit, the evaluation — with three differences: its
initialisation is its own (a factory is called under torch's global RNG seeded from the job's
``init`` stream, so it is reproducible; a module instance is copied as it is), it trains alone
(a pack batches only the built-in Linear/activation stacks bit-identically), and every epoch runs
under the global RNG seeded from ``(seed, "module", epoch)`` so dropout and similar draws replay
exactly on resume. A checkpoint's fingerprint names the module's class, its parameter shapes
and a digest of its initial weights.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable, Iterator, Union

import torch
from torch import nn

from .._torch import eval_mode, model_device, tensor_digest
from ..errors import ConfigError
from .config import ModelConfig

#: what ``train(...)`` accepts as the model
ModelSpec = Union[ModelConfig, nn.Module, Callable[[int, int], nn.Module]]


def is_custom(model: Any) -> bool:
    """Whether ``model`` is a user's classifier (it trains alone)."""
    return not isinstance(model, ModelConfig) or model.kind == "module"


def load_factory(path: str) -> Callable[[int, int], nn.Module]:
    """The function ``package.module:function`` names (ConfigError if it cannot be imported)."""
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model.factory: cannot import {path!r} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not callable(fn):
        raise ConfigError(f"model.factory: {path!r} is not callable")
    return fn


def build_custom(model: ModelSpec, n_features: int, n_classes: int,
                 generator: torch.Generator | None = None) -> nn.Module:
    """The user's module for this data: a copy of an instance, or the factory's module built
    under the global RNG seeded from ``generator`` (restored afterwards); then checked."""
    if isinstance(model, nn.Module):
        import copy
        return check_module(copy.deepcopy(model), n_features, n_classes)
    factory = load_factory(model.factory or "") if isinstance(model, ModelConfig) else model
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory(n_features, n_classes)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model: the factory returned a {type(module).__name__}, not a torch nn.Module")
    return check_module(module, n_features, n_classes)


def check_module(module: nn.Module, n_features: int, n_classes: int) -> nn.Module:
    """``module`` if it maps a float batch ``(2, n_features)`` to finite-shaped logits
    ``(2, n_classes)`` on its own device; ConfigError saying what it did instead."""
    what = type(module).__name__
    if not any(True for _ in module.parameters()):
        raise ConfigError(f"model: {what} has no parameters to train")
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), eval_mode(module):
            out = module(torch.zeros(2, n_features, device=model_device(module)))
    except Exception as exc:  # noqa: BLE001 - any failure of a user's forward is bad input
        raise ConfigError(f"model: {what} fails on a batch of shape (2, {n_features}) "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model: {what} maps (2, {n_features}) to {shape}; expected logits (2, {n_classes})")
    return module


def describe(model: ModelSpec, module: nn.Module) -> dict[str, Any]:
    """What a checkpoint of a user's model must match: its source, class, parameter shapes
    and a digest of its initial weights (plain values only)."""
    source = (model.factory if isinstance(model, ModelConfig) else
              "instance" if isinstance(model, nn.Module) else getattr(model, "__qualname__", "factory"))
    state = module.state_dict()
    return {"custom": str(source), "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "shapes": [[k, list(v.shape)] for k, v in state.items()],
            "init_sha256": tensor_digest(*state.values()).hexdigest()[:32]}


@contextlib.contextmanager
def module_rng(seed: int | None) -> Iterator[None]:
    """The global RNG seeded with ``seed`` for the block and restored after (``None``: no change)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
