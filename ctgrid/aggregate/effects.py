"""Average outcomes across hyper-parameters: one number per grid, dataset and parameter value.

The appendix asks, of each grid search, whether CT's effect holds across its
hyper-parameters. For every results directory (grid), dataset, varied parameter
and value, :func:`effects_tables` reports the mean over the CT *settings* (jobs)
with that value of each setting's % reduction of IP and cost vs its baseline —
the per-setting number of Table 1, ``100 (1 − mean_run CT_run / BL_run)`` over the
setting's evaluation runs (each run: the mean over individuals and test-time λ) —
together with

- an interval for that mean: percentile bootstrap over the evaluation runs,
  resampled within each setting independently (the settings are the grid's fixed
  design; with one training seed each it holds the evaluation's noise, not the
  training seed's; where a setting has several seeds — ``repeats`` — they are
  averaged and resampled first, then each drawn seed's runs);
- the standard deviation across the settings (how much the other parameters
  matter) and how many settings have CT lower than its baseline.

Settings weigh equally. A job that several values of an axis map to ignores that
axis (:meth:`Results.axis_values`: the vanilla job, Generic's ``lambda_energy``) and
is left out of that axis's rows. Sign: positive = CT lower, as Table 1.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..seeding import numpy_generator
from .load import Results, setting_axes
from .pairing import SHORT
from .render import Table, num

METRICS = ("ip", "cost")


def job_reductions(units: pd.DataFrame, *, n_boot: int, seed: int, metric: str) -> pd.DataFrame:
    """Per CT job of ``units`` (per-run paired units: ``source, ct_job, dataset, run, ct, bl``):
    ``pct`` = 100 (1 − mean_run CT/BL) over its runs with a nonzero baseline, ``n_runs``, and
    ``boot``: the same statistic on ``n_boot`` resamples of those runs (an array; the
    generator is derived from the job id, so a job's resamples do not depend on the grid)."""
    rows = []
    u = units[(units["bl"] != 0) & np.isfinite(units["bl"]) & np.isfinite(units["ct"])]
    for (src, job, d), g in u.groupby(["source", "ct_job", "dataset"], sort=True):
        ratio = (g["ct"] / g["bl"]).to_numpy(float)
        boot = np.full(n_boot, np.nan)
        if n_boot and len(ratio) > 1:
            idx = numpy_generator("aggregate-effects", seed, job, metric).integers(
                0, len(ratio), size=(n_boot, len(ratio)))
            boot = 100.0 * (1.0 - ratio[idx].mean(axis=1))
        elif n_boot:
            boot = np.full(n_boot, 100.0 * (1.0 - ratio.mean()))
        rows.append({"source": int(src), "ct_job": job, "dataset": d,
                     "pct": 100.0 * (1.0 - ratio.mean()), "n_runs": len(ratio), "boot": boot})
    return pd.DataFrame(rows, columns=["source", "ct_job", "dataset", "pct", "n_runs", "boot"])


def summarise(jobs: pd.DataFrame, confidence: float) -> dict[str, Any]:
    """Mean, interval, sd and count of CT-lower settings over the rows of ``jobs``."""
    pct = jobs["pct"].to_numpy(float)
    alpha = (1.0 - confidence) / 2.0
    lo = hi = float("nan")
    if len(pct) and len(jobs["boot"].iloc[0]):
        means = np.vstack(jobs["boot"].to_list()).mean(axis=0)
        if np.isfinite(means).all():
            lo, hi = (float(q) for q in np.quantile(means, [alpha, 1.0 - alpha]))
    return {"mean": float(pct.mean()) if len(pct) else float("nan"), "lo": lo, "hi": hi,
            "sd": float(pct.std(ddof=1)) if len(pct) > 1 else float("nan"),
            "n_settings": len(pct), "n_lower": int((pct > 0).sum())}


def _levels(values: pd.Series) -> list[Any]:
    def key(v: Any) -> tuple:
        return (0, float(v), "") if isinstance(v, (int, float, np.number)) else (1, 0.0, str(v))
    return sorted(values.dropna().unique().tolist(), key=key)


def _label(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _cell(s: dict[str, Any]) -> str:
    if not s["n_settings"]:
        return "—"
    interval = f" [{num(s['lo'], 1)}, {num(s['hi'], 1)}]" if np.isfinite(s["lo"]) else ""
    return f"{num(s['mean'], 1)}{interval}"


def settings_of(jobs: pd.DataFrame, values: pd.DataFrame, axes: list[str], *, n_boot: int, seed: int,
                metric: str) -> pd.DataFrame:
    """:func:`job_reductions` rows collapsed to one per setting (equal values on every setting
    axis): the replicates of a setting (its training seeds) are averaged, and its bootstrap is
    two-stage — the seeds resampled, then each drawn seed's runs (its ``boot`` column). With
    one seed per setting the rows are the jobs'. Columns: the axes, ``pct``, ``boot``, ``n_seeds``."""
    frame = jobs.join(values[axes], on="ct_job")
    out = []
    for _, g in frame.groupby(axes, dropna=False, sort=False):
        boots = np.vstack(g["boot"].to_list()) if n_boot else np.empty((len(g), 0))
        if len(g) > 1 and n_boot:
            pick = numpy_generator("aggregate-effects-seeds", seed, metric, *sorted(g["ct_job"])).integers(
                0, len(g), size=(n_boot, len(g)))
            boot = boots[pick, np.arange(n_boot)[:, None]].mean(axis=1)
        else:
            boot = boots.mean(axis=0)
        out.append({**{a: g[a].iloc[0] for a in axes}, "pct": float(g["pct"].mean()), "boot": boot,
                    "n_seeds": len(g)})
    return pd.DataFrame(out, columns=[*axes, "pct", "boot", "n_seeds"])


def effects_tables(results: Results, units: dict[str, pd.DataFrame], *, n_boot: int, confidence: float,
                   seed: int) -> list[Table]:
    """One table per results directory with varied setting axes (module docstring).

    ``units``: :func:`~.pairing.paired_ce_units`'s per-run frames ``"ip"`` and ``"cost"``."""
    per_job = {m: job_reductions(units[m], n_boot=n_boot, seed=seed, metric=m) for m in METRICS}
    tables = []
    for src in results.sources:
        ct = results.jobs[(results.jobs["source"] == src.index)
                          & (results.jobs["training.objective"] != "vanilla")]
        axes = [a for a in setting_axes(results, src.index, ct["training.objective"].nunique())
                if a in results.axis_values(src.index)]
        if not axes:
            continue
        values = results.axis_values(src.index)
        rows, records, seeds = [], [], set()
        mine = {m: per_job[m][per_job[m]["source"] == src.index] for m in METRICS}
        for d in sorted(set(mine["ip"]["dataset"]) | set(mine["cost"]["dataset"])):
            sets = {m: settings_of(mine[m][mine[m]["dataset"] == d], values, axes, n_boot=n_boot, seed=seed,
                                   metric=m) for m in METRICS}
            seeds |= set(sets["ip"]["n_seeds"])
            groups = [("all", "all settings", sets)]
            for axis in axes:
                if sets["ip"][axis].nunique() < 2:
                    continue   # constant within this dataset (a per-dataset subgrid value)
                for v in _levels(sets["ip"][axis]):
                    groups.append((SHORT.get(axis, axis), _label(v),
                                   {m: sets[m][sets[m][axis] == v] for m in METRICS}))
            for param, value, sel in groups:
                stats = {m: summarise(sel[m], confidence) for m in METRICS}
                rows.append([d, param, value, str(stats["ip"]["n_settings"]),
                             *(c for m in METRICS for c in (_cell(stats[m]), num(stats[m]["sd"], 1),
                                                            f"{stats[m]['n_lower']}/{stats[m]['n_settings']}"))])
                records += [{"dataset": d, "parameter": param, "value": value, "metric": m, **stats[m]}
                            for m in METRICS]
        tables.append(Table(f"effects_{src.name}", f"Average outcomes across hyper-parameters, grid "
                            f"{src.name}: % reduction of IP and cost vs BL per parameter value",
                            _HEADER, rows, _notes(src.name, n_boot, confidence, seeds),
                            pd.DataFrame.from_records(records), n_text=3))
    return tables


_HEADER = ["Data", "Parameter", "Value", "Settings", "IP", "IP sd", "IP lower", "Cost", "Cost sd", "Cost lower"]


def _notes(grid: str, n_boot: int, confidence: float, seeds: set[int]) -> list[str]:
    conf = f"{100 * confidence:g}%"
    if seeds <= {1}:
        unit = ("resampled within each setting: the evaluation's noise for this fixed design of settings, "
                "one training seed each — not the training seed's variation")
    else:
        unit = (f"two-stage: each setting's training seeds ({', '.join(map(str, sorted(seeds)))} per setting) "
                "resampled, then the evaluation runs of each drawn seed")
    return [f"Grid {grid}: per dataset and value of each varied parameter, the mean over the CT settings with "
            "that value of each setting's % reduction vs its baseline, 100·(1 − mean_run CT_run/BL_run) (Table "
            "1's entry; a setting's training seeds averaged); positive = CT lower. Settings weigh equally.",
            f"[lo, hi]: {conf} percentile bootstrap of that mean over the evaluation runs ({n_boot} resamples), "
            f"{unit}.",
            "sd: standard deviation of the settings' values (the spread the other parameters cause); "
            "lower: settings whose CT model has the lower mean (IP or cost) / settings.",
            "A job that ignores a parameter (several of its values map to one job, e.g. λ_energy for "
            "Generic and REVISE) is left out of that parameter's rows; 'all settings' counts every "
            "CT setting once."]
