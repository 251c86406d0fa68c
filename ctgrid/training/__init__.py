"""Counterfactual Training: objectives, the epoch loop, checkpoints (docs/deviations.md, M2, M3)."""
from .config import OBJECTIVE_TERMS, OBJECTIVES, TrainingConfig
from .loop import HISTORY_COLUMNS, TrainResult, train, validate

__all__ = ["OBJECTIVES", "OBJECTIVE_TERMS", "TrainingConfig", "HISTORY_COLUMNS", "TrainResult",
           "train", "validate"]
