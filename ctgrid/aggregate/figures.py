"""Figures of the paper's appendix (matplotlib, Agg backend, PNG and PDF).

- ``outcomes_<metric>``: % change of IP / cost vs the matching baseline across
  hyper-parameters, box plots over (run, ``lambda_energy``) units, one row per
  dataset and one column per varied grid axis (docs/deviations.md, R20).
- ``maturity``: per-epoch share of converged ("mature") counterfactuals by ``tau``
  and ``lambda_reg``, mean ± std over jobs (epochs without a CE phase are NaN in
  the history and left out, unlike the reference's logged 1.0; docs/deviations.md, D21).
- ``robust_accuracy``: test accuracy vs FGSM budget, BL vs CT (mean ± std over jobs).
"""
from __future__ import annotations

from pathlib import Path

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
        def write(tmp: str, e: str = ext) -> None:
            fig.savefig(tmp, format=e, dpi=120, bbox_inches="tight")
        paths.append(_atomic.atomic_write(out_dir / f"{stem}.{ext}", write))
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
    """Box plots of ``100 (CT - BL) / |BL|`` per paired (run, lambda) unit for ``metric``.

    ``units``: :func:`~.pairing.paired_ce_units`'s per-(run, λ) frame of ``metric``
    (pair columns, ``run``, ``lambda_energy``, ``ct``, ``bl``). With varied grid axes: one
    row per dataset, one column per axis; without: one panel, one box per dataset.
    """
    units = units[units["bl"] != 0]
    if units.empty:
        return []
    units = units.assign(change=100 * (units["ct"] - units["bl"]) / units["bl"].abs())
    jobs = results.jobs.set_index(["source", "job_id"])
    axes_used = _facet_axes(results, units)
    datasets = sorted(units["dataset"].unique())
    name = metric.upper() if metric == "ip" else metric
    title = (f"{'Implausibility (IP)' if metric == 'ip' else 'Cost'}: CT vs matching baseline"
             f"{' across hyper-parameters' if axes_used else ''} (negative = CT lower)")
    if not axes_used:
        fig, ax = plt.subplots(figsize=(1.2 + 0.85 * len(datasets), 3.6))
        ax.boxplot([units.loc[units["dataset"] == d, "change"].to_numpy() for d in datasets],
                   showfliers=False)
        ax.set_xticks(range(1, len(datasets) + 1), datasets, rotation=30 if len(datasets) > 5 else 0,
                      fontsize=8)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel(f"% change in {name} vs BL\n(per run and λ)", fontsize=8)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        return save(fig, out_dir, f"outcomes_{metric}")
    fig, axs = _grid(len(datasets), len(axes_used))
    for i, d in enumerate(datasets):
        u = units[units["dataset"] == d]
        for j, axis in enumerate(axes_used):
            ax = axs[i, j]
            level = jobs.loc[list(zip(u["source"], u["ct_job"])), axis].astype(str).to_numpy()
            labels = sorted(set(level), key=_sort_key)
            groups = [u["change"].to_numpy()[level == lv] for lv in labels]
            ax.boxplot(groups, showfliers=False)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30 if len(labels) > 4 else 0,
                           fontsize=8)
            ax.axhline(0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{d} — {_axis_name(axis)}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"% change in {name} vs BL", fontsize=8)
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
            line, = ax.plot(s.index, s["mean"], lw=1.2, label=f"τ={tau:g}, λ_reg={lam:g}")
            ax.fill_between(s.index, s["mean"] - s["std"], s["mean"] + s["std"],
                            color=line.get_color(), alpha=0.15, lw=0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        ax.set_title(d, fontsize=9)
        ax.legend(fontsize=7)
        if i % 3 == 0:
            ax.set_ylabel("share of mature (converged) CEs")
    fig.tight_layout()
    return save(fig, out_dir, "maturity")


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
            line, = ax.plot(s.index, 100 * s["mean"], marker="o", ms=3,
                            ls="--" if attack == "pgd" else "-", label=f"{model} ({attack.upper()})",
                            color="tab:blue" if model == "BL" else "tab:orange")
            ax.fill_between(s.index, 100 * (s["mean"] - s["std"]), 100 * (s["mean"] + s["std"]),
                            color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlabel("attack budget ε")
        ax.set_title(d, fontsize=9)
        ax.legend(fontsize=7)
        if i % 3 == 0:
            ax.set_ylabel("test accuracy (%)")
    fig.tight_layout()
    return save(fig, out_dir, "robust_accuracy")
