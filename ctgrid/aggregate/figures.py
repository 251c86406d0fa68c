"""Figures of the paper's appendix (matplotlib, Agg backend, PNG and PDF).

- ``outcomes_<metric>``: % reduction of IP / cost vs the matching baseline (positive = CT
  lower, the sign of Table 1) across
  hyper-parameters, box plots over (run, ``lambda_energy``) units, one row per
  dataset and one column per varied grid axis (docs/deviations.md, R20).
- ``maturity``: per-epoch share of converged ("mature") counterfactuals by ``tau``
  and ``lambda_reg``, mean ± std over jobs (epochs without a CE phase are NaN in
  the history and left out, unlike the reference's logged 1.0; docs/deviations.md, D21).
- ``robust_accuracy``: test accuracy vs FGSM budget, BL vs CT (mean ± std over jobs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import _atomic  # noqa: E402
from .load import Results  # noqa: E402
from .pairing import SHORT  # noqa: E402

MAX_LEVELS = 12
#: History column of the per-epoch share of converged CEs (the runner's name first).
SHARE_COLUMNS = ("converged", "converged_share")


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically and close the figure."""
    paths = []
    for ext in ("png", "pdf"):
        def write(fh: BinaryIO, e: str = ext) -> None:
            fig.savefig(fh, format=e, dpi=150, bbox_inches="tight")
        paths.append(_atomic.atomic_write(out_dir / f"{stem}.{ext}", write).path)
    plt.close(fig)
    return paths


def _grid(nrows: int, ncols: int, w: float = 3.4, h: float = 2.8) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return fig, axes


def _panels(n: int, w: float, h: float, max_cols: int = 3) -> tuple[plt.Figure, list]:
    """``n`` panels wrapped into rows of at most ``max_cols``; unused axes hidden."""
    ncols = max(1, min(n, max_cols))
    nrows = -(-n // ncols)
    fig, axs = _grid(nrows, ncols, w, h)
    flat = list(axs.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _axis_name(axis: str) -> str:
    return SHORT.get(axis, axis)


def outcome_boxplots(results: Results, units: pd.DataFrame, metric: str, out_dir: Path) -> list[Path]:
    """Box plots of the % reduction ``100 (BL - CT) / |BL|`` per paired (run, lambda) unit for
    ``metric`` — positive = CT lower, the sign of Table 1.

    ``units``: :func:`~.pairing.paired_ce_units`'s per-(run, λ) frame of ``metric``
    (pair columns, ``run``, ``lambda_energy``, ``ct``, ``bl``). With varied grid axes: one
    row per dataset, one column per axis; without: one panel, one box per dataset.
    """
    units = units[units["bl"] != 0]
    if units.empty:
        return []
    units = units.assign(change=100 * (units["bl"] - units["ct"]) / units["bl"].abs())
    jobs = results.jobs.set_index(["source", "job_id"])
    axes_used = _facet_axes(results, units)
    datasets = sorted(units["dataset"].unique())
    name = metric.upper() if metric == "ip" else metric
    title = (f"{'Implausibility (IP)' if metric == 'ip' else 'Cost'}: CT vs matching baseline"
             f"{' across hyper-parameters' if axes_used else ''} (% reduction; positive = CT lower, as Table 1)")
    if not axes_used:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.85 * len(datasets)), 3.6))
        ax.boxplot([units.loc[units["dataset"] == d, "change"].to_numpy() for d in datasets],
                   showfliers=False)
        ax.set_xticks(range(1, len(datasets) + 1), datasets, rotation=30 if len(datasets) > 5 else 0,
                      fontsize=8)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel(f"% reduction in {name} vs BL\n(per run and λ)", fontsize=8)
        head, _, tail = title.rpartition(" (")
        ax.set_title(f"{head}\n({tail}", fontsize=10)
        fig.tight_layout()
        return save(fig, out_dir, f"outcomes_{metric}")
    if len(axes_used) == 1:   # one axis: the datasets wrap into rows of three panels
        flat = _panels(len(datasets), 3.4, 2.8)[1]
        fig = flat[0].figure
        cells = {(i, 0): ax for i, ax in enumerate(flat)}
    else:                     # rows: datasets, columns: the varied axes
        fig, grid = _grid(len(datasets), len(axes_used))
        cells = {(i, j): grid[i, j] for i in range(len(datasets)) for j in range(len(axes_used))}
    for i, d in enumerate(datasets):
        u = units[units["dataset"] == d]
        for j, axis in enumerate(axes_used):
            ax = cells[i, j]
            level = jobs.loc[list(zip(u["source"], u["ct_job"])), axis].astype(str).to_numpy()
            labels = sorted(set(level), key=_sort_key)
            groups = [u["change"].to_numpy()[level == lv] for lv in labels]
            ax.boxplot(groups, showfliers=False)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30 if len(labels) > 4 else 0,
                           fontsize=8)
            ax.axhline(0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{d} — {_axis_name(axis)}", fontsize=9)
            if j == 0 and (len(axes_used) > 1 or i % 3 == 0):
                ax.set_ylabel(f"% reduction in {name} vs BL", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, f"outcomes_{metric}")


def _sort_key(v: str) -> tuple:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def _facet_axes(results: Results, units: pd.DataFrame) -> list[str]:
    """Varied grid axes that take 2..MAX_LEVELS values among the plotted CT jobs."""
    skip = {"data.name", "training.seed", "data.mutability", "evaluation.mutability"}
    axes: list[str] = []
    for src in results.sources:
        axes += [a for a in src.varied if a not in skip and a not in axes]
    jobs = results.jobs.set_index(["source", "job_id"])
    ct = jobs.loc[sorted(set(zip(units["source"], units["ct_job"])))]
    def varies(a: str) -> bool:  # within some dataset, with few enough levels to draw
        n = ct.groupby("data.name")[a].agg(lambda s: s.astype(str).nunique())
        return a in ct and bool((n > 1).any()) and ct[a].astype(str).nunique() <= MAX_LEVELS
    return [a for a in axes if a in ct and varies(a)]


def maturity(results: Results, out_dir: Path) -> list[Path]:
    """Per-epoch share of converged counterfactuals (mean ± std over jobs) by tau and lambda_reg."""
    ct = results.jobs[results.jobs["training.objective"] != "vanilla"]
    if ct.empty:
        return []
    hist = results.history(["epoch", *SHARE_COLUMNS])
    share = next((c for c in SHARE_COLUMNS if c in hist), None)
    if share is None:
        return []
    keys = ["source", "job_id", "data.name", "generator.tau", "training.lambda_reg"]
    hist = hist.merge(ct[keys], on=["source", "job_id"]).rename(columns={share: "share"})
    hist = hist.dropna(subset=["share"])
    if hist.empty:
        return []
    datasets = sorted(hist["data.name"].unique())
    fig, axs = _panels(len(datasets), 4.2, 3.2)
    for i, (ax, d) in enumerate(zip(axs, datasets)):
        h = hist[hist["data.name"] == d]
        for (tau, lam), g in h.groupby(["generator.tau", "training.lambda_reg"], sort=True):
            s = g.groupby("epoch")["share"].agg(["mean", "std"]).fillna({"std": 0.0})
            line, = ax.plot(s.index, s["mean"], lw=1.2, marker="o" if len(s) < 3 else None,  # 1 epoch: a dot
                            label=f"τ={tau:g}, λ_reg={lam:g}")
            ax.fill_between(s.index, s["mean"] - s["std"], s["mean"] + s["std"],
                            color=line.get_color(), alpha=0.15, lw=0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        ax.set_title(d, fontsize=9)
        if i % 3 == 0:
            ax.set_ylabel("share of mature (converged) CEs")
    fig.suptitle("Training counterfactuals that reached τ, per epoch (mean ± sd over jobs)", fontsize=10)
    _legend_outside(fig, axs)
    return save(fig, out_dir, "maturity")


def _legend_outside(fig: plt.Figure, axes: list) -> None:
    """One legend for the figure, right of the panels (never over the data)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.tight_layout()
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=8, frameon=False)


def robust_accuracy(results: Results, perf: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Test accuracy vs attack budget for BL and CT (FGSM solid, PGD dashed), mean ± std over jobs."""
    if perf.empty or "attack" not in perf:
        return []
    p = perf.merge(results.jobs[["source", "job_id", "data.name", "training.objective"]],
                   on=["source", "job_id"])
    clean = p[(p["metric"] == "accuracy") & p["attack"].isin(["none", None])].assign(eps=0.0)
    attacked = p[p["attack"].isin(["fgsm", "pgd"]) & p["metric"].isin(["robust_accuracy", "accuracy"])]
    if attacked.empty:
        return []
    p = pd.concat([clean.assign(attack="fgsm"), clean.assign(attack="pgd"), attacked])
    p = p.assign(model=np.where(p["training.objective"] == "vanilla", "BL", "CT"))
    datasets = sorted(p["data.name"].unique())
    fig, axs = _panels(len(datasets), 3.6, 3.0)
    for i, (ax, d) in enumerate(zip(axs, datasets)):
        for (attack, model), g in p[p["data.name"] == d].groupby(["attack", "model"], sort=True):
            if attack == "pgd" and not (attacked["attack"] == "pgd").any():
                continue
            s = g.groupby(["eps", "job_id"])["value"].mean().groupby("eps").agg(["mean", "std"])
            s = s.fillna({"std": 0.0})
            bl = model == "BL"   # BL: large hollow markers, CT: small filled ones (visible when equal)
            line, = ax.plot(s.index, 100 * s["mean"], marker="o", ms=7 if bl else 3.5,
                            mfc="none" if bl else None, ls="--" if attack == "pgd" else "-",
                            label=f"{model} ({attack.upper()})", color="tab:blue" if bl else "tab:orange")
            ax.fill_between(s.index, 100 * (s["mean"] - s["std"]), 100 * (s["mean"] + s["std"]),
                            color=line.get_color(), alpha=0.15, lw=0)
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(0.0, lo), min(100.0, hi) + 0.5)
        ax.set_xlabel("attack budget ε (L∞, data units)")
        ax.set_title(d, fontsize=9)
        if i % 3 == 0:
            ax.set_ylabel("test accuracy (%)")
    n_eps = p["eps"].nunique()
    note = "" if n_eps > 2 else " — one budget evaluated; set evaluation.fgsm_eps for a sweep"
    fig.suptitle(f"Robust accuracy, BL vs CT (mean ± sd over jobs){note}", fontsize=10)
    _legend_outside(fig, axs)
    return save(fig, out_dir, "robust_accuracy")


def key_results_figure(data: pd.DataFrame, confidence: float, out_dir: Path) -> list[Path]:
    """Table 1 as dots with intervals: the % reduction (positive = CT lower) of IP per test-time
    λ, IP (all λ), IP* and cost, one row per dataset (and CT setting), one panel per quantity."""
    if data.empty or "quantity" not in data:
        return []
    d = data[data["quantity"].astype(str).str.match(r"^(ip(@.*)?|ip_star|cost)$")].dropna(subset=["value"])
    if d.empty:
        return []
    d = d.assign(row=[r if s in ("—", "", None) else f"{r} ({s})" for r, s in zip(d["dataset"], d["setting"])])
    rows = sorted(set(d["row"]))
    lambdas = sorted({q for q in d["quantity"] if q.startswith("ip@")}, key=lambda q: float(q[3:]))
    panels = [("IP by test-time λ", lambdas)] if lambdas else []
    panels += [(label, [q]) for q, label in (("ip", "IP (all λ)"), ("ip_star", "IP*"), ("cost", "Cost"))
               if (d["quantity"] == q).any()]
    fig, axes = _panels(len(panels), 3.3, max(2.4, 0.9 + 0.32 * len(rows)), max_cols=4)
    y = np.arange(len(rows))
    for ax, (title, quantities) in zip(axes, panels):
        width = 0.7 / len(quantities)
        for k, q in enumerate(quantities):
            g = d[d["quantity"] == q].set_index("row").reindex(rows)
            off = (k - (len(quantities) - 1) / 2) * width
            err = np.vstack([g["value"] - g["lo"], g["hi"] - g["value"]])
            label = f"λ={q[3:]}" if q.startswith("ip@") else None
            ax.errorbar(g["value"], y + off, xerr=np.nan_to_num(err, nan=0.0), fmt="o", ms=3.5, capsize=2,
                        lw=1, label=label)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_yticks(y, rows if ax is axes[0] else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("% reduction vs BL (positive = CT lower)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if len(quantities) > 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle(f"Key results (Table 1): % reduction CT vs BL with {confidence:.0%} bootstrap intervals",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "key_results")
