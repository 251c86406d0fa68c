"""ctgrid: Counterfactual Training (Altmeyer et al. 2025) in PyTorch, with a batched
counterfactual engine and a grid runner for HPC clusters.

The public API, imported lazily so that ``import ctgrid`` stays cheap::

    from ctgrid import DataConfig, load_dataset, ModelConfig, GeneratorConfig, make_generator
    from ctgrid import TrainingConfig, train, EvaluationConfig, evaluate_model, JobConfig, load_grid
    from ctgrid import load_results   # results directories -> one wide DataFrame
    from ctgrid import table_dataset, evaluate_pair, original_units, CTClassifier  # your own data
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "DataConfig": "ctgrid.data", "Dataset": "ctgrid.data", "load_dataset": "ctgrid.data",
    "table_dataset": "ctgrid.data",
    "Constraints": "ctgrid.constraints",
    "ModelConfig": "ctgrid.models", "build_model": "ctgrid.models",
    "GeneratorConfig": "ctgrid.generators", "make_generator": "ctgrid.generators",
    "generator_for": "ctgrid.generators", "CounterfactualBatch": "ctgrid.generators",
    "TrainingConfig": "ctgrid.training", "train": "ctgrid.training",
    "EvaluationConfig": "ctgrid.evaluation.config", "evaluate_model": "ctgrid.evaluation",
    "evaluate_pair": "ctgrid.evaluation", "PairedEvaluation": "ctgrid.evaluation",
    "ModelEvaluation": "ctgrid.evaluation", "original_units": "ctgrid.evaluation",
    "JobConfig": "ctgrid.grid.job", "load_grid": "ctgrid.grid",
    "load_results": "ctgrid.aggregate.wide",
    "CTClassifier": "ctgrid.estimator",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ctgrid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
