"""Figures of the consistency tables: mean IV per method and objective, IV against cost."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .consistency import VARIATIONS


def _method_order(methods: pd.Series) -> list[str]:
    """Each generator next to its "+sns" and "+ctrl" variants."""
    def key(m: str) -> tuple:
        tag = 2 if "+ctrl" in m else 1 if "+sns" in m else 0
        return m.replace("+sns", "", 1).replace("+ctrl", "", 1), tag, m
    return sorted(set(methods), key=key)


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
        bases = int(g["n_bases"].max()) if "n_bases" in g else 1
        ax.set_title(f"{d if s == '—' else f'{d} ({s})'} · {var} ({bases} base × {g['n_models'].iloc[0]} models)",
                     fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Mean invalidation rate of valid counterfactuals (bars: {confidence:.0%} two-stage bootstrap "
                 "interval, base models then counterfactuals)", y=1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 0.99))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save(fig, out_dir, "consistency_iv")


def iv_cost_figure(records: pd.DataFrame, out_dir: Path) -> list[Path]:
    """IV against L2 cost of every valid counterfactual: one row per dataset x variation,
    one column per method, one colour per objective."""
    from .figures import _grid, save
    valid = records[records["valid"] & records["informative"].astype(bool)]
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
