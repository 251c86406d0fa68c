"""Counterfactual Training: objectives, the epoch loop, checkpoints (docs/deviations.md, M2, M3)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .config import OBJECTIVES, OBJECTIVE_TERMS, TrainingConfig
    from .loop import HISTORY_COLUMNS, TrainResult, validate
    from .ondevice import train

_EXPORTS = {
    "OBJECTIVES": ".config",
    "OBJECTIVE_TERMS": ".config",
    "TrainingConfig": ".config",
    "HISTORY_COLUMNS": ".loop",
    "TrainResult": ".loop",
    "train": ".ondevice",
    "validate": ".loop",
}
__all__ = ["HISTORY_COLUMNS", "OBJECTIVES", "OBJECTIVE_TERMS", "TrainResult", "TrainingConfig", "train",
           "validate"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
