"""Small torch helpers shared by every layer: content digests, a model's device, eval mode."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn


def tensor_digest(*tensors: torch.Tensor) -> Any:
    """A ``hashlib.sha256`` object fed the raw bytes of ``tensors`` in order (detached, on
    the CPU, contiguous): the content identity of data, cache keys and checkpoints.
    Callers may ``update`` it with more bytes before taking the digest."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of ``model``'s first parameter (``default`` for a model without any)."""
    p = next(iter(model.parameters()), None)
    return torch.device(default) if p is None else p.device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; restore every submodule's own flag after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def cpu_state(state: Any) -> Any:
    """``state`` (a state dict, an optimiser's, or any nesting of dicts, lists and tensors) with
    every tensor on the CPU, for files that must load on a machine without a GPU. A state that is
    on the CPU already is returned as it is (the very object: the file's bytes stay those of
    earlier releases); a copied dict keeps a state dict's ``_metadata``."""
    if not _off_cpu(state):
        return state
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        out = type(state)((k, cpu_state(v)) for k, v in state.items())
        if hasattr(state, "_metadata"):
            out._metadata = state._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_state(v) for v in state)
    return state


def _off_cpu(state: Any) -> bool:
    if isinstance(state, torch.Tensor):
        return state.device.type != "cpu"
    if isinstance(state, dict):
        return any(_off_cpu(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_off_cpu(v) for v in state)
    return False
