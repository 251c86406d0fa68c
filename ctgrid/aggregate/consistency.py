"""Consistency of counterfactuals under retraining (Black et al. 2022; docs/deviations.md, M11, M13).

A *base* job keeps its test-time counterfactuals (``evaluation.save_counterfactuals``).
Its *retrained* models are the other finished jobs — never another base job — with the same
data, model, generator and training settings (evaluation settings ignored) that differ only in

- ``RS``: the initialisation — the base's ``training.seed`` (so the same batch order and CE
  draws), another ``training.init_seed``, no row left out (Black et al.'s RS);
- ``RS-seed``: the replicate — another ``training.seed`` (initialisation, batch order and
  CE draws all change; ctgrid before issue 24), no row left out;
- ``LOO``: one left-out training row — the base's seeds, ``training.leave_out >= 0``.

The invalidation rate of a counterfactual ``x'`` valid under the base model (its ``argmax``
is the target) is the share of retrained models whose ``argmax`` at ``x'`` is not the target
(:func:`ctgrid.evaluation.invalidation_rate`); invalid counterfactuals have none (NaN). Their
*failure rate* ``fail`` counts an invalid counterfactual as failed under every model (1) and a
valid one by its IV: a quantity defined for every factual, so contrasts over it are free of the
selection by validity. Each distinct factual is counted once per base job (a class with too
few rows for its balanced draws repeats factuals; :mod:`ctgrid.evaluation.grid`).

Several base models per arm (training seeds) are the outer unit of every interval
(:mod:`.bootstrap`): per dataset x setting x objective x method x variation, the IV table
reports validity, the mean IV over the base models of their mean IV over valid
counterfactuals, its spread across base models, a two-stage bootstrap interval (base
models, then counterfactuals within each), the failure rate, L1/L2 cost and the R² of a
least-squares line of IV on L2 cost (Black et al. found R² <= 0.17). The contrasts are in
:mod:`.contrasts`.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from ..evaluation import EvaluationConfig, invalidation_rate
from ..generators.config import SNS_FIELDS
from ..grid.job import JobConfig
from ..seeding import numpy_generator
from .bootstrap import group_means, percentile, two_stage
from .load import Results, to_pandas
from .pairing import pair_jobs
from .render import Table, num

VARIATIONS = ("RS", "RS-seed", "LOO")
#: per-counterfactual columns of :func:`consistency_records`
RECORD_COLUMNS = ("source", "base_job", "baseline_job", "dataset", "objective", "setting", "method", "variation",
                  "seed", "n_models", "run", "individual", "factual_index", "lambda_energy", "target",
                  "predicted", "informative", "valid", "iv", "fail", "l1", "l2", "moved")
#: the factual identity of a counterfactual (the same in every base job of one dataset: paired draws)
FACTUAL = ["factual_index", "target", "lambda_energy"]


def model_key(job: JobConfig) -> str:
    """What a retrained model shares with its base: the canonical job without the seeds,
    the left-out row and the evaluation."""
    c = job.canonical()
    c = replace(c, training=replace(c.training, seed=0, init_seed=-1, leave_out=-1), evaluation=EvaluationConfig())
    return json.dumps(c.to_dict(), sort_keys=True, default=str)


def method_label(ev: EvaluationConfig) -> str:
    """``generic``, ``generic+sns`` or ``generic+ctrl`` (the equal-length control)."""
    if ev.sns_radius <= 0:
        return ev.generator
    return ev.generator + ("+ctrl" if ev.sns_control else "+sns")


def _base_jobs(results: Results) -> pd.DataFrame:
    jobs = results.jobs
    if "evaluation.save_counterfactuals" not in jobs:
        return jobs.iloc[:0]
    left_out = jobs["training.leave_out"] if "training.leave_out" in jobs else -1
    base = jobs[(jobs["evaluation.save_counterfactuals"] == True) & (left_out == -1)]  # noqa: E712
    return base.sort_values(["source", "job_id"])


def _varied(frame: pd.DataFrame, skip: set[str]) -> list[str]:
    return [c for c in frame.columns if "." in c and c not in skip and frame[c].astype(str).nunique() > 1]


def _labels(results: Results, base: pd.DataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """Per base job: its method label (generator, "+sns"/"+ctrl", other evaluation settings
    that vary) and its setting label (the training settings that vary between the base jobs
    of one dataset and objective, seeds excepted: they are the replicates)."""
    skip_ev = {"evaluation.generator", "evaluation.sns_radius", *(f"evaluation.{f}" for f in SNS_FIELDS)}
    skip = {"data.name", "training.objective", "training.seed", "training.init_seed", "training.leave_out"}
    ev_cols = [c for c in _varied(base, skip_ev) if c.startswith("evaluation.")]
    method, setting = {}, {}
    for _, group in base.groupby(["data.name", "training.objective"]):
        set_cols = [c for c in _varied(group, skip) if not c.startswith("evaluation.")]
        for _, row in group.iterrows():
            jid = row["job_id"]
            others = [f"{c.split('.', 1)[1]}={row[c]}" for c in ev_cols]
            method[jid] = " ".join([method_label(results.config(jid).evaluation), *others])
            setting[jid] = ", ".join(f"{c.split('.', 1)[1]}={row[c]}" for c in set_cols) or "—"
    return method, setting


def _retrained(results: Results, base_job: JobConfig, members: list[tuple[int, str]],
               bases: set[str]) -> dict[str, list[tuple[int, str]]]:
    """The RS, RS-seed and LOO models among ``members`` (the jobs sharing the base job's model
    key), leaving out the base jobs themselves."""
    out: dict[str, list[tuple[int, str]]] = {v: [] for v in VARIATIONS}
    seed, init = base_job.training.seed, base_job.training.init_seed
    for src, jid in members:
        if jid in bases:
            continue
        tr = results.config(jid).training
        if tr.leave_out == -1 and tr.seed == seed and tr.init_seed != init:
            out["RS"].append((int(src), jid))
        elif tr.leave_out == -1 and tr.seed != seed and tr.init_seed == init == -1:
            out["RS-seed"].append((int(src), jid))
        elif tr.leave_out >= 0 and tr.seed == seed and tr.init_seed == init:
            out["LOO"].append((int(src), jid))
    return out


def _points(results: Results, source: int, job_id: str) -> pd.DataFrame:
    path = results.model_path(source, job_id).parent / "counterfactuals.parquet"
    import pyarrow.parquet as pq
    return to_pandas(pq.read_table(path))


def _stack(column: pd.Series) -> torch.Tensor:
    return torch.tensor(np.stack(column.to_numpy()).astype(np.float32))


def _plain_job(job: JobConfig) -> str:
    """The id of the job that searched like ``job`` without the SNS / control stage."""
    return replace(job, evaluation=replace(job.evaluation, sns_radius=0.0)).job_id


def _moved(pts: pd.DataFrame, plain: pd.DataFrame | None) -> np.ndarray:
    """Per counterfactual, the L2 distance from the plain search's counterfactual of the same
    factual (what the SNS or control stage moved it; NaN without a plain job, 0 for it)."""
    if plain is None:
        return np.full(len(pts), np.nan)
    m = pts[FACTUAL].merge(plain[[*FACTUAL, "counterfactual"]], on=FACTUAL, how="left")
    out = np.full(len(pts), np.nan)
    ok = m["counterfactual"].notna().to_numpy()
    if ok.any():
        a, b = _stack(pts["counterfactual"][ok]), _stack(m["counterfactual"][ok])
        out[ok] = (a - b).norm(dim=1).double().numpy()
    return out


def consistency_records(results: Results, data_dir: str | None = None, *,
                        exclude_predicted: bool = True) -> pd.DataFrame:
    """One row per (base counterfactual, variation) (:data:`RECORD_COLUMNS`); empty when no
    job saved its counterfactuals or none has retrained models. ``informative``: the base
    model does not already predict the target at the factual (their "counterfactual" is the
    factual itself, cost 0: nothing to explain; as Table 1's default) — always true with
    ``exclude_predicted=False``. Repeated factuals of a base job are kept once."""
    base = _base_jobs(results)
    if base.empty:
        return pd.DataFrame(columns=list(RECORD_COLUMNS))
    keys = {jid: model_key(results.config(jid)) for jid in results.jobs["job_id"]}
    groups: dict[str, list[tuple[int, str]]] = {}
    for src, jid in zip(results.jobs["source"], results.jobs["job_id"]):
        groups.setdefault(keys[jid], []).append((int(src), jid))
    method, setting = _labels(results, base)
    pairs = pair_jobs(results).dropna(subset=["bl_job"])   # CT base job -> its vanilla base job
    baseline = dict(zip(pairs["ct_job"], pairs["bl_job"]))
    bases = set(base["job_id"])
    models: dict[str, torch.nn.Module] = {}
    frames = []
    points = {jid: _points(results, int(src), jid).drop_duplicates(FACTUAL).reset_index(drop=True)
              for src, jid in zip(base["source"], base["job_id"])}
    for _, row in base.iterrows():
        src, jid = int(row["source"]), row["job_id"]
        job = results.config(jid)
        pts = points[jid]
        moved = _moved(pts, points.get(_plain_job(job)))
        informative = (pts["predicted"] != pts["target"]).to_numpy(bool) if exclude_predicted \
            else np.ones(len(pts), bool)
        valid = pts["valid"].to_numpy(bool).copy()
        x, x_cf = _stack(pts["factual"]), _stack(pts["counterfactual"])
        target = torch.tensor(pts["target"].to_numpy(np.int64))
        for variation, members in _retrained(results, job, groups[keys[jid]], bases).items():
            if not members:
                continue
            for s, m in members:
                if m not in models:
                    models[m] = results.model(s, m, data_dir)
            iv = np.full(len(pts), np.nan)
            if valid.any():
                mask = torch.from_numpy(valid)
                iv[valid] = invalidation_rate(x_cf[mask], target[mask], [models[m] for _, m in members]).numpy()
            frames.append(pd.DataFrame({
                "source": src, "base_job": jid, "baseline_job": baseline.get(jid), "dataset": job.data.name,
                "objective": job.training.objective, "setting": setting[jid], "method": method[jid],
                "variation": variation, "seed": job.training.seed, "n_models": len(members),
                "run": pts["run"].to_numpy(), "individual": pts["individual"].to_numpy(),
                "factual_index": pts["factual_index"].to_numpy(), "lambda_energy": pts["lambda_energy"].to_numpy(),
                "target": pts["target"].to_numpy(), "predicted": pts["predicted"].to_numpy(),
                "informative": informative, "valid": valid, "iv": iv, "fail": np.where(valid, iv, 1.0),
                "l1": (x_cf - x).abs().sum(1).double().numpy(), "l2": (x_cf - x).norm(dim=1).double().numpy(),
                "moved": moved}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECORD_COLUMNS))


def r_squared(x: np.ndarray, y: np.ndarray) -> float:
    """R² of the least-squares line of ``y`` on ``x`` (NaN when either is constant or n < 3)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1] ** 2)


def interval(groups: list[np.ndarray], n_boot: int, confidence: float, seed_parts: tuple,
             how: str = "bootstrap") -> tuple[float, float]:
    """Percentile interval of :func:`~.bootstrap.group_means` of ``groups`` (one array per base
    model or pair): two-stage (``bootstrap``) or the units pooled as one sample
    (``within-model``, also for ``runs``). NaN with fewer than 2 units."""
    groups = [g for g in groups if len(g)]
    if n_boot <= 0 or sum(len(g) for g in groups) < 2:
        return float("nan"), float("nan")
    if how != "bootstrap":
        groups = [np.concatenate(groups)]
    rng = numpy_generator("aggregate-consistency", how, *seed_parts)
    return percentile(two_stage(groups, n_boot, rng), confidence)


ROW_KEYS = ["dataset", "setting", "objective", "method", "variation"]


def _groups(records: pd.DataFrame, keys: list[str]) -> Iterator[tuple[tuple, pd.DataFrame]]:
    yield from records.groupby(keys, sort=True)


def _span(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _iv_record(key: tuple, g: pd.DataFrame, n_boot: int, confidence: float, how: str) -> dict[str, Any]:
    per = [(b, h) for b, h in g.groupby("base_job", sort=True)]
    valid = [h[h["valid"]] for _, h in per]
    ivs = [v["iv"].to_numpy(float) for v in valid]
    means = np.array([x.mean() for x in ivs if len(x)])
    lo, hi = interval(ivs, n_boot, confidence, key, how)
    v_all = g[g["valid"]]
    return dict(zip(ROW_KEYS, key), n_bases=len(per), n_models=_span(g["n_models"]), n=len(g),
                n_valid=len(v_all), validity=group_means([h["valid"].to_numpy(float) for _, h in per]),
                iv_mean=group_means(ivs), iv_sd_models=float(means.std(ddof=1)) if len(means) > 1 else np.nan,
                iv_sd=float(v_all["iv"].std(ddof=1)) if len(v_all) > 1 else np.nan, iv_lo=lo, iv_hi=hi,
                fail=group_means([h["fail"].to_numpy(float) for _, h in per]),
                l1=group_means([v["l1"].to_numpy(float) for v in valid]),
                l2=group_means([v["l2"].to_numpy(float) for v in valid]),
                moved=group_means([h["moved"].dropna().to_numpy(float) for _, h in per]),
                r2_l2=r_squared(v_all["l2"].to_numpy(float), v_all["iv"].to_numpy(float)),
                r2_l1=r_squared(v_all["l1"].to_numpy(float), v_all["iv"].to_numpy(float)))


def interval_text(how: str, outer: str, inner: str) -> str:
    """What an interval resamples: ``outer`` (the trained models) then ``inner`` within each."""
    if how == "bootstrap":
        return (f"two-stage percentile bootstrap: the {outer} resampled, then the {inner} within each drawn "
                f"one; with one, its {inner} only (a within-model interval)")
    return (f"within-model percentile bootstrap: the {inner} of all the {outer} pooled, the trained models "
            "held fixed (--interval within-model)")


def iv_notes(pct: str, n_boot: int, how: str) -> list[str]:
    unit = interval_text(how, "base models (training seeds; Bases)", "valid counterfactuals")
    return ["IV: share of the retrained models (RS: other initialisation, same batch order and CE draws; "
            "RS-seed: another training seed; LOO: one training row left out, same seeds) whose predicted class at "
            "the counterfactual is not its target, over the counterfactuals valid under their base model; mean "
            "over base models of each one's mean. Lower = more consistent. sd (models): across base models.",
            f"IV CI: {pct} {unit} ({n_boot} resamples).",
            "Fail: failure rate over all informative factuals — an invalid counterfactual counts as failed (1), a "
            "valid one by its IV; free of the selection by validity. Validity: % valid under the base model.",
            "n: informative factuals (the base model does not already predict the target; unless "
            "--keep-predicted), each distinct factual counted once (a class with too few rows for the balanced "
            "draws repeats factuals). L1/L2 cost: mean distance to the factual (valid ones), standardised "
            "units. Moved: mean L2 distance from the plain search's counterfactual of the same factual (what "
            "SNS or the control moved it; all informative factuals). R²: of a least-squares line of IV on L2 "
            "cost, pooled over base models."]


def iv_table(records: pd.DataFrame, *, n_boot: int, confidence: float, how: str = "bootstrap") -> Table:
    """Per dataset x setting x objective x method x variation: the IV summary (module docstring)."""
    rows, recs = [], []
    pct = f"{confidence:.0%}"
    for key, g in _groups(records[records["informative"].astype(bool)], ROW_KEYS):
        rec = _iv_record(key, g, n_boot, confidence, how)
        recs.append(rec)
        rows.append([*key, str(rec["n_bases"]), rec["n_models"], f"{rec['n_valid']}/{rec['n']}",
                     num(100 * rec["validity"], 1), num(rec["iv_mean"], 3), num(rec["iv_sd_models"], 3),
                     f"[{num(rec['iv_lo'], 3)}, {num(rec['iv_hi'], 3)}]", num(rec["fail"], 3),
                     num(rec["l1"]), num(rec["l2"]), num(rec["moved"]), num(rec["r2_l2"]), num(rec["r2_l1"])])
    header = ["Data", "Setting", "Objective", "Method", "Var.", "Bases", "Models", "Valid/n", "Validity %",
              "IV mean", "sd (models)", f"IV {pct} CI", "Fail", "L1 cost", "L2 cost", "Moved", "R² (L2)", "R² (L1)"]
    return Table("consistency", "Consistency under retraining: invalidation rate (IV) of counterfactuals",
                 header, rows, iv_notes(pct, n_boot, how), pd.DataFrame.from_records(recs), n_text=5)
