"""Robust accuracy over an ε sweep for the figure, measured here from the saved models.

The grids evaluate FGSM at the budgets of ``evaluation.fgsm_eps`` (the paper's tables: one,
0.03); the paper's figure sweeps ε from 0 to 0.1. ``aggregate`` therefore re-attacks each
finished model's test split at :data:`SWEEP_EPS` (FGSM, clamped to the evaluation's domain
as in :func:`ctgrid.evaluation.robust_accuracy`) — deterministic, seconds per model — when
the stored records hold fewer than three budgets. Rows have the ``performance.parquet``
schema plus ``source`` and ``job_id``, so the figure draws either.
"""
from __future__ import annotations

import pandas as pd

from ..evaluation.evaluate import evaluation_constraints
from ..evaluation.robustness import robust_accuracy
from .load import Results

#: the paper figure's budgets
SWEEP_EPS = tuple(round(0.01 * k, 2) for k in range(11))


def fgsm_sweep(results: Results, data_dir: str | None = None,
               eps: tuple[float, ...] = SWEEP_EPS) -> pd.DataFrame:
    """FGSM robust accuracy of every finished job's model at each of ``eps``."""
    rows = []
    for src, job_id in zip(results.jobs["source"], results.jobs["job_id"]):
        if not results.model_path(int(src), job_id).exists():
            continue
        data = results.dataset(job_id, data_dir)
        model = results.model(int(src), job_id, data_dir)
        acc = robust_accuracy(model, data.X_test, data.y_test, eps, attack="fgsm",
                              constraints=evaluation_constraints(data, results.config(job_id).evaluation))
        rows += [{"source": int(src), "job_id": job_id, "metric": "robust_accuracy", "attack": "fgsm",
                  "eps": e, "value": float(a)} for e, a in zip(eps, acc)]
    return pd.DataFrame(rows, columns=["source", "job_id", "metric", "attack", "eps", "value"])
