"""Figures of CT's outcomes across hyper-parameters (the appendix's "average outcomes" figures).

Every figure shows the % reduction of a measure (IP or cost) vs the matching baseline,
``100 (BL − CT) / |BL|`` — positive = CT lower, the sign of Table 1 — and its kind
follows the shape of the grid (per results directory, its varied setting axes):

- no varied axis (a final grid): ``outcomes_<m>.png``, one box per dataset;
- one axis: ``outcomes_<m>.png``, one panel per dataset, one box per value;
- two axes (the tuning grids: τ × λ_reg, lr × λ_reg): ``outcomes_<m>.png``, one heat map
  per dataset whose cells are the settings' mean % reduction (Table 1's entry, the mean
  over settings where a cell holds several), annotated;
- three or more (the grid searches: generator × three penalties, ...): one figure per
  dataset, ``outcomes_<m>_<dataset>.png``, one panel per axis with boxes per value,
  split by generator where the generator varies, so that generator × parameter
  interactions show instead of being pooled away.

Boxes are over (setting, evaluation run, test-time λ) units, whiskers at 1.5 IQR, no
fliers. A job that ignores an axis (:meth:`~.load.Results.axis_values`) is in none of
its boxes. With several results directories, each figure's stem gains the grid's name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .effects import job_reductions
from .figures import _grid, _panels, plt, save
from .load import Results, setting_axes
from .pairing import SHORT

MAX_LEVELS = 12
HUE = "generator.name"
_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _sort_key(v: Any) -> tuple:
    try:
        return (0, float(v), str(v))
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _name(axis: str) -> str:
    return SHORT.get(axis, axis)


def _text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def source_axes(results: Results, source: int, units: pd.DataFrame) -> list[str]:
    """The source's setting axes that take 2..MAX_LEVELS values among the CT jobs of ``units``
    and change within at least one dataset (not only from one dataset to the next)."""
    values = results.axis_values(source)
    axes = [a for a in setting_axes(results, source, units["objective"].nunique()) if a in values]
    jobs = units.drop_duplicates("ct_job")
    v = values.reindex(jobs["ct_job"]).assign(dataset=jobs["dataset"].to_numpy())
    within = v.groupby("dataset")   # an axis that only changes with the dataset (final's tau) is no axis
    return [a for a in axes if 2 <= v[a].nunique() <= MAX_LEVELS and within[a].nunique().max() >= 2]


def outcome_figures(results: Results, units: dict[str, pd.DataFrame], metric: str, out_dir: Path,
                    seed: int = 0) -> list[Path]:
    """The figures of the module docstring for ``metric`` (``units``: :func:`~.pairing.paired_ce_units`'s
    frames, ``<metric>_l`` per (run, λ) and ``<metric>`` per run)."""
    per_l = units[f"{metric}_l"]
    per_l = per_l[per_l["bl"] != 0]
    if per_l.empty:
        return []
    per_l = per_l.assign(change=100 * (per_l["bl"] - per_l["ct"]) / per_l["bl"].abs())
    paths: list[Path] = []
    flat: list[pd.DataFrame] = []
    for src in results.sources:
        u = per_l[per_l["source"] == src.index]
        if u.empty:
            continue
        axes = source_axes(results, src.index, u)
        stem = f"outcomes_{metric}" + (f"_{src.name}" if len(results.sources) > 1 else "")
        values = results.axis_values(src.index)
        u = u.join(values[axes], on="ct_job") if axes else u
        title = f"{_measure(metric)}: CT vs matching baseline — grid {src.name}"
        if not axes:
            flat.append(u)
        elif len(axes) == 1:
            paths += _one_axis(u, axes[0], metric, title, out_dir, stem)
        elif len(axes) == 2:
            jobs = job_reductions(units[metric][units[metric]["source"] == src.index], n_boot=0, seed=seed,
                                  metric=metric).join(values[axes], on="ct_job")
            paths += _heatmaps(jobs, axes, metric, title, out_dir, stem)
        else:
            for d in sorted(u["dataset"].unique()):
                paths += _by_axis(u[u["dataset"] == d], axes, metric, f"{title}, {d}", out_dir,
                                  f"{stem}_{d}")
    if flat:
        paths += _per_dataset(pd.concat(flat), metric, out_dir)
    return paths


def _measure(metric: str) -> str:
    return "Implausibility (IP)" if metric == "ip" else "Cost"


def _ylabel(metric: str) -> str:
    return f"% reduction in {metric.upper() if metric == 'ip' else metric} vs BL"


def _per_dataset(u: pd.DataFrame, metric: str, out_dir: Path) -> list[Path]:
    datasets = sorted(u["dataset"].unique())
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.85 * len(datasets)), 3.6))
    ax.boxplot([u.loc[u["dataset"] == d, "change"].to_numpy() for d in datasets], showfliers=False)
    ax.set_xticks(range(1, len(datasets) + 1), datasets, rotation=30 if len(datasets) > 5 else 0, fontsize=8)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel(f"{_ylabel(metric)}\n(per run and λ)", fontsize=8)
    ax.set_title(f"{_measure(metric)}: CT vs matching baseline\n(% reduction; positive = CT lower, as Table 1)",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, f"outcomes_{metric}")


def _one_axis(u: pd.DataFrame, axis: str, metric: str, title: str, out_dir: Path, stem: str) -> list[Path]:
    datasets = sorted(u["dataset"].unique())
    fig, axs = _panels(len(datasets), 3.4, 2.8)
    for i, (ax, d) in enumerate(zip(axs, datasets)):
        g = u[(u["dataset"] == d) & u[axis].notna()]
        labels = sorted(g[axis].unique(), key=_sort_key)
        ax.boxplot([g.loc[g[axis] == v, "change"].to_numpy() for v in labels], showfliers=False)
        ax.set_xticks(range(1, len(labels) + 1), [_text(v) for v in labels],
                      rotation=30 if len(labels) > 4 else 0, fontsize=8)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{d} — {_name(axis)}", fontsize=9)
        if i % 3 == 0:
            ax.set_ylabel(_ylabel(metric), fontsize=8)
    fig.suptitle(f"{title}\n(% reduction per run and λ; positive = CT lower)", fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, stem)


def _heatmaps(jobs: pd.DataFrame, axes: list[str], metric: str, title: str, out_dir: Path,
              stem: str) -> list[Path]:
    rows_ax, cols_ax = axes
    datasets = sorted(jobs["dataset"].unique())
    cells = jobs.dropna(subset=axes).groupby(["dataset", rows_ax, cols_ax])["pct"].mean()
    finite = cells[np.isfinite(cells)]
    lim = float(np.quantile(np.abs(finite), 0.95)) if len(finite) else 1.0
    lim = max(lim, 1.0)
    fig, axs = _panels(len(datasets), 3.0, 2.6)
    image = None
    for ax, d in zip(axs, datasets):
        c = cells.loc[d].unstack(cols_ax) if d in cells.index.get_level_values(0) else pd.DataFrame()
        c = c.reindex(index=sorted(c.index, key=_sort_key), columns=sorted(c.columns, key=_sort_key))
        image = ax.imshow(c.to_numpy(float), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), v in np.ndenumerate(c.to_numpy(float)):
            if np.isfinite(v):
                text = "0" if round(v) == 0 else f"{v:.0f}"   # never "-0"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.6 * lim else "black")
        ax.set_xticks(range(c.shape[1]), [_text(v) for v in c.columns], fontsize=8)
        ax.set_yticks(range(c.shape[0]), [_text(v) for v in c.index], fontsize=8)
        ax.set_xlabel(_name(cols_ax), fontsize=8)
        ax.set_ylabel(_name(rows_ax), fontsize=8)
        ax.set_title(d, fontsize=9)
    fig.suptitle(f"{title}\nmean % reduction vs BL per setting (positive = CT lower; colour clipped at "
                 f"±{lim:.0f})", fontsize=10)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axs, shrink=0.6, label=_ylabel(metric))
    return save(fig, out_dir, stem)


def _by_axis(u: pd.DataFrame, axes: list[str], metric: str, title: str, out_dir: Path,
             stem: str) -> list[Path]:
    hue = HUE if HUE in axes else None
    hues = sorted(u[hue].dropna().unique(), key=_sort_key) if hue else [None]
    ncols = 2
    fig, grid = _grid(-(-len(axes) // ncols), ncols, 4.6, 3.2)
    flat = list(grid.flat)
    for ax in flat[len(axes):]:
        ax.set_visible(False)
    for k, (ax, axis) in enumerate(zip(flat, axes)):
        split = hue is not None and axis != hue
        g = u[u[axis].notna()]
        levels = sorted(g[axis].unique(), key=_sort_key)
        here = [h for h in hues if (g[hue] == h).any()] if split else [None]   # e.g. ECCo alone uses λ_energy
        width = 0.8 / len(here)
        for slot, h in enumerate(here):
            h_i = hues.index(h) if split else 0    # the colour stays the hue's in every panel
            gh = g[g[hue] == h] if split else g
            data = [gh.loc[gh[axis] == v, "change"].to_numpy() for v in levels]
            pos = np.arange(len(levels)) + (slot - (len(here) - 1) / 2) * width
            keep = [i for i, x in enumerate(data) if len(x)]
            if not keep:
                continue
            boxes = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=width * 0.85,
                               showfliers=False, patch_artist=True, medianprops={"color": "black"},
                               manage_ticks=False)
            for i, box in zip(keep, boxes["boxes"]):   # the hue's colour; the hue axis itself: each value's
                c = h_i if split else (hues.index(levels[i]) if axis == hue else None)
                box.set(facecolor=_COLOURS[c % len(_COLOURS)] if c is not None else "white", alpha=0.45)
        ax.set_xticks(range(len(levels)), [_text(v) for v in levels], fontsize=8,
                      rotation=30 if len(levels) > 5 else 0)
        ax.set_xlim(-0.6, len(levels) - 0.4)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_title(_name(axis) + (f" (boxes by {_name(str(hue))})" if split else ""), fontsize=9)
        if k % ncols == 0:
            ax.set_ylabel(_ylabel(metric), fontsize=8)
    if hue and len(axes) > 1:
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor=_COLOURS[i % len(_COLOURS)], alpha=0.45)
                   for i in range(len(hues))]
        fig.legend(handles, [str(h) for h in hues], loc="lower center", ncol=len(hues), fontsize=8,
                   frameon=False, title=_name(hue), title_fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{title}\n(% reduction per setting, run and λ; positive = CT lower)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05 if hue else 0, 1, 1))
    return save(fig, out_dir, stem)
