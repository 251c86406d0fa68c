"""Evaluation of trained models: counterfactual measures, IP* (MMD), predictive and
robustness metrics, and consistency under retraining (SPEC §1.4)."""
from .consistency import invalidation_rate
from .metrics import (cost, counterfactual_metrics, energy_differential, implausibility,
                      mean_l1_distance, share_resettable, share_unchanged, target_class_samples,
                      validity, validity_strict)
from .mmd import MMDResult, kernel_matmul, mmd2_unbiased, mmd_by_group, mmd_test
from .predictive import (accuracy, confusion_matrix, eval_mode, f1_per_class, ig_sensitivity,
                         integrated_gradients, macro_f1, predict_logits)
from .robustness import fgsm, pgd, robust_accuracy

__all__ = [
    "MMDResult", "accuracy", "confusion_matrix", "cost", "counterfactual_metrics",
    "energy_differential", "eval_mode", "f1_per_class", "fgsm", "ig_sensitivity",
    "implausibility", "integrated_gradients", "invalidation_rate", "kernel_matmul",
    "macro_f1", "mean_l1_distance", "mmd2_unbiased", "mmd_by_group", "mmd_test", "pgd",
    "predict_logits", "robust_accuracy", "share_resettable", "share_unchanged",
    "target_class_samples", "validity", "validity_strict",
]

# Orchestration: the paired test-time grid and the per-model evaluation frames.
from .evaluate import (CE_METRICS, EVALUATION_COLUMNS, PERFORMANCE_COLUMNS,  # noqa: E402
                       counterfactual_frame, evaluate_model, evaluation_constraints,
                       performance_frame)
from .grid import EvaluationGrid, build_grid, search_grid  # noqa: E402

__all__ += [
    "CE_METRICS", "EVALUATION_COLUMNS", "EvaluationGrid", "PERFORMANCE_COLUMNS", "build_grid",
    "counterfactual_frame", "evaluate_model", "evaluation_constraints", "performance_frame",
    "search_grid",
]
