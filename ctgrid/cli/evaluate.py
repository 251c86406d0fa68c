"""``ctgrid evaluate MODEL_DIR [MODEL_DIR...]``: evaluate trained models (docs/deviations.md, M4).

A model directory is what ``ctgrid train`` (or a grid job) writes: ``config.yaml`` (a
:class:`~ctgrid.grid.job.JobConfig` mapping) and ``model.pt`` (the state dict, bare or
as ``{"state_dict": ...}``). Each model is evaluated with its job's ``evaluation``
settings, overridden by the flags, and ``evaluation.parquet`` / ``performance.parquet``
are written atomically into the model directory, or into ``--out`` (one model) or
``--out/<model dir name>`` (several). Models trained on the same data are evaluated on
the same factual/target pairs per run (paired design), so a baseline and a CT model
can be given together or separately. Every input is checked, and every model
evaluated, before anything is written.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data import DataConfig, Dataset
    from ..grid.job import JobConfig
from ._process import add_device, add_threads, check_threads, default_threads

_DESCRIPTION = (
    "Evaluate models written by 'ctgrid train' (MODEL_DIR holds config.yaml and model.pt): "
    "counterfactual measures over the test-time grid and test accuracy, macro-F1 and robust "
    "accuracy. Writes evaluation.parquet and performance.parquet into each MODEL_DIR (or --out). "
    "Models trained on the same data get the same factual/target pairs per run (paired design).")
_FLOAT_LISTS = {"lambda_energy": "--lambda-energy", "fgsm_eps": "--fgsm-eps", "pgd_eps": "--pgd-eps"}
_SCALARS = ("n_runs", "n_individuals", "tau", "maxiter", "test_time", "mmd_length_scale", "lr",
            "step", "factuals", "categorical")


def add_evaluate_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="evaluate trained models (counterfactuals, accuracy, robustness)",
                       description=_DESCRIPTION)
    p.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR",
                   help="directory with config.yaml and model.pt (from ctgrid train)")
    p.add_argument("--data-dir", help="raw data files of the real datasets (default: $CTGRID_DATA)")
    p.add_argument("--out", help="output directory (default: each model directory)")
    p.add_argument("--cache-dir", help="cache of REVISE's VAE")
    p.add_argument("--lambda-energy", metavar="L1,L2,...", help="ECCo energy weights, comma-separated")
    p.add_argument("--n-runs", type=int, help="runs (factual/target pairs redrawn per run)")
    p.add_argument("--n-individuals", type=int, help="factuals per run and energy weight")
    p.add_argument("--tau", type=float, help="decision threshold of the search and strict validity")
    p.add_argument("--maxiter", type=int, help="search steps T")
    p.add_argument("--lr", type=float, help="search step size (SGD: lr x gradient; normalized: L2 length)")
    p.add_argument("--step", choices=("sgd", "normalized"),
                   help="search step rule: sgd (the reference) or normalized (steps of length lr)")
    p.add_argument("--factuals", choices=("balanced", "uniform"),
                   help="factual draw: balanced over classes (default, the reference) or uniform over rows")
    p.add_argument("--categorical", choices=("none", "project", "step", "final"),
                   help="one-hot groups: state projected after every step (default, the reference), "
                        "seen projected with a continuous state (step), projected at the end (final), "
                        "or left continuous (none)")
    p.add_argument("--test-time", action=argparse.BooleanOptionalAction, default=None,
                   help="draw factuals from the test split (final results) instead of training")
    p.add_argument("--fgsm-eps", metavar="E1,E2,...", help="FGSM budgets ('' for none)")
    p.add_argument("--pgd-eps", metavar="E1,E2,...", help="PGD budgets ('' for none)")
    p.add_argument("--mmd-length-scale", type=float, help="Gaussian kernel length scale of IP*")
    add_threads(p, default_threads(), "$SLURM_CPUS_PER_TASK or 1")
    add_device(p, "the evaluation")
    p.set_defaults(func=run)
    return p


def _float_list(text: str, flag: str) -> tuple[float, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(float(t) for t in items)
    except ValueError:
        raise ConfigError(f"{flag}: got {text!r}; expected comma-separated numbers") from None


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation settings given on the command line."""
    out: dict[str, Any] = {k: getattr(args, k) for k in _SCALARS if getattr(args, k) is not None}
    for key, flag in _FLOAT_LISTS.items():
        if getattr(args, key) is not None:
            out[key] = _float_list(getattr(args, key), flag)
    return out


@dataclass
class _Input:
    model_dir: Path
    out_dir: Path
    job: JobConfig
    state_dict: dict


def _inputs(args: argparse.Namespace) -> list[_Input]:
    dirs = [Path(d) for d in args.model_dirs]
    if args.out is None:
        outs = dirs
    elif len(dirs) == 1:
        outs = [Path(args.out)]
    else:
        outs = [Path(args.out) / d.resolve().name for d in dirs]
        if len(set(outs)) < len(outs):
            raise ConfigError("--out: model directories share a name; give them distinct names or "
                              "evaluate them one at a time")
    from ..modeldir import read_model_dir
    ev = overrides(args)
    items = []
    for d, o in zip(dirs, outs):
        job, state = read_model_dir(d)
        job = replace(job, evaluation=replace(job.evaluation, **ev))
        items.append(_Input(d, o, job, state))
    first = items[0]
    for item in items[1:]:
        if item.job.data.identity() != first.job.data.identity():
            raise ConfigError(f"MODEL_DIR {str(item.model_dir)!r}: trained on other data than "
                              f"{str(first.model_dir)!r} ({item.job.data.name} vs {first.job.data.name} "
                              "or their split settings); models evaluated together are compared on the "
                              "same factuals, so they must share data and split: evaluate them one at a time")
    return items


def _build(item: _Input, dataset: Dataset, device: torch.device) -> nn.Module:
    from ..modeldir import build_trained
    return build_trained(item.job, item.state_dict, dataset, item.model_dir / "model.pt", device)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..provenance import provenance
    from ..store import write_job_parquet
    from ..data import load_dataset
    from ..data.config import data_provenance
    from ..evaluation.evaluate import evaluate_model, points_table
    from ..device import check_device, configure, parse_device, resolve_device
    if check_threads(args.threads) is not None:
        torch.set_num_threads(args.threads)
    spec = parse_device(args.device)
    check_device(spec)
    items = _inputs(args)
    device = resolve_device(spec)
    configure(device)
    datasets: dict[DataConfig, Dataset] = {}
    models = []
    for item in items:
        if item.job.data not in datasets:
            datasets[item.job.data] = load_dataset(item.job.data, args.data_dir).to(device)
        models.append(_build(item, datasets[item.job.data], device))
    results = []
    for item, model in zip(items, models):
        # The same test-time search as the grid runner: never the model's training generator,
        # so a baseline and its CT models are searched identically (paired design).
        results.append(evaluate_model(model, datasets[item.job.data], item.job.evaluation,
                                      cache_dir=args.cache_dir))
    for item, (evaluation, performance, points) in zip(items, results):
        record = provenance(seed=item.job.seed, model_dir=str(item.model_dir), **data_provenance(item.job.data))
        saved = None if points is None else points_table(points)
        for name, table in (("evaluation", evaluation), ("counterfactuals", saved), ("performance", performance)):
            if table is not None:
                write_job_parquet(item.out_dir / f"{name}.parquet", table, item.job.job_id, record)
        acc = performance.loc[performance.metric == "accuracy", "value"].iloc[0]
        valid = evaluation.loc[evaluation.metric == "validity", "value"].mean()
        print(f"{item.out_dir}: evaluation.parquet ({len(evaluation)} rows), performance.parquet; "
              f"accuracy {acc:.4f}, mean validity {valid:.4f}")
    return 0
