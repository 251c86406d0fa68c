"""Per-epoch training checkpoints (docs/deviations.md, M3).

A checkpoint holds the model and optimiser state, the number of finished epochs,
the history rows and a fingerprint of what was being trained. Every random draw
of epoch ``e`` comes from generators derived from ``(seed, purpose, e)``
(:mod:`ctgrid.training.loop`), so no generator state has to survive an epoch:
a resumed run replays exactly the draws of an uninterrupted one. The RNG seeds
used are still recorded (``rng``) for inspection.

Written atomically after each epoch; a run whose fingerprint differs from the
checkpoint's is refused rather than silently continued (the reference let an old
``config.toml`` override a changed grid; docs/deviations.md, D20).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import save_torch
from .._torch import cpu_state, tensor_digest
from .._validate import to_dict
from ..data import Dataset
from ..errors import ConfigError

VERSION = 1


def fingerprint(dataset: Dataset, *configs: Any) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the configs, the training data and constraints."""
    cons = dataset.constraints
    h = tensor_digest(dataset.X_train, dataset.y_train, cons.lower, cons.upper)
    h.update("\x1f".join(cons.mutability).encode())
    return {"data": dataset.name, "train_sha256": h.hexdigest()[:32],
            "configs": [to_dict(c) for c in configs]}


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: dict[str, Any], epoch: int,
                    history: list[dict[str, Any]], fp: dict[str, Any], rng: dict[str, int]) -> None:
    """Atomically write the state after ``epoch`` finished epochs (``optimizer``: its state dict),
    with CPU tensors whatever device trained (:func:`load_checkpoint` maps to the CPU)."""
    save_torch(path, {"version": VERSION, "epoch": epoch, "model": cpu_state(model.state_dict()),
                      "optimizer": cpu_state(optimizer), "history": history,
                      "fingerprint": fp, "rng": rng})


def load_checkpoint(path: Path | None, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one that belongs to this run.

    Unreadable files are ignored with a warning (the run starts afresh and,
    being deterministic, reaches the same result); a checkpoint of a different
    configuration raises :class:`ConfigError`.
    """
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means "start afresh"
        warnings.warn(f"ignoring unreadable checkpoint {path}: {exc}", RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        warnings.warn(f"ignoring checkpoint {path} of an unknown format", RuntimeWarning, stacklevel=3)
        return None
    if state["fingerprint"] != fp:
        raise ConfigError(f"checkpoint {path} belongs to a different configuration or training data; "
                          f"remove it or choose another output location")
    return state
