"""Consistency of counterfactuals under retraining (Black et al. 2022; docs/deviations.md, M11).

A *base* job keeps its test-time counterfactuals (``evaluation.save_counterfactuals``).
Its *retrained* models are the other finished jobs with the same data, model, generator
and training settings (evaluation settings ignored) that differ only in

- ``RS``: the seed — ``training.seed`` other than the base's, no row left out;
- ``LOO``: one left-out training row — the base's seed, ``training.leave_out >= 0``.

The invalidation rate of a counterfactual ``x'`` valid under the base model (its
``argmax`` is the target) is the share of retrained models whose ``argmax`` at ``x'``
is not the target (:func:`ctgrid.evaluation.invalidation_rate`); invalid counterfactuals
have none (NaN). Per base job and variation the table reports validity (all
counterfactuals) and, over the valid ones, mean ± sd IV with a bootstrap interval of the
mean, L1 and L2 cost, and the R² of a least-squares line of IV on L2 cost (Black et al.
found R² <= 0.17: cost says little about consistency). A second table gives the
contrasts the question is about — CT − BL and "+sns" − base generator — as differences
of mean IV with bootstrap intervals (counterfactuals resampled on each side).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from ..evaluation import EvaluationConfig, invalidation_rate
from ..grid.job import JobConfig
from ..seeding import numpy_generator
from .load import Results, to_pandas
from .pairing import pair_jobs
from .render import Table, mean_sd, num

VARIATIONS = ("RS", "LOO")
#: per-counterfactual columns of :func:`consistency_records`
RECORD_COLUMNS = ("source", "base_job", "baseline_job", "dataset", "objective", "setting", "method", "variation",
                  "n_models", "run", "individual", "lambda_energy", "target", "valid", "iv", "l1", "l2")


def model_key(job: JobConfig) -> str:
    """What a retrained model shares with its base: the canonical job without the seed,
    the left-out row and the evaluation."""
    c = job.canonical()
    c = replace(c, training=replace(c.training, seed=0, leave_out=-1), evaluation=EvaluationConfig())
    return json.dumps(c.to_dict(), sort_keys=True, default=str)


def _method(ev: EvaluationConfig, others: dict[str, Any]) -> str:
    label = ev.generator + ("+sns" if ev.sns_radius > 0 else "")
    return " ".join([label, *(f"{k}={v}" for k, v in others.items())])


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
    """Per base job: its method label (generator, "+sns", other evaluation settings that
    vary) and its setting label (the training settings that vary between the base jobs of
    one dataset and objective)."""
    skip_ev = {"evaluation.generator", "evaluation.sns_radius"}
    skip = {"data.name", "training.objective", "training.seed", "training.leave_out"}
    ev_cols = [c for c in _varied(base, skip_ev) if c.startswith("evaluation.")]
    method, setting = {}, {}
    for _, group in base.groupby(["data.name", "training.objective"]):
        set_cols = [c for c in _varied(group, skip) if not c.startswith("evaluation.")]
        for _, row in group.iterrows():
            jid = row["job_id"]
            method[jid] = _method(results.config(jid).evaluation,
                                  {c.split(".", 1)[1]: row[c] for c in ev_cols})
            setting[jid] = ", ".join(f"{c.split('.', 1)[1]}={row[c]}" for c in set_cols) or "—"
    return method, setting


def _retrained(results: Results, base_job: JobConfig,
               members: list[tuple[int, str]]) -> dict[str, list[tuple[int, str]]]:
    """The RS and LOO models among ``members`` (the jobs sharing the base job's model key)."""
    out: dict[str, list[tuple[int, str]]] = {v: [] for v in VARIATIONS}
    seed = base_job.training.seed
    for src, jid in members:
        tr = results.config(jid).training
        if tr.leave_out == -1 and tr.seed != seed:
            out["RS"].append((int(src), jid))
        elif tr.leave_out >= 0 and tr.seed == seed:
            out["LOO"].append((int(src), jid))
    return out


def _points(results: Results, source: int, job_id: str) -> pd.DataFrame:
    path = results.model_path(source, job_id).parent / "counterfactuals.parquet"
    import pyarrow.parquet as pq
    return to_pandas(pq.read_table(path))


def _stack(column: pd.Series) -> torch.Tensor:
    return torch.tensor(np.stack(column.to_numpy()).astype(np.float32))


def consistency_records(results: Results, data_dir: str | None = None, *,
                        exclude_predicted: bool = True) -> pd.DataFrame:
    """One row per (base counterfactual, variation) (:data:`RECORD_COLUMNS`); empty when no
    job saved its counterfactuals or none has retrained models. ``exclude_predicted``: leave
    out factuals the base model already predicts as the target (their "counterfactual" is
    the factual itself, cost 0: nothing to explain; as Table 1's default)."""
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
    models: dict[str, torch.nn.Module] = {}
    frames = []
    for _, row in base.iterrows():
        src, jid = int(row["source"]), row["job_id"]
        job = results.config(jid)
        pts = _points(results, src, jid)
        if exclude_predicted:
            pts = pts[pts["predicted"] != pts["target"]].reset_index(drop=True)
        valid = pts["valid"].to_numpy(bool).copy()
        mask = torch.from_numpy(valid)
        x, x_cf = _stack(pts["factual"]), _stack(pts["counterfactual"])
        target = torch.tensor(pts["target"].to_numpy(np.int64))
        for variation, members in _retrained(results, job, groups[keys[jid]]).items():
            if not members:
                continue
            for s, m in members:
                if m not in models:
                    models[m] = results.model(s, m, data_dir)
            iv = np.full(len(pts), np.nan)
            if valid.any():
                iv[valid] = invalidation_rate(x_cf[mask], target[mask], [models[m] for _, m in members]).numpy()
            frames.append(pd.DataFrame({
                "source": src, "base_job": jid, "baseline_job": baseline.get(jid), "dataset": job.data.name,
                "objective": job.training.objective, "setting": setting[jid], "method": method[jid],
                "variation": variation,
                "n_models": len(members), "run": pts["run"].to_numpy(), "individual": pts["individual"].to_numpy(),
                "lambda_energy": pts["lambda_energy"].to_numpy(),
                "target": pts["target"].to_numpy(), "valid": valid, "iv": iv,
                "l1": (x_cf - x).abs().sum(1).double().numpy(), "l2": (x_cf - x).norm(dim=1).double().numpy()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECORD_COLUMNS))


def r_squared(x: np.ndarray, y: np.ndarray) -> float:
    """R² of the least-squares line of ``y`` on ``x`` (NaN when either is constant or n < 3)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1] ** 2)


def _interval(values: list[np.ndarray], n_boot: int, confidence: float, seed_parts: tuple) -> tuple[float, float]:
    """Bootstrap percentile interval of ``mean(values[0]) - mean(values[1])`` (or of the mean
    of ``values[0]`` alone); each array resampled on its own."""
    if n_boot <= 0 or any(len(v) < 2 for v in values):
        return float("nan"), float("nan")
    rng = numpy_generator("aggregate-consistency", *seed_parts)
    stats = np.zeros(n_boot)
    for sign, v in zip((1.0, -1.0), values):
        stats += sign * v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return float(lo), float(hi)


ROW_KEYS = ["dataset", "setting", "objective", "method", "variation"]


def _groups(records: pd.DataFrame, keys: list[str]) -> Iterator[tuple[tuple, pd.DataFrame]]:
    yield from records.groupby(keys, sort=True)


def iv_table(records: pd.DataFrame, *, n_boot: int, confidence: float) -> Table:
    """Per dataset x setting x objective x method x variation: the IV summary."""
    rows, recs = [], []
    pct = f"{confidence:.0%}"
    for key, g in _groups(records, ROW_KEYS):
        v = g[g["valid"]]
        iv = v["iv"].to_numpy(float)
        lo, hi = _interval([iv], n_boot, confidence, key)
        rec = dict(zip(ROW_KEYS, key), n_models=int(g["n_models"].iloc[0]), n=len(g), n_valid=len(v),
                   validity=float(g["valid"].mean()), iv_mean=float(iv.mean()) if len(iv) else np.nan,
                   iv_sd=float(iv.std(ddof=1)) if len(iv) > 1 else np.nan, iv_lo=lo, iv_hi=hi,
                   l1=float(v["l1"].mean()) if len(v) else np.nan, l2=float(v["l2"].mean()) if len(v) else np.nan,
                   r2_l2=r_squared(v["l2"].to_numpy(float), iv), r2_l1=r_squared(v["l1"].to_numpy(float), iv))
        recs.append(rec)
        rows.append([*key, str(rec["n_models"]), f"{rec['n_valid']}/{rec['n']}", num(100 * rec["validity"], 1),
                     mean_sd(rec["iv_mean"], rec["iv_sd"], 3), f"[{num(lo, 3)}, {num(hi, 3)}]",
                     num(rec["l1"]), num(rec["l2"]), num(rec["r2_l2"]), num(rec["r2_l1"])])
    header = ["Data", "Setting", "Objective", "Method", "Var.", "Models", "Valid/n", "Validity %",
              "IV mean ± sd", f"IV {pct} CI", "L1 cost", "L2 cost", "R² (L2)", "R² (L1)"]
    notes = ["IV: share of the retrained models (RS: other training seeds; LOO: one training row left out, "
             "same seed and initialisation) whose predicted class at the counterfactual is not its target; "
             "over the counterfactuals valid under the base model. Lower = more consistent.",
             f"IV CI: {pct} percentile bootstrap of the mean over counterfactuals ({n_boot} resamples); it "
             "treats the one base model and its retrained models as fixed.",
             "Validity: % of the test-time counterfactuals valid under the base model; n leaves out factuals "
             "the base model already predicts as the target (unless --keep-predicted). L1/L2 cost: mean "
             "distance to the factual (valid ones), in standardised feature units. R²: of a least-squares "
             "line of IV on that cost."]
    return Table("consistency", "Consistency under retraining: invalidation rate (IV) of counterfactuals",
                 header, rows, notes, pd.DataFrame.from_records(recs), n_text=5)


def _contrast_rows(records: pd.DataFrame) -> Iterator[tuple[str, tuple, pd.DataFrame, pd.DataFrame]]:
    """(comparison, key, a, b) for CT − BL (same method) and +sns − base (same objective)."""
    valid = records[records["valid"]]
    by_job = {k: g for k, g in valid.groupby(["base_job", "variation"])}
    ct = valid.dropna(subset=["baseline_job"])
    for (d, s, m, var, obj, bl), g in _groups(ct, ["dataset", "setting", "method", "variation", "objective",
                                                   "baseline_job"]):
        if (bl, var) in by_job:
            yield f"{obj} − vanilla", (d, s, m, var), g, by_job[(bl, var)]
    for (d, s, obj, var), g in _groups(valid, ["dataset", "setting", "objective", "variation"]):
        for m in sorted(set(g["method"])):
            plain = m.replace("+sns", "", 1)
            if "+sns" in m and plain in set(g["method"]):
                yield f"+sns − {plain}", (d, s, obj, var), g[g["method"] == m], g[g["method"] == plain]


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """Per-factual IV differences ``a - b`` over the (run, individual, target) units valid on
    both sides (with ``lambda_energy`` when both sides searched the same lambdas); empty when
    the units do not match one to one."""
    keys = ["run", "individual", "target"]
    if set(a["lambda_energy"]) == set(b["lambda_energy"]):
        keys.append("lambda_energy")
    if a.duplicated(keys).any() or b.duplicated(keys).any():
        return np.array([])
    m = a[[*keys, "iv"]].merge(b[[*keys, "iv"]], on=keys, suffixes=("_a", "_b"))
    return (m["iv_a"] - m["iv_b"]).to_numpy(float)


def contrast_table(records: pd.DataFrame, *, n_boot: int, confidence: float) -> Table:
    """Differences of mean IV (and of mean L2 cost) with bootstrap intervals."""
    rows, recs = [], []
    pct = f"{confidence:.0%}"
    for comparison, key, a, b in _contrast_rows(records):
        ia, ib = a["iv"].to_numpy(float), b["iv"].to_numpy(float)
        lo, hi = _interval([ia, ib], n_boot, confidence, (comparison, *key))
        d_iv = float(ia.mean() - ib.mean()) if len(ia) and len(ib) else np.nan
        d_l2 = float(a["l2"].mean() - b["l2"].mean()) if len(ia) and len(ib) else np.nan
        star = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
        d = _paired(a, b)
        p_lo, p_hi = _interval([d], n_boot, confidence, ("paired", comparison, *key))
        p_mean = float(d.mean()) if len(d) else np.nan
        p_star = bool(np.isfinite(p_lo) and (p_lo > 0 or p_hi < 0))
        recs.append({"comparison": comparison, "dataset": key[0], "setting": key[1], "within": key[2],
                     "variation": key[3], "n_a": len(ia), "n_b": len(ib), "d_iv": d_iv, "d_iv_lo": lo,
                     "d_iv_hi": hi, "significant": star, "n_paired": len(d), "d_iv_paired": p_mean,
                     "d_iv_paired_lo": p_lo, "d_iv_paired_hi": p_hi, "significant_paired": p_star,
                     "d_l2": d_l2})
        rows.append([key[0], key[1], comparison, key[2], key[3], f"{len(ia)}/{len(ib)}",
                     num(d_iv, 3) + ("*" if star else ""), f"[{num(lo, 3)}, {num(hi, 3)}]", str(len(d)),
                     num(p_mean, 3) + ("*" if p_star else ""), f"[{num(p_lo, 3)}, {num(p_hi, 3)}]", num(d_l2)])
    header = ["Data", "Setting", "Comparison", "Within", "Var.", "n (a/b)", "Δ mean IV", f"{pct} CI",
              "n paired", "Δ paired", f"{pct} CI (paired)", "Δ L2 cost"]
    notes = ["Δ mean IV: mean over the first side's valid counterfactuals minus the second's (each side's "
             "counterfactuals resampled on their own); negative = the first is more consistent. * : the "
             "interval excludes 0.",
             "Δ paired: mean of the per-factual differences over the factuals whose counterfactuals are valid on "
             "both sides (the same factual and target: the evaluation draws are paired), resampled by factual; "
             "free of the selection by validity when validity differs between the sides.",
             f"{pct} percentile bootstrap intervals; one base model per side, so they do not cover the "
             "variation between base models (another base seed could move them)."]
    return Table("consistency_contrasts", "Consistency: does CT, does SNS lower the invalidation rate?",
                 header, rows, notes, pd.DataFrame.from_records(recs), n_text=5)


def _method_order(methods: pd.Series) -> list[str]:
    """Each generator next to its "+sns" variant."""
    return sorted(set(methods), key=lambda m: (m.replace("+sns", "", 1), "+sns" in m, m))


def _objective_order(objectives: pd.Series) -> list[str]:
    return sorted(set(objectives), key=lambda o: (o == "vanilla", o))


def _colours(objectives: list[str]) -> dict[str, str]:
    return dict(zip(objectives, ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]),
                vanilla="tab:blue")


def _layout(frame: pd.DataFrame) -> tuple[list[tuple[str, str, str]], list[str], list[str]]:
    """Panels (dataset, setting, variation: RS before LOO), methods and objectives of a figure."""
    panels = sorted(set(zip(frame["dataset"], frame["setting"], frame["variation"])),
                    key=lambda r: (r[0], r[1], VARIATIONS.index(r[2])))
    return panels, _method_order(frame["method"]), _objective_order(frame["objective"])


def _objective_label(objective: str) -> str:
    return {"vanilla": "BL (vanilla)", "full": "CT (full)"}.get(objective, f"CT ({objective})")


def iv_means_figure(table: pd.DataFrame, out_dir: Path, confidence: float) -> list[Path]:
    """Mean IV with its bootstrap interval per method and objective: one panel per dataset
    x variation (the consistency table at a glance)."""
    from .figures import _panels, save
    if table.empty:
        return []
    panels, methods, objectives = _layout(table)
    colours = _colours(objectives)
    fig, axes = _panels(len(panels), 4.2, 3.0, max_cols=2)
    width = 0.7 / max(1, len(objectives))
    for ax, (d, s, var) in zip(axes, panels):
        g = table[(table["dataset"] == d) & (table["setting"] == s) & (table["variation"] == var)]
        for k, obj in enumerate(objectives):
            h = g[g["objective"] == obj].set_index("method").reindex(methods)
            xs = np.arange(len(methods)) + (k - (len(objectives) - 1) / 2) * width
            err = np.vstack([h["iv_mean"] - h["iv_lo"], h["iv_hi"] - h["iv_mean"]])
            ax.errorbar(xs, h["iv_mean"], yerr=err, fmt="o", capsize=3, color=colours[obj],
                        label=_objective_label(obj))
        ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
        ax.set_ylabel("mean invalidation rate")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{d if s == '—' else f'{d} ({s})'} · {var} ({int(g['n_models'].max())} models)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Mean invalidation rate of valid counterfactuals (bars: {confidence:.0%} bootstrap interval)",
                 y=1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 0.99))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save(fig, out_dir, "consistency_iv")


def iv_cost_figure(records: pd.DataFrame, out_dir: Path) -> list[Path]:
    """IV against L2 cost of every valid counterfactual: one row per dataset x variation,
    one column per method, one colour per objective."""
    from .figures import _grid, save
    valid = records[records["valid"]]
    if valid.empty:
        return []
    rows, methods, objectives = _layout(valid)
    fig, axes = _grid(len(rows), len(methods), 3.2, 2.6)
    colours = _colours(objectives)
    for i, (d, s, var) in enumerate(rows):
        for j, m in enumerate(methods):
            ax = axes[i, j]
            g = valid[(valid["dataset"] == d) & (valid["setting"] == s) & (valid["variation"] == var)
                      & (valid["method"] == m)]
            for obj in objectives:
                h = g[g["objective"] == obj]
                ax.scatter(h["l2"], h["iv"], s=8, alpha=0.45, color=colours[obj], label=_objective_label(obj),
                           linewidths=0)
            ax.set_ylim(-0.03, 1.03)
            where = d if s == "—" else f"{d} ({s})"
            ax.set_title(f"{where} · {var} · {m}", fontsize=9)
            ax.set_xlabel("L2 cost" if i == len(rows) - 1 else "")
            ax.set_ylabel("invalidation rate" if j == 0 else "")
            ax.grid(alpha=0.3)
    fig.suptitle("Invalidation rate vs L2 cost of each valid counterfactual (lower = more consistent)", y=1.01)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, markerscale=3,
               bbox_to_anchor=(0.5, 0.995))
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return save(fig, out_dir, "consistency_iv_cost")
