"""``load_results``: a grid's results as one wide pandas DataFrame, parameters beside metrics.

The per-job Parquet files are long and tidy (one row per counterfactual x metric);
analyses usually want one row per unit with every resolved parameter as a column, so
that ``df.groupby("training.lambda_reg")["ip"].mean()`` just works. Levels
(docs/metrics.md defines every metric and its level):

- ``"job"`` — one row per finished job: each per-counterfactual metric averaged over the
  job's counterfactuals (``ip_star`` first per group, then over groups, so groups of
  different size weigh the same), ``n_counterfactuals``, every performance metric
  (``accuracy``, ``macro_f1``, ``robust_accuracy_fgsm_0.03``, ...; ``ig_sensitivity`` as
  its mean over rounds), the last epoch's history (``final_loss``, ``final_acc_val``) and
  the job's ``seconds``;
- ``"counterfactual"`` — one row per test-time counterfactual ``(job, run, individual,
  lambda_energy)`` with its metrics as columns (``ip_star``: its group's value);
- ``"epoch"`` — the training histories, one row per job x epoch.

Every level starts with ``grid`` (the results directory's name), ``job_id``, ``name`` and
all resolved parameters (``data.name``, ``training.lambda_reg``, ...: the job's canonical
configuration, so parameters a job does not use hold their defaults).
"""
from __future__ import annotations

import json
import os
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..store import ResultStore
from .load import Results

LEVELS = ("job", "counterfactual", "epoch")
_CE_KEYS = ["job_id", "run", "individual", "lambda_energy"]


def _params(results: Results) -> pd.DataFrame:
    jobs = results.jobs.drop(columns=["data_summary"], errors="ignore").copy()
    names = {s.index: s.name for s in results.sources}
    jobs.insert(0, "grid", jobs.pop("source").map(names))
    jobs.insert(2, "name", [results.config(j).name for j in jobs["job_id"]])
    for col in jobs.columns:   # list-valued parameters as JSON text (hashable: groupby works)
        if jobs[col].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            jobs[col] = jobs[col].map(lambda v: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)
    return jobs


def _per_counterfactual(results: Results, metrics: Iterable[str] | None) -> pd.DataFrame:
    ev = results.evaluation(list(metrics) if metrics is not None else None)
    if ev.empty:
        return pd.DataFrame(columns=_CE_KEYS)
    keys = ["job_id", "run", "individual", "lambda_energy", "split", "factual_index", "factual_label",
            "target", "predicted", "generator"]
    index = [k for k in keys if k in ev]
    wide = ev.set_index([*index, "metric"])["value"].unstack("metric").reset_index()
    wide.columns.name = None
    return wide.sort_values(["job_id", "run", "lambda_energy", "individual"], kind="stable", ignore_index=True)


def _ce_means(ce: pd.DataFrame) -> pd.DataFrame:
    """Per job (index) the mean of every per-counterfactual metric and ``n_counterfactuals``."""
    metric_cols = [c for c in ce.columns if c not in (*_CE_KEYS, "split", "factual_index", "factual_label",
                                                       "target", "predicted", "generator")]
    plain = [c for c in metric_cols if c not in ("ip_star", "ip_star_pvalue")]
    means = ce.groupby("job_id")[plain].mean()
    means["n_counterfactuals"] = ce.groupby("job_id").size()
    for col in ("ip_star", "ip_star_pvalue"):
        if col in ce:   # one value per (run, lambda, target) group: average the groups
            groups = ce.groupby(["job_id", "run", "lambda_energy", "target"])[col].first()
            means[col] = groups.groupby("job_id").mean()
    return means


def _per_job(results: Results, ce: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"job_id": results.jobs["job_id"]})
    if len(ce):
        out = out.merge(_ce_means(ce).reset_index(), on="job_id", how="left")
    perf = results.performance()
    if len(perf):
        label = np.where(perf["attack"] == "none", perf["metric"],
                         perf["metric"] + "_" + perf["attack"] + "_" + perf["eps"].map("{:g}".format))
        wide = perf.assign(column=label).groupby(["job_id", "column"])["value"].mean().unstack("column")
        out = out.merge(wide.reset_index(), on="job_id", how="left")
    hist = results.history()
    if len(hist):
        last = hist.sort_values("epoch").groupby("job_id").last()
        cols = [c for c in ("loss", "acc_train", "acc_val") if c in last]
        out = out.merge(last[cols].add_prefix("final_").reset_index(), on="job_id", how="left")
    out["seconds"] = [_seconds(results, s, j) for s, j in zip(results.jobs["source"], results.jobs["job_id"])]
    return out


def _seconds(results: Results, source: int, job_id: str) -> float:
    try:
        done = json.loads(ResultStore(results.sources[source].root).job(job_id).done.read_text(encoding="utf-8"))
        return float(done.get("seconds", np.nan))
    except (OSError, ValueError, TypeError):
        return float("nan")


def _paired(results: Results, params: pd.DataFrame, ce: pd.DataFrame, exclude_predicted: bool) -> pd.DataFrame:
    """One row per CT job whose baseline is done: the CT job's parameters and metrics, the
    baseline's metrics (``<metric>_baseline``) and ``<metric>_diff`` = CT − baseline. Per-
    counterfactual metrics are means over the pair's shared individuals, without those either
    model already predicts as the target (``exclude_predicted``; ``n_excluded`` counts them)."""
    from .pairing import pair_jobs
    pairs = pair_jobs(results).dropna(subset=["bl_job"])
    jobs = _per_job(results, ce).drop_duplicates("job_id").set_index("job_id")   # a job shared by two grids
    keys = ["run", "individual", "lambda_energy", "target"]
    rows = []
    for ct_id, bl_id in zip(pairs["ct_job"], pairs["bl_job"]):
        sides = {"ct": jobs.loc[ct_id].copy(), "bl": jobs.loc[bl_id].copy()}
        excluded = 0
        if len(ce):
            both = ce[ce["job_id"] == ct_id].merge(ce[ce["job_id"] == bl_id], on=keys, suffixes=("", "_bl"))
            already = (both["predicted"] == both["target"]) | (both["predicted_bl"] == both["target"])
            units = both[["run", "individual"]].assign(x=already.to_numpy()).groupby(["run", "individual"])["x"].any()
            excluded = int(units.sum())
            keep = units[~units].reset_index()[["run", "individual"]] if exclude_predicted else units.reset_index()
            for side, job in (("ct", ct_id), ("bl", bl_id)):
                part = ce[ce["job_id"] == job].merge(keep[["run", "individual"]], on=["run", "individual"])
                means = _ce_means(part)
                for col in means.columns:
                    sides[side][col] = means[col].iloc[0] if len(means) else np.nan
        numeric = [c for c in jobs.columns if pd.api.types.is_numeric_dtype(jobs[c])]
        row = {"job_id": ct_id, "baseline_job_id": bl_id, "n_excluded": excluded}
        for c in numeric:
            row[c] = sides["ct"][c]
            row[f"{c}_baseline"] = sides["bl"][c]
            row[f"{c}_diff"] = sides["ct"][c] - sides["bl"][c]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["job_id", "baseline_job_id", "n_excluded"] if not rows else None)
    return params.merge(frame, on="job_id", how="inner").reset_index(drop=True)


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike], *, level: str = "job",
                 metrics: Iterable[str] | None = None, paired: bool = False,
                 exclude_predicted: bool = True, skip_damaged: bool = False) -> pd.DataFrame:
    """The finished jobs of ``paths`` (results directories, or a results root holding
    several) as one wide DataFrame at ``level`` (``"job"``, ``"counterfactual"``,
    ``"epoch"``; module docstring). ``metrics`` restricts the counterfactual metrics read.
    A job whose files are damaged is a :class:`~ctgrid.errors.StoreError` unless
    ``skip_damaged`` (then left out; see ``ctgrid verify``).

    ``paired=True`` (level ``"job"``): one row per CT job with its baseline beside it — every
    metric ``m`` as ``m`` (CT), ``m_baseline`` and ``m_diff`` (CT − baseline), the
    per-counterfactual ones over the individuals neither model already predicts as the target
    (``exclude_predicted``; as Table 1), and ``baseline_job_id``, ``n_excluded``.

    >>> df = ctgrid.load_results("results/quickstart")
    >>> df.groupby("training.objective")[["ip", "cost", "accuracy"]].mean()
    >>> ctgrid.load_results("results/quickstart", paired=True)[["ip", "ip_baseline", "ip_diff"]]
    """
    if level not in LEVELS:
        raise ConfigError(f"level: got {level!r}; allowed: {', '.join(LEVELS)}")
    if paired and level != "job":
        raise ConfigError(f"paired: allowed only with level 'job' (got level {level!r})")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    results = Results.load(paths, skip_damaged=skip_damaged)
    params = _params(results)
    if paired:
        return _paired(results, params, _per_counterfactual(results, metrics), exclude_predicted)
    if level == "epoch":
        data = results.history()
    else:
        ce = _per_counterfactual(results, metrics)
        data = ce if level == "counterfactual" else _per_job(results, ce)
    if data.empty:
        return params.iloc[:0]
    data = data.drop(columns=["source"], errors="ignore")
    frame = params.merge(data, on="job_id", how="inner" if level != "job" else "left")
    return frame.reset_index(drop=True)
