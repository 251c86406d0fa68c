"""Pair every CT job with its baseline and summarise paired per-run differences.

A CT job pairs with the ``vanilla`` job trained on the same data, model,
replicate (``training.seed``) and schedule: the job id of the CT configuration
with ``training.objective = "vanilla"``, canonicalised. The evaluation draws the
same factual/target pairs for both (same run and individual -> same factual), so
each evaluation *run* of a pair is one paired unit.

**Informative individuals.** The targets are drawn from data (paired design), so a model
may already predict an individual's target at the factual; such a "counterfactual" is
cheap and plausible by construction and its share grows with 1 − accuracy. By default a
pair is compared only on the individuals (run, individual) for which *neither* model
already predicts the target (docs/deviations.md, M5, D6; :func:`paired_ce_units`); the excluded share is
reported. ``exclude_predicted=False`` keeps every individual (ctgrid < 0.2 behaviour).

Headline numbers (docs/deviations.md, M5): ``% reduction = 100 * (1 - mean_u(CT_u / BL_u))``
over units ``u`` (pair x run), ``CT_u``/``BL_u`` the per-run means over individuals
(and over ``lambda_energy`` for aggregated figures).

Intervals, three choices (``interval``; docs/deviations.md, M13):

- ``"bootstrap"`` (default): the two-stage percentile bootstrap (:mod:`.bootstrap`) — the
  model pairs (CT job and its baseline: one per training seed and setting) are resampled,
  then the runs within each drawn pair; the statistic is then the mean over pairs of the
  per-pair means. With one pair it is the bootstrap over that pair's runs (the
  within-model interval, unchanged). The significance star marks an interval of the mean
  paired difference ``CT_u - BL_u`` that excludes zero.
- ``"within-model"``: the units of every pair pooled and resampled as one sample (ctgrid
  before issue 24): it treats the trained models as fixed, so it narrows with ``n_runs``
  and says nothing about another training seed.
- ``"runs"``: the reference's choice (docs/deviations.md, D8): quantiles of the per-unit
  values themselves (``100 (1 - CT_u/BL_u)`` and ``CT_u - BL_u``), no resampling. It
  reads the spread of single runs, not the uncertainty of their mean.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ..seeding import numpy_generator
from .bootstrap import group_means, percentile, two_stage
from .load import Results, setting_axes

#: Short names for the labels of CT settings (full ``group.key`` where they would collide).
SHORT = {"generator.tau": "tau", "training.lambda_reg": "lambda_reg", "training.lambda_div": "lambda_div",
         "training.lambda_adv": "lambda_adv", "training.nce": "nce", "generator.name": "generator",
         "training.objective": "objective", "generator.lambda_energy": "lambda_energy",
         "generator.maxiter": "maxiter", "training.burnin": "burnin", "training.nepochs": "nepochs",
         "generator.lr": "generator.lr"}


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v in ("", "[]", "{}")


def is_constrained(row: Any) -> bool:
    """Whether mutability constraints bound the job's evaluation: the evaluation's own
    (``evaluation.mutability``; empty lifts them all) or else the training data's."""
    em = row.get("evaluation.mutability")
    if em is not None and not (isinstance(em, float) and np.isnan(em)):
        return not _empty(em)
    return not _empty(row.get("data.mutability"))


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, str) and v.startswith("["):
        return ",".join(str(x) for x in json.loads(v))
    return str(v)


def setting_label(row: Any, axes: tuple[str, ...]) -> str:
    """``tau=0.5, lambda_reg=0.1`` from the job's values of the varied ``axes`` (``—`` if none)."""
    if not axes:
        return "—"
    shorts = [SHORT.get(a, a.split(".", 1)[1]) for a in axes]
    names = [a if shorts.count(s) > 1 else s for a, s in zip(axes, shorts)]
    return ", ".join(f"{n}={_fmt_value(row.get(a))}" for n, a in zip(names, axes))


def pair_jobs(results: Results, *, pool_settings: bool = False) -> pd.DataFrame:
    """One row per CT job: ``source, ct_job, bl_source, bl_job`` (None when the baseline is not
    done), ``dataset``, ``objective``, ``setting``, ``constrained``.

    ``setting`` labels the job by the grid's varied axes that take several values among the
    dataset's CT jobs (so per-dataset subgrid values, replicate seeds and constraints do not
    split rows); ``pool_settings`` gives every CT job of a dataset one label instead. When some
    CT jobs are evaluated, those with ``evaluation.enabled: false`` (e.g. the retrained models
    of a consistency grid) get no row."""
    jobs = results.jobs
    # Pair through the stored configs: the id each one hashes to with this release's defaults ->
    # where it lives. A release that changes a default re-hashes a stored config that spells the
    # old default out, so a baseline is found by that re-hash, never by its directory name alone.
    where: dict[str, list[tuple[int, str]]] = {}
    for s, j in zip(jobs["source"], jobs["job_id"]):
        where.setdefault(results.config(j).job_id, []).append((int(s), j))
    ct = jobs[jobs["training.objective"] != "vanilla"]
    if "evaluation.enabled" in ct and ct["evaluation.enabled"].astype(bool).any():
        ct = ct[ct["evaluation.enabled"].astype(bool)]  # no row for models never evaluated (retrained ones)
    rows = []
    for (src, _d), frame in ct.groupby(["source", "data.name"], sort=True):
        axes = setting_axes(results, int(src), frame["training.objective"].nunique())
        axes = tuple(a for a in axes if a in frame and frame[a].astype(str).nunique() > 1)
        for row in frame.to_dict("records"):
            cfg = results.config(row["job_id"])
            found = where.get(replace(cfg, training=replace(cfg.training, objective="vanilla")).job_id, [])
            found = sorted(found, key=lambda sj: sj[0] != int(src))   # the same results directory first
            bl_src, bl = found[0] if found else (None, None)
            label = "all settings ({n} CT jobs)" if pool_settings else setting_label(row, axes)
            rows.append({"source": int(src), "ct_job": row["job_id"], "bl_source": bl_src,
                         "bl_job": bl, "dataset": row["data.name"],
                         "objective": row["training.objective"], "setting": label,
                         "constrained": bool(is_constrained(row))})
    pairs = pd.DataFrame(rows, columns=["source", "ct_job", "bl_source", "bl_job", "dataset",
                                        "objective", "setting", "constrained"])
    pairs["constrained"] = pairs["constrained"].astype(bool)   # also when empty (boolean masks)
    if pool_settings and len(pairs):
        n = pairs.groupby(["dataset", "constrained"])["ct_job"].transform("nunique")
        pairs["setting"] = [s.format(n=k) for s, k in zip(pairs["setting"], n)]
    return pairs


def paired_units(pairs: pd.DataFrame, values: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Join per-job ``values`` (columns ``source, job_id, *keys, value``) onto the CT and baseline
    side of ``pairs``: columns of ``pairs`` plus ``keys``, ``ct``, ``bl`` (inner join)."""
    p = pairs.dropna(subset=["bl_job"])
    v = values[["source", "job_id", *keys, "value"]]
    ct = p.merge(v.rename(columns={"job_id": "ct_job", "value": "ct"}), on=["source", "ct_job"])
    blv = v.rename(columns={"source": "bl_source", "job_id": "bl_job", "value": "bl"})
    ct["bl_source"] = ct["bl_source"].astype(int)
    return ct.merge(blv, on=["bl_source", "bl_job", *keys])


#: Per-counterfactual quantities the paired tables average (``ct_``/``bl_`` prefixed per side).
CE_QUANTITIES = ("validity", "ip", "cost")
_PAIR_COLS = ["source", "ct_job", "bl_source", "bl_job", "dataset", "objective", "setting",
              "constrained"]


def paired_ce_units(pairs: pd.DataFrame, per_ce: pd.DataFrame, *,
                    exclude_predicted: bool = True) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Paired units from per-counterfactual values, leaving out already-predicted targets.

    ``per_ce``: one row per (``source, job_id, lambda_energy, run, individual``) with
    ``target``, ``predicted`` (the job's class at the factual; null if not recorded) and
    :data:`CE_QUANTITIES`; with a ``factual_index`` column, an individual repeating a factual
    (and target) of its run is dropped (each distinct factual counted once). Each CT job's
    rows are joined to its baseline's on (run, λ, individual, target) — the same factual and
    target by the paired design. With
    ``exclude_predicted`` the rows where either model's ``predicted`` equals the target are
    dropped before the per-run means over individuals.

    Returns ``({"ip_l", "cost_l": per (run, λ), "ip", "cost", "validity": per run (mean over
    λ of the per-λ means)}, excluded)``: unit frames shaped like :func:`paired_units`'s output, and
    per CT job the ``n_units`` (run, individual) pairs compared and ``n_excluded``.
    """
    keys = ["lambda_energy", "run", "individual", "target"]
    p = pairs.dropna(subset=["bl_job"])[_PAIR_COLS].copy()
    p["bl_source"] = p["bl_source"].astype(int)
    if "factual_index" in per_ce:   # each distinct factual of a run once (a small class repeats rows)
        per_ce = per_ce.drop_duplicates(["source", "job_id", "lambda_energy", "run", "factual_index", "target"])
    side = per_ce[["source", "job_id", *keys, "predicted", *CE_QUANTITIES]]
    ct = p.merge(side.rename(columns={"job_id": "ct_job", "predicted": "pred_ct",
                                      **{q: f"ct_{q}" for q in CE_QUANTITIES}}),
                 on=["source", "ct_job"])
    bl = side.rename(columns={"source": "bl_source", "job_id": "bl_job", "predicted": "pred_bl",
                              **{q: f"bl_{q}" for q in CE_QUANTITIES}})
    u = ct.merge(bl, on=["bl_source", "bl_job", *keys])
    already = (u["pred_ct"] == u["target"]) | (u["pred_bl"] == u["target"])
    first = u.drop_duplicates(["source", "ct_job", "run", "individual"])
    flags = already.loc[first.index]
    excluded = (pd.DataFrame({"source": first["source"], "ct_job": first["ct_job"], "x": flags})
                .groupby(["source", "ct_job"])["x"].agg(n_units="size", n_excluded="sum").reset_index())
    if exclude_predicted:
        u = u[~already.to_numpy()]
    per_lam = u.groupby([*_PAIR_COLS, "run", "lambda_energy"], sort=True)[
        [f"{s}_{q}" for s in ("ct", "bl") for q in CE_QUANTITIES]].mean().reset_index()
    per_run = per_lam.groupby([*_PAIR_COLS, "run"], sort=True)[
        [f"{s}_{q}" for s in ("ct", "bl") for q in CE_QUANTITIES]].mean().reset_index()

    def unit(frame: pd.DataFrame, q: str, extra: list[str]) -> pd.DataFrame:
        out = frame[[*_PAIR_COLS, *extra, f"ct_{q}", f"bl_{q}"]].rename(
            columns={f"ct_{q}": "ct", f"bl_{q}": "bl"})
        return out.dropna(subset=["ct", "bl"]).reset_index(drop=True)

    units = {"ip_l": unit(per_lam, "ip", ["run", "lambda_energy"]),
             "cost_l": unit(per_lam, "cost", ["run", "lambda_energy"])}
    units.update({q: unit(per_run, q, ["run"]) for q in CE_QUANTITIES})
    return units, excluded


@dataclass(frozen=True)
class Reduction:
    """A % reduction with its interval and the paired-difference test (``star``)."""

    pct: float
    lo: float
    hi: float
    sd: float          # 100 * std of the per-unit ratio (the reference's "±"; docs/deviations.md, D8)
    diff: float        # mean paired difference CT - BL
    diff_lo: float
    diff_hi: float
    star: bool
    n: int             # units used
    n_dropped: int     # units with a zero or non-finite baseline (ratio undefined)
    n_pairs: int = 1   # model pairs (outer units of the two-stage interval)

    @staticmethod
    def empty() -> "Reduction":
        nan = float("nan")
        return Reduction(nan, nan, nan, nan, nan, nan, nan, False, 0, 0, 0)


def reduction(ct: np.ndarray, bl: np.ndarray, *, n_boot: int, confidence: float,
              seed_parts: tuple, interval: str = "bootstrap", groups: np.ndarray | None = None) -> Reduction:
    """``100 (1 - mean(ct/bl))`` over paired units, with interval and star (module docstring).

    ``groups``: each unit's model pair (e.g. its CT job id); with several, the default interval
    resamples pairs, then units within each, and the estimates are means of per-pair means."""
    ct, bl = np.asarray(ct, float), np.asarray(bl, float)
    ok = np.isfinite(ct) & np.isfinite(bl)
    g = (np.zeros(len(ct), dtype=int) if groups is None else np.asarray(groups))[ok]
    ct, bl = ct[ok], bl[ok]
    usable = bl != 0
    ratio, diff = ct[usable] / bl[usable], ct - bl
    if not len(ratio):
        return replace(Reduction.empty(), n_dropped=int((~usable).sum()))
    keys = sorted(set(g.tolist()))
    sd = 100.0 * ratio.std(ddof=1) if len(ratio) > 1 else float("nan")
    sd, n, n_dropped, n_pairs = float(sd), int(len(ratio)), int((~usable).sum()), len(keys)
    if interval == "bootstrap" and len(keys) > 1:
        r_groups = [ratio[g[usable] == k] for k in keys]
        d_groups = [diff[g == k] for k in keys]
        pct, d_mean = 100.0 * (1.0 - group_means(r_groups)), group_means(d_groups)
        (lo, hi), (dlo, dhi) = (float("nan"),) * 2, (float("nan"),) * 2
        if n_boot > 0:
            rng = numpy_generator("aggregate-bootstrap-pairs", *seed_parts)
            lo, hi = percentile(100.0 * (1.0 - two_stage(r_groups, n_boot, rng)), confidence)
            dlo, dhi = percentile(two_stage(d_groups, n_boot, rng), confidence)
        star = bool(np.isfinite(dlo) and (dlo > 0 or dhi < 0))
        return Reduction(float(pct), lo, hi, sd, float(d_mean), dlo, dhi, star, n, n_dropped, n_pairs)
    pct = 100.0 * (1.0 - ratio.mean())
    alpha = (1.0 - confidence) / 2.0
    qs = [alpha, 1.0 - alpha]
    nan2 = (float("nan"), float("nan"))
    if interval == "runs":
        lo, hi = (np.quantile(100.0 * (1.0 - ratio), qs) if len(ratio) > 1 else nan2)
        dlo, dhi = np.quantile(diff, qs) if len(diff) > 1 else nan2
    elif n_boot > 0 and len(ratio) > 1:   # one pair, or "within-model": the units as one sample
        rng = numpy_generator("aggregate-bootstrap", *seed_parts)
        idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
        lo, hi = np.quantile(100.0 * (1.0 - _boot_ratio(ct, bl, idx)), qs)
        dlo, dhi = np.quantile(diff[idx].mean(axis=1), qs)
    else:
        (lo, hi), (dlo, dhi) = nan2, nan2
    star = bool(np.isfinite(dlo) and (dlo > 0 or dhi < 0))
    return Reduction(float(pct), float(lo), float(hi), sd, float(diff.mean()), float(dlo), float(dhi), star,
                     n, n_dropped, n_pairs)


def _boot_ratio(ct: np.ndarray, bl: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean ratio of each resample, over the resampled units whose baseline is nonzero."""
    c, b = ct[idx], bl[idx]
    usable = b != 0
    ratio = np.where(usable, c / np.where(usable, b, 1.0), 0.0)
    return ratio.sum(axis=1) / np.maximum(usable.sum(axis=1), 1)
