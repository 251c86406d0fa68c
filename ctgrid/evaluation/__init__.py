"""Evaluation of trained models: counterfactual measures, IP* (MMD), predictive and
robustness metrics, and consistency under retraining (docs/deviations.md, M4).

What users call: :func:`evaluate_model` (the whole test-time protocol of one model,
configured by :class:`EvaluationConfig`), :func:`evaluate_pair` (a baseline and a CT model on
the same factuals, with their key results), :func:`original_units` (counterfactuals in the
data's own units and categories) and the measures themselves. The protocol's
parts (the paired test-time grid, the frames) live in :mod:`.grid` and :mod:`.evaluate`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .config import EvaluationConfig
    from .consistency import invalidation_rate
    from .evaluate import ModelEvaluation, evaluate_model, original_units
    from .metrics import (cost, counterfactual_metrics, energy_differential, implausibility, mean_l1_distance,
        share_resettable, share_unchanged, validity, validity_strict)
    from .mmd import MMDResult, mmd2_unbiased, mmd_test
    from .paired import PairedEvaluation, evaluate_pair
    from .predictive import (accuracy, confusion_matrix, f1_per_class, ig_sensitivity, integrated_gradients, macro_f1,
        predict_logits)
    from .robustness import fgsm, pgd, robust_accuracy

_EXPORTS = {
    "EvaluationConfig": ".config",
    "invalidation_rate": ".consistency",
    "ModelEvaluation": ".evaluate",
    "evaluate_model": ".evaluate",
    "original_units": ".evaluate",
    "PairedEvaluation": ".paired",
    "evaluate_pair": ".paired",
    "cost": ".metrics",
    "counterfactual_metrics": ".metrics",
    "energy_differential": ".metrics",
    "implausibility": ".metrics",
    "mean_l1_distance": ".metrics",
    "share_resettable": ".metrics",
    "share_unchanged": ".metrics",
    "validity": ".metrics",
    "validity_strict": ".metrics",
    "MMDResult": ".mmd",
    "mmd2_unbiased": ".mmd",
    "mmd_test": ".mmd",
    "accuracy": ".predictive",
    "confusion_matrix": ".predictive",
    "f1_per_class": ".predictive",
    "ig_sensitivity": ".predictive",
    "integrated_gradients": ".predictive",
    "macro_f1": ".predictive",
    "predict_logits": ".predictive",
    "fgsm": ".robustness",
    "pgd": ".robustness",
    "robust_accuracy": ".robustness",
}
__all__ = ["EvaluationConfig", "MMDResult", "ModelEvaluation", "PairedEvaluation", "accuracy", "confusion_matrix",
           "cost", "counterfactual_metrics", "energy_differential", "evaluate_model", "evaluate_pair",
           "f1_per_class", "fgsm", "original_units",
           "ig_sensitivity", "implausibility", "integrated_gradients", "invalidation_rate", "macro_f1",
           "mean_l1_distance", "mmd2_unbiased", "mmd_test", "pgd", "predict_logits", "robust_accuracy",
           "share_resettable", "share_unchanged", "validity", "validity_strict"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
