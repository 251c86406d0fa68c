"""Table 1 of the paper: % reduction of IP, IP* and cost, accuracy and robust accuracy.

Per-counterfactual values are first averaged per job, evaluation run and
``lambda_energy`` over the individuals, then (for the aggregated columns) over
``lambda_energy`` — the reference's two-stage mean (docs/deviations.md, R18).
By default *all* counterfactuals count, with validity reported beside them;
``valid_only`` keeps only valid ones, as the reference did, which biases IP and
cost whenever BL and CT differ in validity (docs/deviations.md, D7). IP, cost and
validity compare each pair on the individuals for which neither model already
predicts the target (``exclude_predicted``, :func:`~.pairing.paired_ce_units`); the
``Excl.`` column reports the share left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .load import Results, metric_filter, to_pandas
from .pairing import Reduction, paired_ce_units, paired_units, reduction
from .render import Table, num

CE_METRICS = ("validity", "ip", "cost")
RUN_KEYS = ("source", "job_id", "lambda_energy", "run")


@dataclass
class RunLevel:
    """Per (job, ``lambda_energy``, run) means over individuals, and what was read."""

    ce: pd.DataFrame            # RUN_KEYS + validity, ip, cost
    ip_star: pd.DataFrame       # RUN_KEYS + ip_star (clipped at 0)
    generator: str | None
    splits: tuple[str, ...]
    factuals: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    per_ce: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)  # + individual, target, predicted


def run_level(results: Results, *, valid_only: bool) -> RunLevel:
    """Read the evaluation once (one scan) and reduce it to per-run means in Arrow.

    Rows are never filtered (slow over thousands of chunks): each metric becomes a value
    column that is null on the other metrics' rows, and hash aggregations skip the nulls.
    ``valid_only`` applies to IP and cost; validity itself is over all counterfactuals.
    """
    cols = [*RUN_KEYS[1:], "individual", "target", "predicted", "generator", "split", "factual_index",
            "metric", "value"]
    table = results.read_table("evaluation", cols, metric_filter((*CE_METRICS, "ip_star")))
    if table is None:
        per_ce = pd.DataFrame({c: pd.Series(dtype="str" if c == "job_id" else "float64")
                               for c in [*RUN_KEYS, "individual", "target", "predicted", *CE_METRICS]})
        return RunLevel(pd.DataFrame(columns=[*RUN_KEYS, *CE_METRICS]),
                        pd.DataFrame(columns=[*RUN_KEYS, "ip_star"]), None, (),
                        notes=["no evaluation.parquet in the finished jobs"], per_ce=per_ce)
    notes = []
    gens = _labels(table, "generator")
    gen = ("ecco" if "ecco" in gens else gens[0]) if gens else None
    keep = None
    if len(gens) > 1:
        notes.append(f"evaluation generators {', '.join(gens)}: the tables use {gen}.")
        keep = pc.equal(table["generator"], gen)
    splits = tuple(_labels(table, "split"))

    def only(metric: str, values: Any) -> Any:
        mask = pc.equal(table["metric"], metric)
        mask = pc.and_(mask, keep) if keep is not None else mask
        return pc.if_else(mask, pc.cast(values, pa.float64()), pa.scalar(None, pa.float64()))

    keys = {k: table[k] for k in RUN_KEYS}
    ce, per_ce = _per_run(table, keys, only, valid_only)
    star = _ip_star(table, keys, only)
    if "predicted" not in table.column_names or per_ce["predicted"].isna().all():
        notes.append("No predicted classes recorded (results of ctgrid < 0.2): no individual was "
                     "excluded as already predicting its target.")
    return RunLevel(ce[[*RUN_KEYS, *CE_METRICS]], star, gen, splits,
                    ce[[*RUN_KEYS, "value"]].dropna(subset=["value"]), notes, per_ce)


def _per_run(table: pa.Table, keys: dict, only: Any,
             valid_only: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (job, lambda, run): means of validity, IP and cost (a mean per counterfactual
    first; IP and cost nulled where invalid if ``valid_only``) and a factual fingerprint;
    and the per-counterfactual values with ``target`` and ``predicted``."""
    n = table.num_rows
    labels = {c: (table[c] if c in table.column_names else pa.nulls(n, pa.int64()))
              for c in ("target", "predicted")}
    cols = {**keys, "individual": table["individual"], **labels,
            **{m: only(m, table["value"]) for m in CE_METRICS}}
    fingerprint = {"factual_index", "individual"} <= set(table.column_names)
    if fingerprint:  # sums of i and i * (individual + 1) over the factual indices i of a run
        fi = only("validity", table["factual_index"])
        cols["fa"] = fi
        cols["fb"] = pc.multiply(fi, pc.add(pc.cast(table["individual"], pa.float64()), 1.0))
    extra = ["fa", "fb"] if fingerprint else []
    ident = ["factual_index"] if "factual_index" in table.column_names else []
    if ident:
        cols["factual_index"] = table["factual_index"]
    per_ce = pa.table(cols).group_by([*RUN_KEYS, "individual", "target", "predicted", *ident]).aggregate(
        [(c, "mean") for c in (*CE_METRICS, *extra)])
    per_ce = per_ce.rename_columns([c.removesuffix("_mean") for c in per_ce.column_names])
    if valid_only:
        valid = pc.fill_null(pc.equal(per_ce["validity"], 1.0), False)
        for m in ("ip", "cost"):
            masked = pc.if_else(valid, per_ce[m], pa.scalar(None, pa.float64()))
            per_ce = per_ce.set_column(per_ce.column_names.index(m), m, masked)
    out = per_ce.group_by(list(RUN_KEYS)).aggregate(
        [(m, "mean") for m in CE_METRICS] + [(c, "sum") for c in extra])
    out = to_pandas(out.rename_columns([c.rsplit("_", 1)[0] if c.endswith(("_mean", "_sum")) else c
                                        for c in out.column_names]))
    out["value"] = (out["fa"].astype(str) + ":" + out["fb"].astype(str)) if fingerprint else np.nan
    return out, to_pandas(per_ce.select([*RUN_KEYS, "individual", "target", "predicted", *ident, *CE_METRICS]))


def _labels(table: pa.Table, column: str) -> list[str]:
    """Distinct non-empty values of a label column."""
    if column not in table.column_names:
        return []
    values = {x for chunk in table[column].chunks for x in chunk.unique().to_pylist()}
    return sorted(x for x in values if x)


def _ip_star(table: pa.Table, keys: dict, only: Any) -> pd.DataFrame:
    """IP* per (job, lambda, run): the evaluator attaches one value per (run, lambda, target)
    group to each of the group's rows, so take each group once, clip it at 0 (the reference's
    ``max(mmd, 0)``) and average over the groups (NaN groups of one CE left out)."""
    cols = {**keys, "ip_star": only("ip_star", table["value"])}
    if "target" in table.column_names:
        cols["target"] = table["target"]
    per_group = to_pandas(pa.table(cols).group_by([c for c in cols if c != "ip_star"])
                          .aggregate([("ip_star", "mean")])).dropna(subset=["ip_star_mean"])
    per_group["ip_star"] = per_group["ip_star_mean"].clip(lower=0)
    return per_group.groupby(list(RUN_KEYS))["ip_star"].mean().reset_index()


def _values(frame: pd.DataFrame, column: str, per_lambda: bool) -> pd.DataFrame:
    """``source, job_id, run[, lambda_energy], value``; averaged over lambda unless ``per_lambda``."""
    keys = list(RUN_KEYS) if per_lambda else ["source", "job_id", "run"]
    f = frame.dropna(subset=[column])
    if not per_lambda:
        f = f.groupby(list(RUN_KEYS))[column].mean().reset_index()
    return f.groupby(keys)[column].mean().rename("value").reset_index()


def factual_check(pairs: pd.DataFrame, fingerprints: pd.DataFrame) -> tuple[int, int]:
    """(matched, total) paired (run, lambda) sets whose CT and BL factuals agree."""
    if fingerprints.empty:
        return 0, 0
    u = paired_units(pairs, fingerprints, ("lambda_energy", "run"))
    return int((u["ct"] == u["bl"]).sum()), len(u)


def robust_eps(perf: pd.DataFrame) -> float | None:
    """The smallest nonzero FGSM budget in the performance records."""
    if perf.empty or "attack" not in perf:
        return None
    eps = perf.loc[(perf["attack"] == "fgsm") & (perf["eps"] > 0), "eps"]
    return float(eps.min()) if len(eps) else None


def job_accuracy(perf: pd.DataFrame, eps: float | None) -> pd.DataFrame:
    """``source, job_id, acc, robust`` (robust: FGSM at ``eps``; accuracy under attack)."""
    if perf.empty:
        return pd.DataFrame(columns=["source", "job_id", "acc", "robust"])
    clean = perf[(perf["metric"] == "accuracy") & (perf["attack"].isin(["none", None]))]
    acc = clean.groupby(["source", "job_id"])["value"].mean().rename("acc")
    rob = perf[(perf["attack"] == "fgsm") & (perf["metric"].isin(["robust_accuracy", "accuracy"]))
               & np.isclose(perf["eps"].astype(float), eps if eps is not None else -1.0)]
    rob = rob.groupby(["source", "job_id"])["value"].mean().rename("robust")
    return pd.concat([acc, rob], axis=1).reset_index()


def _cell(r: Reduction, suffix: str = "") -> str:
    if not r.n:
        return "—"
    star = "*" if r.star else ""
    interval = f" [{num(r.lo, 1)}, {num(r.hi, 1)}]" if np.isfinite(r.lo) else ""
    return f"{num(r.pct, 1)}{star}{interval}{suffix}"


@dataclass
class _Ctx:
    units: dict[str, pd.DataFrame]
    acc: pd.DataFrame
    opts: Any
    lambdas: list[float]
    excluded: pd.DataFrame


def _reduce(ctx: _Ctx, key: str, mask_jobs: set, parts: tuple, lam: float | None = None) -> Reduction:
    u = ctx.units[key]
    u = u[u["ct_job"].isin(mask_jobs)]
    if lam is not None:
        u = u[np.isclose(u["lambda_energy"], lam)]
    o = ctx.opts
    return reduction(u["ct"].to_numpy(), u["bl"].to_numpy(), n_boot=o.bootstrap, confidence=o.confidence,
                     seed_parts=(o.seed, *parts, key, lam), interval=o.interval,
                     groups=u["ct_job"].astype(str).to_numpy())


def _cost_jobs(group: pd.DataFrame, constrained: pd.DataFrame) -> tuple[set, str]:
    """CT jobs for the cost column: mutability-constrained ones if any, else the row's own."""
    if group["constrained"].all():
        return set(group["ct_job"]), "mut."
    if len(constrained):
        same = constrained[constrained["setting"] == group["setting"].iloc[0]]
        return set((same if len(same) else constrained)["ct_job"]), "mut."
    return set(group["ct_job"]), "same runs"


def _row(ctx: _Ctx, g: pd.DataFrame, cons: pd.DataFrame) -> tuple[list[str], list[dict]]:
    ds_name, setting = g["dataset"].iloc[0], g["setting"].iloc[0]
    jobs, parts = set(g["ct_job"]), (ds_name, setting)
    red = {f"ip@{lam:g}": _reduce(ctx, "ip_l", jobs, parts, lam) for lam in ctx.lambdas}
    red["ip"] = _reduce(ctx, "ip", jobs, parts)
    red["ip_star"] = _reduce(ctx, "ip_star", jobs, parts)
    cost_jobs, cost_src = _cost_jobs(g, cons)
    red["cost"] = _reduce(ctx, "cost", cost_jobs, parts)
    val = ctx.units["validity"]
    val = val[val["ct_job"].isin(jobs)]
    bl_keys = set(zip(g["bl_source"].astype(int), g["bl_job"]))
    acc = ctx.acc.set_index(["source", "job_id"])
    ct_acc = acc.reindex(list(zip(g["source"], g["ct_job"])))
    bl_acc = acc.reindex(sorted(bl_keys))
    levels = {"validity_bl": (val["bl"], 100), "validity_ct": (val["ct"], 100),
              "acc_bl": (bl_acc["acc"], 100), "acc_ct": (ct_acc["acc"], 100),
              "robust_bl": (bl_acc["robust"], 100), "robust_ct": (ct_acc["robust"], 100)}
    n_units = max(r.n for r in red.values())
    n_pairs = max(r.n_pairs for r in red.values())
    ex = ctx.excluded[ctx.excluded["ct_job"].isin(jobs)]
    n_ind, n_ex = int(ex["n_units"].sum()), int(ex["n_excluded"].sum())
    excl = 100.0 * n_ex / n_ind if n_ind else float("nan")
    cells = [ds_name, setting, *(_cell(red[f"ip@{lam:g}"]) for lam in ctx.lambdas), _cell(red["ip"]),
             _cell(red["ip_star"]), _cell(red["cost"], f" ({cost_src})" if red["cost"].n else ""),
             *(num(s.mean() * k, 1) for s, k in levels.values()), num(excl, 1), str(n_pairs), str(n_units)]
    records = [{"dataset": ds_name, "setting": setting, "quantity": q, **_asdict(r),
                "note": cost_src if q == "cost" else ""} for q, r in red.items()]
    records += [{"dataset": ds_name, "setting": setting, "quantity": q, "value": s.mean() * k,
                 "sd": s.std(ddof=1) * k if s.count() > 1 else np.nan, "n": int(s.count())}
                for q, (s, k) in levels.items()]
    records.append({"dataset": ds_name, "setting": setting, "quantity": "excluded_pct", "value": excl,
                    "n": n_ind, "n_dropped": n_ex,
                    "note": "excluded" if ctx.opts.exclude_predicted else "counted, not excluded"})
    return cells, records


def _asdict(r: Reduction) -> dict:
    return {"value": r.pct, "lo": r.lo, "hi": r.hi, "sd": r.sd, "diff": r.diff, "diff_lo": r.diff_lo,
            "diff_hi": r.diff_hi, "star": r.star, "n": r.n, "n_dropped": r.n_dropped, "n_pairs": r.n_pairs}


#: below this many paired units a significance star gets a warning note
SMALL_N = 5


def key_results(results: Results, pairs: pd.DataFrame, rl: RunLevel, perf: pd.DataFrame,
                opts: Any, ce_units: tuple[dict[str, pd.DataFrame], pd.DataFrame] | None = None) -> Table:
    """Table 1 (see module docstring); one row per dataset and CT setting of ``pairs``.

    ``ce_units``: :func:`~.pairing.paired_ce_units` of the paired rows of ``pairs``, when the
    caller has them already (they are computed otherwise)."""
    ok = pairs.dropna(subset=["bl_job"])
    main = ok[~ok["constrained"]]
    only_cons = set(ok["dataset"]) - set(main["dataset"])
    main = pd.concat([main, ok[ok["constrained"] & ok["dataset"].isin(only_cons)]])
    units, excluded = ce_units or paired_ce_units(ok, rl.per_ce, exclude_predicted=opts.exclude_predicted)
    units = dict(units)
    units["ip_star"] = paired_units(ok, _values(rl.ip_star, "ip_star", False), ("run",))
    lambdas = sorted(units["ip_l"]["lambda_energy"].unique().tolist())
    eps = robust_eps(perf)
    ctx = _Ctx(units, job_accuracy(perf, eps), opts, lambdas, excluded)
    rows, records = [], []
    for (d, _s, _c), g in main.groupby(["dataset", "setting", "constrained"], sort=True):
        cells, recs = _row(ctx, g, ok[ok["constrained"] & (ok["dataset"] == d)])
        rows.append(cells)
        records += recs
    header = ["Data", "Setting", *(f"IP λ={lam:g}" for lam in lambdas), "IP", "IP*", "Cost",
              "Val. BL", "Val. CT", "Acc BL", "Acc CT", "Acc* BL", "Acc* CT", "Excl.", "Pairs", "Units"]
    data = pd.DataFrame.from_records(records)
    reductions = data[data["quantity"] != "excluded_pct"] if len(data) else data
    dropped = int(reductions["n_dropped"].fillna(0).sum()) if "n_dropped" in data else 0
    notes = _notes(pairs, rl, opts, eps, factual_check(ok, rl.factuals), dropped)
    if len(reductions) and "star" in reductions and (reductions["star"].astype(bool)
                                                     & (reductions["n"] < SMALL_N)).any():
        notes.append(f"Warning: some starred entries rest on fewer than {SMALL_N} paired units (Units "
                     f"column); a bootstrap interval over so few units is not reliable.")
    return Table("key_results", "Key results: % reduction of implausibility and cost, CT vs BL (Table 1)",
                 header, rows, notes, data, n_text=2)


def _notes(pairs: pd.DataFrame, rl: RunLevel, opts: Any, eps: float | None,
           check: tuple[int, int], dropped: int) -> list[str]:
    conf = f"{100 * opts.confidence:g}%"
    interval = {
        "bootstrap": f"{conf} two-stage percentile bootstrap ({opts.bootstrap} resamples, seed {opts.seed}): "
                     "the model pairs (Pairs: one per training seed and setting) resampled, then the "
                     "evaluation runs within each drawn pair; estimates are means over pairs of the "
                     "per-pair means. A row with one pair resamples its runs only: a within-model "
                     "interval that says nothing about another training seed",
        "within-model": f"{conf} within-model percentile bootstrap ({opts.bootstrap} resamples, seed "
                        f"{opts.seed}): the units of all the row's model pairs pooled and resampled, the "
                        "trained models held fixed (no training-seed variation; --interval within-model)",
        "runs": f"{conf} range of the per-unit values (the reference's interval, no resampling)"}[opts.interval]
    n_missing = int(pairs["bl_job"].isna().sum())
    notes = [
        "IP/IP*/Cost: % reduction 100·(1 − mean_u CT_u/BL_u) over paired units u = (CT job, "
        "evaluation run); CT_u, BL_u are means over individuals (and over λ for IP, IP*, Cost); "
        "positive = CT lower than its baseline.",
        f"[lo, hi]: {interval}. *: the {conf} interval of the mean paired difference CT − BL "
        "excludes zero.",
        ("Counterfactuals: valid ones only (validity = 1), as the reference — biased when BL and CT "
         "differ in validity" if opts.valid_only else
         "Counterfactuals: all, valid or not (the reference kept only valid ones)")
        + "; Val.: % valid over all counterfactuals.",
        ("Excl.: % of (run, individual) units left out because the CT or the BL model already "
         "predicts the target at the factual; IP, Cost and Val. use the others (docs/deviations.md, M5, D6)."
         if opts.exclude_predicted else
         "Excl.: % of (run, individual) units where the CT or the BL model already predicts the "
         "target at the factual — counted here (--keep-predicted), not excluded."),
        "IP*: unbiased squared MMD of each (run, λ, target class) group of counterfactuals, clipped "
        "at 0 as the reference and averaged over the groups; a set statistic over all "
        "counterfactuals of the group (neither --valid-only nor the exclusion of "
        "already-predicted targets filters it).",
        "Cost: (mut.) from jobs with mutability constraints; (same runs) from this row's unconstrained "
        "runs.",
        f"Acc, Acc*: test accuracy (%), clean and under FGSM at ε={eps:g}; mean over the row's CT "
        "models and their distinct baselines." if eps is not None else
        "Acc: test accuracy (%); no FGSM records (Acc* —).",
        "Rows: one per CT setting (label: the grid's varied parameters)." if not opts.pool_settings
        else "Rows: all CT settings of a dataset pooled into one row.",
        f"Pairing: CT jobs with the vanilla job of the same data, model, replicate and schedule: "
        f"{len(pairs) - n_missing} paired, {n_missing} without a finished baseline (left out).",
    ]
    if check[1]:
        notes.append(f"Same factuals for CT and BL in {check[0]} of {check[1]} paired (run, λ) sets.")
    if rl.splits:
        notes.append(f"Factuals drawn from the {', '.join(rl.splits)} split; evaluation generator "
                     f"{rl.generator}.")
    if dropped:
        notes.append("Some units had a zero baseline value: left out of the ratios, kept in the "
                     "paired differences (n_dropped in the CSV).")
    return notes + rl.notes
