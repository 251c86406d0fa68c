"""``aggregate``: results directories -> the paper's tables, figures and one ``summary.md``.

All tables are computed before anything is written; every file is written
atomically. Output layout under ``out``::

    summary.md                       links, inputs, versions, notes
    key_results.{md,tex,csv}         Table 1
    search.{...}                     test-time search behaviour, BL vs CT
    sensitivity.{...}                IG sensitivity to immutable features (when evaluated)
    final_hyperparameters.{...}      Table 2
    consistency{,_contrasts}.{...}   invalidation rates under retraining (when jobs saved counterfactuals)
    predictive_<grid>.{...}          Tables 3-5 (one per results directory)
    figures/*.png, figures/*.pdf
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .. import __version__, _atomic
from .._validate import check, param
from ..errors import ConfigError
from ..store import ResultStore
from .consistency import consistency_records, iv_table
from .consistency_figures import iv_cost_figure, iv_means_figure
from .contrasts import contrast_table
from .effects import effects_tables
from .explain import search_table, sensitivity_table
from .keyresults import key_results, run_level
from .load import Results
from .pairing import pair_jobs, paired_ce_units
from .render import FORMATS, Table
from .tables import hyperparameter_table, predictive_tables


#: above this many finished jobs the figure's ε sweep is not re-measured (seconds per model)
MAX_SWEEP_MODELS = 200


@dataclass(frozen=True)
class AggregateOptions:
    """How to aggregate.

    ``valid_only``: keep only valid counterfactuals for IP and cost (the reference's
    choice; biased when validity differs, so off by default). ``interval``:
    ``"bootstrap"`` (two-stage percentile bootstrap: model pairs / base models, then runs or
    factuals within each; ``bootstrap`` resamples), ``"within-model"`` (the units of all
    models pooled, the models held fixed) or ``"runs"`` (the reference's quantiles of per-run
    values; docs/deviations.md, M13, D8).
    ``pool_settings``: one Table 1 row per dataset pooling all CT settings instead of
    one row per setting. ``exclude_predicted``: compare a BL/CT pair only on individuals
    for which neither model already predicts the target (default; ``False`` keeps all).
    ``skip_damaged``: leave out done jobs whose files are damaged (listed in the notes)
    instead of refusing to aggregate (:mod:`ctgrid.integrity`). ``device``: where the
    model-based figures compute (MNIST counterfactuals, the FGSM sweep, the consistency
    re-predictions; :mod:`ctgrid.device`), default the CPU.
    """

    formats: tuple[str, ...] = param(FORMATS, choices=FORMATS)
    valid_only: bool = param(False)
    bootstrap: int = param(1000, ge=0)
    confidence: float = param(0.99, gt=0, lt=1)
    seed: int = param(0, ge=0)
    interval: str = param("bootstrap", choices=("bootstrap", "within-model", "runs"))
    pool_settings: bool = param(False)
    exclude_predicted: bool = param(True)
    figures: bool = param(True)
    data_dir: str | None = param(None)
    skip_damaged: bool = param(False)
    device: str = param("cpu")

    def __post_init__(self) -> None:
        check(self, "aggregate")
        from ..device import parse_device
        object.__setattr__(self, "device", parse_device(self.device, "aggregate.device"))
        if not self.formats:
            raise ConfigError(f"aggregate.formats: got none; allowed: {', '.join(FORMATS)}")


def _versions() -> dict[str, str]:
    import pyarrow
    import torch
    return {"ctgrid": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "pandas": pd.__version__, "pyarrow": pyarrow.__version__}


def _run_versions(results: Results) -> list[str]:
    """Distinct version records the runner stored in ``done.json`` (if any)."""
    out = set()
    for src in results.sources:
        store = ResultStore(src.root)
        for job_id in results.jobs.loc[results.jobs["source"] == src.index, "job_id"]:
            try:
                rec = json.loads(store.job(job_id).done.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            vers = rec.get("versions") or ({"ctgrid": rec["ctgrid_version"]}
                                           if "ctgrid_version" in rec else None)
            if isinstance(vers, dict):
                out.add(", ".join(f"{k} {v}" for k, v in sorted(vers.items())))
    return sorted(out)


def _links(stem: str, formats: Sequence[str]) -> str:
    return " · ".join(f"[{fmt}]({stem}.{fmt})" for fmt in formats)


def _description(grid_file: Path | None) -> str:
    """The grid's description as the run's grid.yaml renders it (placeholders filled), or —."""
    from ..grid import parse_grid
    try:
        text = parse_grid(grid_file.read_text(encoding="utf-8")).description if grid_file else ""
    except (OSError, UnicodeDecodeError, ConfigError):
        text = ""
    return text.replace("|", "\\|") or "—"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def summary_text(results: Results, tables: list[Table], figures: list[Path], notes: list[str],
                 opts: AggregateOptions, out: Path) -> str:
    ver = _versions()
    lines = ["# ctgrid aggregate: summary", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()) + ".", ""]
    run_vers = _run_versions(results)
    if run_vers:
        lines += ["Jobs were run with: " + "; ".join(run_vers) + ".", ""]
    interval = {"bootstrap": f"two-stage percentile bootstrap, trained models then runs/factuals "
                             f"({opts.bootstrap} resamples, seed {opts.seed})",
                "within-model": f"within-model percentile bootstrap over runs/factuals, models held fixed "
                                f"({opts.bootstrap} resamples, seed {opts.seed})",
                "runs": "quantiles of the per-run values (reference)"}[opts.interval]
    lines += [f"Options: counterfactuals {'valid only' if opts.valid_only else 'all'}; intervals: "
              f"{interval}, confidence {opts.confidence:g}; Table 1 rows "
              f"{'pooled per dataset' if opts.pool_settings else 'per CT setting'}.",
              "", "## Inputs", "", "| Grid | Description | Results directory | Grid file | Jobs done |",
              "|---|---|---|---|---:|"]
    for s in results.sources:
        grid = (f"[grid.yaml]({os.path.relpath(s.grid_file, out)}) (sha256 {_sha(s.grid_file)})"
                if s.grid_file else "—")
        lines.append(f"| {s.name} | {_description(s.grid_file)} | `{s.root}` | {grid} | {s.n_done} / {s.n_jobs} |")
    lines += ["", "## Tables", ""]
    for t in tables:
        lines += [f"{t.title}: {_links(t.name, opts.formats)}", ""]
        if "md" in opts.formats:
            lines += [t.markdown().replace("### ", "#### ", 1), ""]
    lines += ["## Figures", ""]
    for png in (p for p in figures if p.suffix == ".png"):
        rel = os.path.relpath(png, out)
        lines += [f"![{png.stem}]({rel}) ([pdf]({rel[:-4]}.pdf))", ""]
    if not figures:
        lines += ["(no figures)", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def build_tables(results: Results, opts: AggregateOptions) -> tuple[list[Table], dict]:
    """Compute every table (nothing written); also returns what the figures reuse."""
    pairs = pair_jobs(results, pool_settings=opts.pool_settings)
    rl = run_level(results, valid_only=opts.valid_only)
    perf = results.performance()
    ok = pairs.dropna(subset=["bl_job"])
    ce_units = paired_ce_units(ok, rl.per_ce, exclude_predicted=opts.exclude_predicted)
    free = ok[~ok["constrained"]] if (~ok["constrained"]).any() else ok
    free_units = {k: u[u["ct_job"].isin(set(free["ct_job"]))] for k, u in ce_units[0].items()}
    tables = [key_results(results, pairs, rl, perf, opts, ce_units), hyperparameter_table(results, opts.data_dir),
              *predictive_tables(results, perf), search_table(results, pairs),
              *effects_tables(results, free_units, n_boot=opts.bootstrap, confidence=opts.confidence,
                              seed=opts.seed)]
    sens = sensitivity_table(pairs, perf)
    tables += [sens] if sens is not None else []
    records = consistency_records(results, opts.data_dir, exclude_predicted=opts.exclude_predicted)
    if not records.empty:
        tables += [iv_table(records, n_boot=opts.bootstrap, confidence=opts.confidence, how=opts.interval),
                   contrast_table(records, n_boot=opts.bootstrap, confidence=opts.confidence, how=opts.interval)]
    return tables, {"pairs": pairs, "run_level": rl, "perf": perf, "consistency": records, "tables": tables,
                    "units": free_units}


def make_figures(results: Results, parts: dict, out_dir: Path, opts: AggregateOptions) -> tuple[list[Path], list[str]]:
    from . import figures
    from .mnist import mnist_grid
    from .outcomes import outcome_figures
    pairs = parts["pairs"]
    units = parts["units"]
    paths: list[Path] = []
    notes: list[str] = []
    key = next((t.data for t in parts["tables"] if t.name == "key_results"), pd.DataFrame())
    paths += figures.key_results_figure(key, opts.confidence, out_dir)
    for metric in ("ip", "cost"):
        paths += outcome_figures(results, units, metric, out_dir, opts.seed)
    paths += figures.maturity(results, out_dir)
    perf = parts["perf"]
    stored = perf.loc[perf["attack"] == "fgsm", "eps"].nunique() if "attack" in perf else 0
    if stored < 3 and len(results.jobs) <= MAX_SWEEP_MODELS:
        from .sweep import fgsm_sweep
        sweep = fgsm_sweep(results, opts.data_dir)
        if len(sweep):
            perf = pd.concat([perf[perf["attack"] != "fgsm"], sweep], ignore_index=True)
            notes.append("robust_accuracy figure: FGSM ε sweep 0–0.1 measured by aggregate from the saved "
                         "models (the tables use the grid's evaluated budgets)")
    elif stored < 3:
        notes.append(f"robust_accuracy figure: the grid's evaluated budgets only (no ε sweep re-measured for "
                     f"more than {MAX_SWEEP_MODELS} models; set evaluation.fgsm_eps in the grid for a sweep)")
    paths += figures.robust_accuracy(results, perf, out_dir)
    if not parts["consistency"].empty:
        iv = next(t.data for t in parts["tables"] if t.name == "consistency")
        paths += iv_means_figure(iv, out_dir, opts.confidence) + iv_cost_figure(parts["consistency"], out_dir)
    drawn = {p.stem for p in paths}
    why = {"outcomes_ip": "no paired IP evaluations", "outcomes_cost": "no paired cost evaluations",
           "maturity": "no CT training history with a CE phase",
           "robust_accuracy": "no FGSM/PGD performance records"}
    notes += [f"figure {stem} not drawn: {reason}" for stem, reason in why.items()
              if not any(s == stem or s.startswith(f"{stem}_") for s in drawn)]
    if (results.jobs["data.name"] == "mnist").any():
        mnist_paths, note = mnist_grid(results, pairs, out_dir, data_dir=opts.data_dir, seed=opts.seed)
        paths += mnist_paths
        notes += [note] if note else []
    return paths, notes


def incomplete_notes(results: Results, pairs: pd.DataFrame) -> list[str]:
    """What the tables leave out: failed and unfinished jobs per results directory, and CT
    jobs whose baseline is not done (a partial grid aggregates; it is said, not hidden),
    and the damaged jobs left out (``skip_damaged``)."""
    notes = list(results.skipped)
    for src in results.sources:
        st = ResultStore(src.root).status()
        for rec in st.failed[:10]:
            notes.append(f"{src.name}: job {rec.get('job_id')} failed ({rec.get('error_type')}: "
                         f"{rec.get('message')}); not in the tables")
        if len(st.failed) > 10:
            notes.append(f"{src.name}: {len(st.failed) - 10} more failed jobs (ctgrid status {src.root})")
        unfinished = st.counts["started"] + st.counts["pending"]
        if unfinished:
            notes.append(f"{src.name}: {unfinished} of {st.n_jobs} jobs not finished (started or pending); "
                         f"the tables use the {st.counts['done']} done")
    alone = pairs[pairs["bl_job"].isna()]
    if len(alone):
        ids = ", ".join(alone["ct_job"].astype(str).tolist()[:5]) + (" ..." if len(alone) > 5 else "")
        notes.append(f"{len(alone)} CT job(s) without a finished baseline, left out of Table 1: {ids}")
    return notes


def aggregate(inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
              opts: AggregateOptions | None = None) -> list[Path]:
    """Read ``inputs`` (results directories), write tables, figures and ``summary.md`` to ``out``.

    Returns the written paths (``summary.md`` last).
    """
    opts = opts or AggregateOptions()
    from ..device import check_device
    check_device(opts.device)   # before reading anything (cpu: no torch)
    results = Results.load(inputs, skip_damaged=opts.skip_damaged)
    if opts.device != "cpu":
        from ..device import configure, resolve_device
        device = resolve_device(opts.device)
        configure(device)
        results.device = str(device)
    tables, parts = build_tables(results, opts)
    out = Path(out)
    written: list[Path] = []
    for t in tables:
        written += t.write(out, opts.formats)
    figs, notes = make_figures(results, parts, out / "figures", opts) if opts.figures else ([], [])
    notes = incomplete_notes(results, parts["pairs"]) + notes
    written += figs
    summary = summary_text(results, tables, figs, notes, opts, out)
    written.append(_atomic.write_text(out / "summary.md", summary).path)
    return written
