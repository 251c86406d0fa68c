"""The paired BL/CT evaluation of two models in the Python API: :func:`evaluate_pair`.

Both models are evaluated in one search over the same factual/target pairs (the paired design
of :mod:`.grid`), and :meth:`PairedEvaluation.summary` gives the key results as the aggregation
computes them for Table 1 (docs/deviations.md, M5): a pair is compared only on the individuals
(run, individual) for which *neither* model already predicts the target; per run the mean over
individuals (and over ``lambda_energy``); the difference CT − BL and the reduction
``100 * (1 - mean_r(CT_r / BL_r))`` over runs ``r`` (positive = CT lower).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..constraints import Constraints
from ..data.dataset import Dataset
from ..generators import GeneratorConfig
from .config import EvaluationConfig
from .evaluate import ModelEvaluation, evaluate_models

#: per-counterfactual quantities of the summary (``ip_star`` is a per-group value)
CE_QUANTITIES = ("validity", "validity_strict", "cost", "ip", "ip_star")
_KEYS = ["run", "individual", "lambda_energy", "target"]


@dataclass(frozen=True)
class PairedEvaluation:
    """The evaluations of a baseline and a CT model on the same factuals and targets."""

    baseline: ModelEvaluation
    ct: ModelEvaluation

    def informative(self) -> pd.DataFrame:
        """One row per (run, individual, ``lambda_energy``) both models searched and neither
        already predicts the target: the per-counterfactual metrics of each, ``<metric>_bl`` and
        ``<metric>_ct``."""
        sides = [_wide(e.evaluation) for e in (self.baseline, self.ct)]
        both = sides[0].merge(sides[1], on=_KEYS, suffixes=("_bl", "_ct"))
        keep = (both["predicted_bl"] != both["target"]) & (both["predicted_ct"] != both["target"])
        return both[keep.to_numpy()].reset_index(drop=True)

    @property
    def excluded_share(self) -> float:
        """Share of the individuals left out because a model already predicts their target."""
        both = _wide(self.baseline.evaluation).merge(_wide(self.ct.evaluation), on=_KEYS,
                                                     suffixes=("_bl", "_ct"))
        first = both.drop_duplicates(["run", "individual"])
        already = (first["predicted_bl"] == first["target"]) | (first["predicted_ct"] == first["target"])
        return float(already.mean()) if len(first) else float("nan")

    def summary(self) -> pd.DataFrame:
        """Key results, one row per quantity: ``baseline``, ``ct``, ``difference`` (CT − BL),
        ``reduction_pct`` (``100 * (1 - mean_r(CT_r / BL_r))``; for the predictive metrics
        ``NaN``), ``n_runs``."""
        units = self.informative()
        rows = []
        for q in CE_QUANTITIES:
            if f"{q}_bl" not in units:
                continue
            per_lam = units.groupby(["run", "lambda_energy"])[[f"{q}_bl", f"{q}_ct"]].mean()
            per_run = per_lam.groupby("run").mean()
            bl, ct = per_run[f"{q}_bl"].to_numpy(), per_run[f"{q}_ct"].to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # no finite ratio: NaN
                red = 100 * (1 - np.nanmean(ct / bl)) if len(bl) else float("nan")
            rows.append((q, float(np.mean(bl)) if len(bl) else np.nan, float(np.mean(ct)) if len(ct) else np.nan,
                         red, len(per_run)))
        for label, bl, ct in _performance(self.baseline.performance, self.ct.performance):
            rows.append((label, bl, ct, float("nan"), 1))
        frame = pd.DataFrame(rows, columns=["quantity", "baseline", "ct", "reduction_pct", "n_runs"])
        frame.insert(3, "difference", frame["ct"] - frame["baseline"])
        return frame


def _wide(evaluation: pd.DataFrame) -> pd.DataFrame:
    """The long evaluation frame with one column per metric (plus ``predicted``)."""
    wide = evaluation.pivot_table(index=[*_KEYS, "predicted"], columns="metric", values="value",
                                  aggfunc="first").reset_index()
    wide.columns.name = None
    return wide


def _performance(bl: pd.DataFrame, ct: pd.DataFrame) -> list[tuple[str, float, float]]:
    """``(label, baseline, ct)`` of every predictive metric both frames hold."""
    def label(row: pd.Series) -> str:
        return row["metric"] if row["attack"] == "none" else f"{row['metric']}_{row['attack']}_{row['eps']:g}"
    sides = [f.assign(label=f.apply(label, axis=1)).groupby("label", sort=False)["value"].mean() for f in (bl, ct)]
    return [(k, float(sides[0][k]), float(sides[1][k])) for k in sides[0].index if k in sides[1].index]


def evaluate_pair(baseline: nn.Module, ct: nn.Module, dataset: Dataset, config: EvaluationConfig, *,
                  generator_config: GeneratorConfig | None = None,
                  cache_dir: str | os.PathLike | None = None,
                  constraints: Constraints | None = None,
                  device: torch.device | str | None = None) -> PairedEvaluation:
    """Evaluate a baseline and a CT model of ``dataset`` on the same factuals and targets (one
    search) — what ``ctgrid evaluate BL_DIR CT_DIR`` and the aggregation's Table 1 do, for two
    models in memory. ``PairedEvaluation.summary()`` gives the key results. ``device``: as
    :func:`~ctgrid.evaluation.evaluate_model`'s."""
    bl_eval, ct_eval = evaluate_models([baseline, ct], dataset, config, generator_config=generator_config,
                                       cache_dir=cache_dir, constraints=constraints, device=device)
    return PairedEvaluation(bl_eval, ct_eval)
