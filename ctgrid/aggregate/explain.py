"""Tables that explain Table 1: how the searches behaved, and the sensitivity to immutable features.

- :func:`search_table` — per Table 1 row, BL and CT means of the search's step count,
  the share of converged searches, the reference's "redundancy" (share of features left
  unchanged) and redundancy proper (share resettable to the factual with the
  counterfactual staying valid; docs/deviations.md, M4). A steep model whose searches stop after one overshooting
  step shows up here, not in Table 1.
- :func:`sensitivity_table` — for the jobs whose evaluation makes features immutable, the
  integrated-gradients share of attribution on those features (one value per round, see
  :func:`ctgrid.evaluation.evaluate.sensitivity_rounds`): median and 2.5/97.5% quantiles
  over rounds, BL vs CT (the paper's IG table; Proposition 3.1 predicts CT lowers it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .load import Results, metric_filter, to_pandas
from .render import Table, num

SEARCH_METRICS = ("steps", "converged", "share_unchanged", "redundancy")


def _row_groups(pairs: pd.DataFrame):
    ok = pairs.dropna(subset=["bl_job"])
    for (d, s, c), g in ok.groupby(["dataset", "setting", "constrained"], sort=True):
        yield d, s, c, set(g["ct_job"]), set(g["bl_job"])


def search_table(results: Results, pairs: pd.DataFrame) -> Table:
    """Means over every counterfactual of the row's CT jobs and of their baselines."""
    table = results.read_table("evaluation", ["metric", "value"], metric_filter(SEARCH_METRICS))
    means = (to_pandas(table).groupby(["job_id", "metric"])["value"].mean().unstack("metric")
             if table is not None else pd.DataFrame())
    rows, records = [], []
    for d, s, c, ct, bl in _row_groups(pairs):
        cells = [d, s, "yes" if c else "no"]
        for m in SEARCH_METRICS:
            for side, jobs in (("bl", bl), ("ct", ct)):
                v = (means.reindex(sorted(jobs))[m].mean() if m in means else np.nan)
                k = 1 if m == "steps" else 100
                cells.append(num(v * k, 1))
                records.append({"dataset": d, "setting": s, "constrained": c, "metric": m,
                                "side": side, "value": v})
        rows.append(cells)
    header = ["Data", "Setting", "Mut.", "Steps BL", "Steps CT", "Conv. BL", "Conv. CT",
              "Unch. BL", "Unch. CT", "Red. BL", "Red. CT"]
    notes = ["Means over all test-time counterfactuals (every λ, run and individual) of the row's "
             "CT jobs and of their baselines.",
             "Steps: search steps taken; Conv.: % of searches that reached the evaluation's τ; "
             "Unch.: % of features left unchanged (the reference's 'redundancy'); Red.: % of "
             "features that can be reset to the factual value, one at a time, with the "
             "counterfactual staying valid (docs/deviations.md, M4; valid counterfactuals only).",
             "Mut.: whether mutability constraints bind at evaluation."]
    return Table("search", "Test-time searches: steps, convergence, unchanged and redundant features",
                 header, rows, notes, pd.DataFrame.from_records(records), n_text=3)


def _quantiles(values: pd.Series) -> tuple[float, float, float]:
    if values.empty:
        return (np.nan, np.nan, np.nan)
    q = np.quantile(values.to_numpy(float), [0.5, 0.025, 0.975])
    return float(q[0]), float(q[1]), float(q[2])


def sensitivity_table(pairs: pd.DataFrame, perf: pd.DataFrame) -> Table | None:
    """``None`` when no job recorded ``ig_sensitivity`` (no immutable feature was evaluated)."""
    if perf.empty or "ig_sensitivity" not in set(perf["metric"]):
        return None
    ig = perf[perf["metric"] == "ig_sensitivity"]
    rows, records = [], []
    for d, s, _c, ct, bl in _row_groups(pairs):
        stats = {side: _quantiles(ig.loc[ig["job_id"].isin(jobs), "value"])
                 for side, jobs in (("bl", bl), ("ct", ct))}
        if not np.isfinite(stats["bl"][0]) and not np.isfinite(stats["ct"][0]):
            continue
        change = 100.0 * (stats["ct"][0] - stats["bl"][0]) / stats["bl"][0] if stats["bl"][0] else np.nan
        rows.append([d, s, *(f"{num(m, 3)} [{num(lo, 3)}, {num(hi, 3)}]" for m, lo, hi in stats.values()),
                     num(change, 1)])
        records += [{"dataset": d, "setting": s, "side": side, "median": m, "q025": lo, "q975": hi,
                     "change_pct": change} for side, (m, lo, hi) in stats.items()]
    header = ["Data", "Setting", "IG share BL", "IG share CT", "Change %"]
    notes = ["Integrated gradients of the predicted class's logit (baseline U(-1, 1)) on test rows: "
             "the share of the normalised attribution that falls on the immutable features; median "
             "and [2.5%, 97.5%] quantiles over resampling rounds.",
             "Change %: 100·(CT − BL)/BL of the medians; negative = CT relies less on the immutable "
             "features (Proposition 3.1 of the paper)."]
    return Table("sensitivity", "Sensitivity to the immutable features, BL vs CT (integrated "
                 "gradients)", header, rows, notes, pd.DataFrame.from_records(records), n_text=2)
