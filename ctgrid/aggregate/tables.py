"""Tables 2–5: predictive performance per grid and the final hyper-parameters.

Table 1 (key results) lives in :mod:`ctgrid.aggregate.keyresults`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd

from ..data import DataConfig, dataset_defaults, load_dataset
from ..errors import ConfigError, DataError
from ..training.config import OBJECTIVE_TERMS, TERM_WEIGHTS
from .load import Results
from .pairing import is_constrained
from .render import Table, num


def predictive_tables(results: Results, perf: pd.DataFrame) -> list[Table]:
    """One table per results directory (grid): mean and sample std of test accuracy and macro-F1
    by dataset and objective across the grid's finished models (appendix Tables 3–5)."""
    tables = []
    for src in results.sources:
        jobs = results.jobs[results.jobs["source"] == src.index][["job_id", "data.name",
                                                                   "training.objective"]]
        p = perf[(perf["source"] == src.index)] if len(perf) else perf
        if len(p):
            p = p[p["attack"].isin(["none", None]) & p["metric"].isin(["accuracy", "macro_f1"])]
            p = p.groupby(["job_id", "metric"])["value"].mean().unstack("metric").reset_index()
        frame = jobs.merge(p, on="job_id", how="left") if len(p) else jobs.assign(accuracy=np.nan,
                                                                                    macro_f1=np.nan)
        rows, records = [], []
        for (d, obj), g in frame.groupby(["data.name", "training.objective"], sort=True):
            stats = {m: (100 * g[m].mean(), 100 * g[m].std(ddof=1) if g[m].count() > 1 else np.nan,
                         int(g[m].count())) for m in ("accuracy", "macro_f1")}
            rows.append([d, obj, *(num(v) for m in stats for v in stats[m][:2]),
                         str(stats["accuracy"][2])])
            records.append({"dataset": d, "objective": obj,
                            **{f"{m}_{k}": v for m, s in stats.items()
                               for k, v in zip(("mean", "sd", "n"), s)}})
        header = ["Data", "Objective", "Acc. mean", "Acc. sd", "F1 mean", "F1 sd", "Models"]
        notes = [f"Grid {src.name}: {src.n_done} of {src.n_jobs} jobs finished.",
                 "Test accuracy and macro-F1 in %: mean and sample standard deviation (ddof = 1; the "
                 "reference's column 'Se' was a std too) across all hyper-parameter settings.",
                 "Models are distinct trained jobs: grid points that only differ in parameters their "
                 "objective ignores (the vanilla copies) are one model."]
        tables.append(Table(f"predictive_{src.name}", f"Predictive performance, grid {src.name} "
                            "(Tables 3–5)", header, rows, notes, pd.DataFrame.from_records(records), n_text=2))
    return tables


_TERM_OF = {f"training.{name}": term for term, name in TERM_WEIGHTS.items() if term != "clf"}
_HP_COLS = ("data.name", "training.objective", "generator.name", "generator.tau", "training.nce",
            "training.lambda_reg", "training.lambda_div", "training.lambda_adv", "training.nepochs",
            "training.batch_size", "training.burnin")


class SizeFinder:
    """True split sizes of a job's data: the runner's ``data_summary`` if stored, else loaded
    with :func:`ctgrid.data.load_dataset` (``data_dir`` or ``$CTGRID_DATA``), else unknown."""

    def __init__(self, data_dir: str | os.PathLike | None):
        self.data_dir = data_dir
        self.cache: dict[str, tuple[Any, Any, Any] | None] = {}
        self.problems: dict[str, str] = {}
        self.sources: set[str] = set()

    def __call__(self, data_cfg: dict, summary: str | None) -> tuple[Any, Any, Any] | None:
        if summary:
            s = json.loads(summary)
            self.sources.add("the runner's data summary")
            return s.get("n_train"), s.get("n_val"), s.get("n_test")
        key = json.dumps(data_cfg, sort_keys=True)
        if key not in self.cache:
            self.cache[key] = self._load(data_cfg)
        return self.cache[key]

    def _load(self, data_cfg: dict) -> tuple[int, int, int] | None:
        try:
            data = load_dataset(DataConfig(**data_cfg), self.data_dir)
        except (DataError, ConfigError, OSError, TypeError) as exc:
            self.problems[data_cfg.get("name", "?")] = str(exc).splitlines()[0]
            return None
        self.sources.add("loading the dataset")
        return len(data.y_train), len(data.y_val), len(data.y_test)


def _hp_cell(row: pd.Series, col: str) -> str:
    v = row[col]
    if col in _TERM_OF and _TERM_OF[col] not in OBJECTIVE_TERMS.get(row["training.objective"], ()):
        return "—"
    if col in ("generator.name", "generator.tau", "training.nce") and row["training.objective"] == "vanilla":
        return "—"
    if col == "training.batch_size" and (v is None or (isinstance(v, float) and np.isnan(v))):
        return "auto" if row["data.name"] == "table" else str(dataset_defaults(row["data.name"]).batch_size)
    return f"{v:g}" if isinstance(v, float) else str(v)


def hyperparameter_table(results: Results, data_dir: str | os.PathLike | None = None) -> Table:
    """Table 2: per dataset, the CT configuration(s) and the true train/val/test sizes."""
    jobs = results.jobs.copy()
    free = jobs[[not is_constrained(r) for r in jobs.to_dict("records")]]
    jobs = pd.concat([free, jobs[~jobs["data.name"].isin(free["data.name"])]])  # constrained-only sets
    ct = jobs[jobs["training.objective"] != "vanilla"]
    chosen = pd.concat([ct, jobs[~jobs["data.name"].isin(ct["data.name"])]])
    cols = [c for c in _HP_COLS if c in chosen]
    chosen = chosen.assign(_data=[json.dumps(results.raw_configs[j]["data"], sort_keys=True)
                                  for j in chosen["job_id"]])
    distinct = chosen.astype({c: object for c in cols}).drop_duplicates(subset=[*cols, "_data"])
    sizes = SizeFinder(data_dir)
    rows, records = [], []
    for _, row in distinct.sort_values(["data.name", "training.objective"], kind="stable").iterrows():
        n = sizes(json.loads(row["_data"]), row.get("data_summary"))
        cells = [_hp_cell(row, c) for c in cols]
        size_cells = [str(int(x)) if x is not None else "—" for x in (n or (None,) * 3)]
        rows.append(cells + size_cells)
        records.append({**{c: cells[i] for i, c in enumerate(cols)},
                        **dict(zip(("n_train", "n_val", "n_test"), n or (None,) * 3))})
    names = {"data.name": "Data", "training.objective": "Objective", "generator.name": "Generator",
             "generator.tau": "τ", "training.nce": "nce", "training.lambda_reg": "λ_reg",
             "training.lambda_div": "λ_div", "training.lambda_adv": "λ_adv",
             "training.nepochs": "Epochs", "training.batch_size": "Batch", "training.burnin": "Burn-in"}
    header = [names[c] for c in cols] + ["Train", "Val", "Test"]
    how = " and ".join(sorted(sizes.sources)) or "nowhere"
    notes = ["One row per distinct CT configuration (replicates merged; mutability-constrained "
             "jobs only where a dataset has no others); datasets with only baseline jobs show the "
             "baseline's schedule. — : not used by the objective.",
             f"Train/Val/Test: true split sizes, from {how} (the reference printed "
             "round(0.2·n_train) as the test size; docs/deviations.md, D9)."]
    notes += [f"Sizes of {k} unavailable: {v}" for k, v in sorted(sizes.problems.items())]
    return Table("final_hyperparameters", "Final hyper-parameters and data sizes (Table 2)", header,
                 rows, notes, pd.DataFrame.from_records(records), n_text=3)
