"""ctgrid train: train one model (vanilla or CT) and write it, its config and its history.

Settings come from ``--config FILE.yaml`` (groups ``data``, ``model``, ``generator``,
``training``, ``evaluation`` with the fields of the config dataclasses — a grid job's own
``config.yaml`` works) and/or flags, which override the file. Everything — configs,
dataset, ``nce`` against the training size, mutability names — is validated before
``--out`` is created, so bad input writes nothing. ``--out`` gets the layout of a grid
job (:mod:`ctgrid.modeldir`: ``config.yaml``, ``model.pt``, ``history.parquet``,
``done.json``) and the same weights: ``training.seed`` is the replicate number in both
commands, the torch seed being derived from the job's identity (data, model, replicate).
SIGTERM / SIGUSR1 / Ctrl-C stop after the current epoch's checkpoint with exit code 3, as
``ctgrid run``; re-running the same command resumes from ``--out/checkpoint.pt``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import __version__
from .._validate import build, unknown_key
from ..data.config import DataConfig
from ..errors import ConfigError
from ..evaluation.config import EvaluationConfig
from ..generators.config import GeneratorConfig
from ..models.config import ModelConfig
from ..training.config import TrainingConfig
from ..parallel.signals import EXIT_FAILED
from ._process import EXIT_INTERRUPTED, StopFlag, add_device, add_threads, check_threads

GROUPS = {"data": DataConfig, "model": ModelConfig, "generator": GeneratorConfig,
          "training": TrainingConfig, "evaluation": EvaluationConfig}
#: flag dest -> (group, field)
FLAGS = {
    "data": ("data", "name"), "model": ("model", "kind"), "generator": ("generator", "name"),
    "objective": ("training", "objective"), "lambda_clf": ("training", "lambda_clf"),
    "lambda_div": ("training", "lambda_div"), "lambda_reg": ("training", "lambda_reg"),
    "lambda_adv": ("training", "lambda_adv"), "tau": ("generator", "tau"),
    "maxiter": ("generator", "maxiter"), "nce": ("training", "nce"), "burnin": ("training", "burnin"),
    "nepochs": ("training", "nepochs"), "batch_size": ("training", "batch_size"),
    "lr": ("training", "lr"), "seed": ("training", "seed"),
    "data_path": ("data", "path"), "target": ("data", "target"),
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train one model (vanilla baseline or Counterfactual Training)",
        description=__doc__.split("\n\n")[0] + " Flags override --config. A setting given nowhere "
        "takes its default; `ctgrid config` shows them all (e.g. ctgrid config quickstart --job ID).")
    p.add_argument("--config", type=Path, help="YAML file with groups data/model/generator/training/"
                                               "evaluation: a job's config.yaml, or a grid file of one job")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override one setting: group.key=VALUE (YAML), e.g. training.nepochs=5; "
                        "applied after --config, before the flags")
    p.add_argument("--data", help="dataset name (moons, circles, lin_sep, over, adult, ..., or table: "
                                  "your own file, --data-path and --target)")
    p.add_argument("--data-path", metavar="FILE", help="with --data table: a .csv, .csv.gz or .parquet "
                                                       "file (more options: data.categorical=[...], ...)")
    p.add_argument("--target", metavar="COLUMN", help="with --data table: the label column")
    p.add_argument("--data-dir", type=Path, help="raw data files of the real datasets (else $CTGRID_DATA)")
    p.add_argument("--model", help="model kind: mlp, linear, cnn")
    p.add_argument("--generator", help="counterfactual generator: ecco, generic, revise")
    p.add_argument("--objective", help="vanilla, full, energy, adversarial")
    for term in ("clf", "div", "reg", "adv"):
        p.add_argument(f"--lambda-{term}", type=float, metavar="W", help=f"weight of the {term} term")
    p.add_argument("--tau", type=float, help="decision threshold of the training-time search")
    p.add_argument("--maxiter", type=int, help="search steps T")
    p.add_argument("--nce", type=int, help="counterfactuals per epoch")
    p.add_argument("--burnin", type=float, help="fraction of epochs trained without CT")
    p.add_argument("--nepochs", type=int, help="training epochs")
    p.add_argument("--batch-size", type=int, help="mini-batch size (default: the dataset's)")
    p.add_argument("--lr", type=float, help="optimiser learning rate")
    p.add_argument("--mutability", action="append", metavar="NAME=KIND",
                   help="feature mutability (both/increase/decrease/none), repeatable; 'paper' for the paper's setting")
    p.add_argument("--seed", type=int, help="replicate number (training.seed; the torch seed is derived "
                                            "from it, the data and the model, as in a grid)")
    p.add_argument("--out", type=Path, help="output directory (default results/train/<data>-<objective>)")
    p.add_argument("--cache-dir", type=Path, help="cache of REVISE's VAE (default: none)")
    from ._process import default_threads
    add_threads(p, default_threads(), "$SLURM_CPUS_PER_TASK or 1")
    add_device(p, "the model")
    p.set_defaults(func=run)
    return p


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path} must hold a mapping with groups {', '.join(GROUPS)}")
    for key, value in raw.items():
        if key not in GROUPS:
            raise unknown_key(str(key), list(GROUPS), "config")
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return {g: dict(raw.get(g) or {}) for g in GROUPS}


def _is_grid(path: Path) -> bool:
    """A grid file (or a shipped grid's name) rather than one job's groups."""
    if not path.is_file():
        return True   # resolve_grid_path reports a missing file or unknown grid name
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # _read_yaml reports it
    return isinstance(raw, dict) and any(k not in GROUPS for k in raw)


def _one_job(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The groups of the one job of grid ``path`` (with ``overrides`` applied to the grid)."""
    from ..grid import load_grid
    jobs = load_grid(path, overrides).jobs()
    if len(jobs) != 1:
        raise ConfigError(f"--config: {path} is a grid of {len(jobs)} jobs; train takes one (see them with "
                          f"ctgrid expand {path}; print one with ctgrid config {path} --job JOB_ID > job.yaml)")
    return {g: dict(v) for g, v in next(iter(jobs.values())).to_dict().items()}


def _mutability(items: list[str]) -> tuple[tuple[str, str], ...] | str:
    if items == ["paper"]:
        return "paper"
    pairs = []
    for item in items:
        name, sep, kind = item.partition("=")
        if not sep or not name or not kind:
            raise ConfigError(f"--mutability: got {item!r}; expected NAME=KIND or 'paper'")
        pairs.append((name, kind))
    return tuple(pairs)


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The four configs from ``--config`` and the flags (flags win)."""
    if args.config and _is_grid(args.config):
        groups = _one_job(args.config, args.overrides)
    else:
        groups = _read_yaml(args.config) if args.config else {g: {} for g in GROUPS}
    if args.overrides and not (args.config and _is_grid(args.config)):
        from ..grid.overrides import apply_overrides
        groups = {g: dict(v or {}) for g, v in apply_overrides(groups, args.overrides, meta=False).items()}
    for dest, (group, field) in FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            groups[group][field] = value
    if args.mutability:
        groups["data"]["mutability"] = _mutability(args.mutability)
    return {g: build(cls, groups[g], g) for g, cls in GROUPS.items()}


def _reporter(nepochs: int) -> Callable[[dict], None]:
    """A progress bar on a terminal, one log line per epoch otherwise."""
    tty = sys.stderr.isatty()

    def report(row: dict) -> None:
        e = row["epoch"]
        mature = row["converged"]
        ce = "" if mature != mature else f"mature {mature:.2f} ce {row['t_ce']:.2f}s "   # NaN: no CE phase
        text = (f"epoch {e}/{nepochs} loss {row['loss']:.4f} acc {row['acc_train']:.3f}/"
                f"{row['acc_val']:.3f} {ce}upd {row['t_update']:.2f}s")
        if tty:
            width = 24
            done = int(width * e / nepochs)
            end = "\n" if e == nepochs else ""
            print(f"\r[{'#' * done}{'.' * (width - done)}] {text}", end=end, file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)
    return report


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_dataset
    from ..data.config import data_provenance
    from ..grid.job import JobConfig
    from ..training import train, validate
    from ..modeldir import write_config, write_model
    from ..provenance import provenance
    from ..store import JobPaths, mark_done, write_job_parquet
    from ..device import check_device, parse_device
    check_threads(args.threads)
    device = parse_device(args.device)
    check_device(device)
    job = JobConfig(**resolve(args)).canonical()
    dataset = load_dataset(job.data, args.data_dir)
    training = job.training
    validate(dataset, dataclasses.replace(training, batch_size=training.batch_size or dataset.batch_size),
             job.model)
    out = args.out or Path("results") / "train" / f"{job.data.label}-{training.objective}"
    paths = JobPaths.at(out, job.job_id)

    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    config = write_config(paths.config, job, job.job_id)
    t0 = time.perf_counter()
    with StopFlag() as stop:  # the grid runner's call: the replicate's derived seed
        result = train(dataset, job.model, job.generator, job.run_training,
                       checkpoint_path=paths.checkpoint, cache_dir=args.cache_dir,
                       progress=_reporter(training.nepochs), stop=stop, device=device)
    record = provenance(seed=job.seed, **data_provenance(job.data))
    if not result.completed:
        write_job_parquet(paths.history, result.history, job.job_id, record)
        print(f"ctgrid train: stopped after epoch {result.epochs_done} of {training.nepochs}; "
              f"run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.diverged is not None:   # no model, no done marker: the history shows the epochs
        write_job_parquet(paths.history, result.history, job.job_id, record)
        print(f"ctgrid train: failed: {result.diverged}; history in {paths.history}", file=sys.stderr)
        return EXIT_FAILED
    files = [config, *write_model(paths, job, result, record)]
    mark_done(paths, {"name": job.name, "epochs": result.epochs_done, "seconds": time.perf_counter() - t0,
                      "data_summary": dataset.summary(), "ctgrid_version": __version__,
                      "versions": record["versions"], "provenance": record}, files)
    last = result.history.iloc[-1]
    print(f"ctgrid train: {training.nepochs} epochs in {time.perf_counter() - t0:.1f}s, "
          f"train acc {last['acc_train']:.3f}, val acc {last['acc_val']:.3f}; wrote {out}",
          file=sys.stderr)
    return 0
