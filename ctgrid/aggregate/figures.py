"""Figures of the paper's appendix (matplotlib, Agg backend, PNG and PDF).

- ``outcomes_<metric>*``: CT's outcomes across hyper-parameters, in :mod:`.outcomes`.
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
from .load import Results, setting_axes  # noqa: E402
from .pairing import SHORT  # noqa: E402

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


#: Axes that set the per-epoch share of mature counterfactuals, most direct first: the lines of
#: the maturity figure are the first two of these that the grid varies (the rest pooled).
MATURITY_AXES = ("generator.tau", "generator.maxiter", "training.burnin", "generator.name",
                 "training.lambda_reg", "generator.lr", "training.nce", "training.nepochs",
                 "generator.lambda_energy", "training.lambda_div", "training.lambda_adv")
_STYLES = ("-", "--", ":", "-.")


#: a varied axis that changes the epoch axis itself: never pooled, its values are panels
FACET = "training.nepochs"


def maturity_axes(results: Results, source: int) -> tuple[list[str], list[str]]:
    """(line axes, pooled axes) of ``source`` for the maturity figure: up to two varied setting
    axes in :data:`MATURITY_AXES` order (then any other); the second only with <= 4 values
    (one line style each). A varied :data:`FACET` that is no line axis is neither: it splits
    the panels (pooling 50- and 100-epoch runs would mix their burn-in boundaries)."""
    ct = results.jobs[(results.jobs["source"] == source) & (results.jobs["training.objective"] != "vanilla")]
    values = results.axis_values(source).reindex(ct["job_id"])
    varied = [a for a in setting_axes(results, source, ct["training.objective"].nunique())
              if a in values and values[a].nunique() > 1]
    order = sorted(varied, key=lambda a: MATURITY_AXES.index(a) if a in MATURITY_AXES else len(MATURITY_AXES))
    lines = order[:2]
    if len(lines) == 2 and min(values[a].nunique() for a in lines) > len(_STYLES):
        lines = lines[:1]
    if len(lines) == 2 and values[lines[1]].nunique() > len(_STYLES):
        lines = lines[::-1]    # the axis with more values takes the colours
    return lines, [a for a in order if a not in lines and a != FACET]


def _facet(results: Results, source: int) -> str | None:
    lines, pooled = maturity_axes(results, source)
    values = results.axis_values(source)
    varied = FACET in values and values[FACET].nunique() > 1
    return FACET if varied and FACET not in lines else None


def maturity_data(results: Results) -> pd.DataFrame:
    """Per (results directory, dataset, line, epoch): ``mean``, ``sd`` and ``n`` over the CT jobs
    of the logged share of training counterfactuals that reached τ (the history's
    ``converged``; epochs without a CE phase are NaN there and left out). Lines are the
    values of :func:`maturity_axes` (columns ``colour``, ``style``: the values, None if unused);
    ``facet``: the job's number of epochs where that varies and is no line axis, else None."""
    cols = ["source", "dataset", "facet", "colour", "style", "epoch", "mean", "sd", "n"]
    ct = results.jobs[results.jobs["training.objective"] != "vanilla"]
    hist = results.history(["epoch", *SHARE_COLUMNS]) if len(ct) else pd.DataFrame()
    share = next((c for c in SHARE_COLUMNS if c in hist), None)
    if share is None:
        return pd.DataFrame(columns=cols)
    hist = hist.rename(columns={share: "share"}).dropna(subset=["share"])
    frames = []
    for src in results.sources:
        h = hist[hist["source"] == src.index].merge(ct[["source", "job_id", "data.name"]], on=["source", "job_id"])
        if h.empty:
            continue
        lines, _ = maturity_axes(results, src.index)
        facet = _facet(results, src.index)
        values = results.axis_values(src.index)
        ids = h["job_id"]
        h = h.assign(**{k: values[a].reindex(ids).to_numpy() if a else None for k, a in
                        (("facet", facet), ("colour", lines[0] if lines else None),
                         ("style", lines[1] if len(lines) > 1 else None))})
        keys = ["facet", "colour", "style"]
        s = (h.fillna({k: "" for k in keys}).groupby(["data.name", *keys, "epoch"])["share"]
             .agg(mean="mean", sd="std", n="size").reset_index().rename(columns={"data.name": "dataset"}))
        frames.append(s.assign(source=src.index, **{k: s[k].replace("", None) for k in keys}))
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def maturity(results: Results, out_dir: Path) -> list[Path]:
    """:func:`maturity_data` drawn: one panel per (grid,) dataset, a line per setting of the
    line axes (colour: the first, style: the second), ± sd bands when at most four lines."""
    data = maturity_data(results)
    if data.empty:
        return []
    data = data.assign(facet_key=data["facet"].fillna(-1))
    panels = sorted(set(zip(data["source"], data["dataset"], data["facet_key"])))
    fig, axs = _panels(len(panels), 4.2, 3.2)
    pooled: set[str] = set()
    for i, (ax, (src, d, f)) in enumerate(zip(axs, panels)):
        lines, rest = maturity_axes(results, int(src))
        pooled.update(SHORT.get(a, a) for a in rest)
        h = data[(data["source"] == src) & (data["dataset"] == d) & (data["facet_key"] == f)]
        colours = sorted(h["colour"].dropna().unique(), key=_level_key)
        styles = sorted(h["style"].dropna().unique(), key=_level_key)
        n_lines = h.groupby(["colour", "style"], dropna=False).ngroups
        for (c, st), g in h.groupby(["colour", "style"], dropna=False, sort=False):
            label = ", ".join(f"{SHORT.get(a, a)}={_value_text(v)}" for a, v in zip(lines, (c, st)))
            colour = f"C{colours.index(c) % 10}" if c in colours else "C0"
            style = _STYLES[styles.index(st) % len(_STYLES)] if st in styles else "-"
            g = g.sort_values("epoch")
            ax.plot(g["epoch"], g["mean"], lw=1.2, color=colour, ls=style, label=label or "CT",
                    marker="o" if len(g) < 3 else None)  # one or two epochs: dots
            if n_lines <= 4:
                ax.fill_between(g["epoch"], g["mean"] - g["sd"].fillna(0), g["mean"] + g["sd"].fillna(0),
                                color=colour, alpha=0.15, lw=0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        title = d if len(results.sources) == 1 else f"{results.sources[int(src)].name} — {d}"
        ax.set_title(title + (f", {f:g} epochs" if f != -1 else ""), fontsize=9)
        if i % 3 == 0:
            ax.set_ylabel("share of mature (converged) CEs")
    spread = "mean ± sd over jobs" if data.groupby(["source", "dataset", "facet_key"]).apply(
        lambda g: g.groupby(["colour", "style"], dropna=False).ngroups).max() <= 4 else "mean over jobs"
    more = f"; pooled over {', '.join(sorted(pooled))}" if pooled else ""
    fig.suptitle(f"Training counterfactuals that reached τ, per epoch\n({spread}{more})", fontsize=10)
    fig.tight_layout()
    _line_legend(fig, data, [maturity_axes(results, int(s))[0] for s, _, _ in panels])
    return save(fig, out_dir, "maturity")


def _line_legend(fig: plt.Figure, data: pd.DataFrame, lines: list[list[str]]) -> None:
    """One legend right of the panels: a coloured entry per value of the colour axis and a
    black one per line style of the style axis (not one per combination)."""
    from matplotlib.lines import Line2D
    names = lines[0] if lines and all(x == lines[0] for x in lines) else []
    handles, labels = [], []
    colours = sorted(data["colour"].dropna().unique(), key=_level_key)
    for k, c in enumerate(colours):
        handles.append(Line2D([], [], color=f"C{k % 10}", lw=1.5))
        labels.append(f"{SHORT.get(names[0], names[0])}={_value_text(c)}" if names else _value_text(c))
    for k, st in enumerate(sorted(data["style"].dropna().unique(), key=_level_key)):
        handles.append(Line2D([], [], color="black", lw=1.2, ls=_STYLES[k % len(_STYLES)]))
        labels.append(f"{SHORT.get(names[1], names[1])}={_value_text(st)}" if len(names) > 1
                      else _value_text(st))
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def _level_key(v: Any) -> tuple:
    try:
        return (0, float(v), str(v))
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


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
            ax.fill_between(s.index, np.clip(100 * (s["mean"] - s["std"]), 0, 100),
                            np.clip(100 * (s["mean"] + s["std"]), 0, 100), color=line.get_color(), alpha=0.15, lw=0)
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


#: above this many Table 1 rows the key-results figure shows each dataset's distribution of
#: settings instead of one row per setting
MAX_KEY_ROWS = 30
#: horizontal box plots (``vert`` is deprecated from matplotlib 3.10, ``orientation`` new there)
_HORIZONTAL = ({"orientation": "horizontal"} if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
               else {"vert": False})


def robust_limits(values: np.ndarray, pad: float = 0.08) -> tuple[float, float]:
    """Axis limits that show the bulk of ``values`` (the 2nd-98th percentiles widened by the
    inter-quartile range) but always 0, so that one wild value cannot squash the rest."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return -1.0, 1.0
    q02, q25, q75, q98 = np.quantile(v, [0.02, 0.25, 0.75, 0.98])
    lo, hi = min(q02 - 1.5 * (q75 - q25), 0.0), max(q98 + 1.5 * (q75 - q25), 0.0)
    lo, hi = max(lo, v.min()), min(hi, v.max())
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = (hi - lo) or 1.0
    return lo - pad * span, hi + pad * span


def _clipped(ax: Any, values: np.ndarray, y: np.ndarray, lim: tuple[float, float]) -> None:
    """Mark values beyond ``lim`` as triangles at the panel's edge, with their count."""
    for side, mask, marker in (("lo", values < lim[0], "<"), ("hi", values > lim[1], ">")):
        if mask.any():
            edge = lim[0] if side == "lo" else lim[1]
            ax.plot(np.full(mask.sum(), edge), y[mask], ls="none", marker=marker, ms=5, color="tab:red",
                    clip_on=False)
            ax.annotate(f"{int(mask.sum())} beyond", (edge, float(y[mask].min())), fontsize=6, color="tab:red",
                        ha="left" if side == "lo" else "right", va="bottom", xytext=(0, 4),
                        textcoords="offset points")


def key_results_figure(data: pd.DataFrame, confidence: float, out_dir: Path) -> list[Path]:
    """Table 1 as dots with intervals: the % reduction (positive = CT lower) of IP per test-time
    λ, IP (all λ), IP* and cost, one panel per quantity and one row per dataset (and CT
    setting); beyond :data:`MAX_KEY_ROWS` rows, one row per dataset with the distribution of its
    settings' values (box and dots). Axes follow the bulk of the values (:func:`robust_limits`);
    values beyond are marked at the edge."""
    if data.empty or "quantity" not in data:
        return []
    d = data[data["quantity"].astype(str).str.match(r"^(ip(@.*)?|ip_star|cost)$")].dropna(subset=["value"])
    if d.empty:
        return []
    d = d.assign(row=[r if s in ("—", "", None) else f"{r} ({s})" for r, s in zip(d["dataset"], d["setting"])])
    rows = sorted(set(d["row"]))
    if len(rows) > MAX_KEY_ROWS:
        return _key_distribution(d, out_dir)
    lambdas = sorted({q for q in d["quantity"] if q.startswith("ip@")}, key=lambda q: float(q[3:]))
    panels = [("IP by test-time λ", lambdas)] if lambdas else []
    panels += [(label, [q]) for q, label in (("ip", "IP (all λ)"), ("ip_star", "IP*"), ("cost", "Cost"))
               if (d["quantity"] == q).any()]
    fig, axes = _panels(len(panels), 3.3, max(2.4, 0.9 + 0.32 * len(rows)), max_cols=4)
    y = np.arange(len(rows))
    for ax, (title, quantities) in zip(axes, panels):
        width = 0.7 / len(quantities)
        sel = d[d["quantity"].isin(quantities)]
        lim = robust_limits(np.concatenate([sel["value"], sel["lo"].dropna(), sel["hi"].dropna()]))
        for k, q in enumerate(quantities):
            g = d[d["quantity"] == q].set_index("row").reindex(rows)
            off = (k - (len(quantities) - 1) / 2) * width
            err = np.vstack([g["value"] - g["lo"], g["hi"] - g["value"]])
            label = f"λ={q[3:]}" if q.startswith("ip@") else None
            ax.errorbar(g["value"], y + off, xerr=np.nan_to_num(err, nan=0.0), fmt="o", ms=3.5, capsize=2,
                        lw=1, label=label)
            _clipped(ax, g["value"].to_numpy(float), y + off, lim)
        ax.set_xlim(*lim)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_yticks(y, rows if ax is axes[0] else [""] * len(rows), fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("% reduction vs BL", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Key results (Table 1): % reduction CT vs BL (positive = CT lower) with {confidence:.0%} "
                 "bootstrap intervals", fontsize=10)
    fig.tight_layout()
    if lambdas:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels),
                   fontsize=7, frameon=False, title="test-time λ (first panel)", title_fontsize=7)
    return save(fig, out_dir, "key_results")


def _key_distribution(d: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per dataset, the distribution over its CT settings of IP (all λ), IP* and cost."""
    datasets = sorted(d["dataset"].unique())
    panels = [(q, label) for q, label in (("ip", "IP (all λ)"), ("ip_star", "IP*"), ("cost", "Cost"))
              if (d["quantity"] == q).any()]
    fig, axes = _panels(len(panels), 3.6, max(2.4, 1.0 + 0.5 * len(datasets)), max_cols=3)
    y = np.arange(len(datasets))
    n_settings = d[d["quantity"] == panels[0][0]].groupby("dataset")["row"].nunique()
    for ax, (q, title) in zip(axes, panels):
        g = d[d["quantity"] == q]
        lim = robust_limits(g["value"].to_numpy(float))
        vals = [g.loc[g["dataset"] == ds, "value"].to_numpy(float) for ds in datasets]
        ax.boxplot([np.clip(v, *lim) for v in vals], positions=y, widths=0.6, showfliers=False,
                   manage_ticks=False, **_HORIZONTAL)
        jitter = np.random.default_rng(0)
        for i, v in enumerate(vals):
            yy = i + jitter.uniform(-0.2, 0.2, len(v))
            inside = (v >= lim[0]) & (v <= lim[1])
            ax.plot(v[inside], yy[inside], ls="none", marker="o", ms=2, alpha=0.35, color="tab:blue")
            _clipped(ax, v, yy, lim)
        ax.set_xlim(*lim)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        labels = [f"{ds} ({int(n_settings.get(ds, 0))})" for ds in datasets]
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(datasets), fontsize=8)
        ax.set_ylim(len(datasets) - 0.5, -0.5)
        ax.set_xlabel("% reduction vs BL", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Key results (Table 1) across CT settings: each dot one setting's % reduction vs BL "
                 "(positive = CT lower)\n"
                 "(box: quartiles; in brackets: settings per dataset; the table lists every setting)", fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "key_results")
