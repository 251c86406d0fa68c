"""Evaluation of one trained model: counterfactual measures and predictive metrics (docs/deviations.md, M4).

:func:`evaluate_model` returns two tidy frames, written by the CLI and the grid runner
as ``evaluation.parquet`` and ``performance.parquet``:

``evaluation`` — one row per counterfactual x metric (:data:`EVALUATION_COLUMNS`):
``run``, ``individual`` (0..n_individuals-1 within the run), ``split`` (``train`` |
``test``), ``factual_index`` (row within that split), ``factual_label`` (true label),
``target``, ``predicted`` (this model's class at the factual: where it equals
``target`` the model already predicts the target), ``generator``, ``lambda_energy``,
``metric``, ``value``. Metrics: ``validity`` (argmax = target), ``validity_strict``
(softmax target probability >= ``tau``; the reference ignored ``tau``; docs/deviations.md, D4), ``cost``
(L1), ``ip`` (mean L1 distance to ``n_ip_samples`` target-class points),
``energy_differential``, ``share_unchanged`` (the reference's "redundancy": share of
features left unchanged), ``redundancy`` (docs/deviations.md, M4: share of features that can be reset to
the factual value, one at a time, with the counterfactual staying valid; NaN for invalid
ones; with ``config.redundancy``), ``converged``, ``steps``, ``ip_star`` and, with
``mmd_permutations > 0``, ``ip_star_pvalue``. Every counterfactual is kept, valid or not: filtering on validity
is the aggregation's choice (the reference's valid-only filter biases comparisons; docs/deviations.md, D7).

``ip_star`` is the unbiased MMD^2 of one group — the counterfactuals of one
``(run, lambda_energy, target)`` — against the target-class points of the split, each
side subsampled to ``mmd_samples`` (Gaussian kernel, ``mmd_length_scale``); as in the
reference its value is attached to every counterfactual row of the group (so average
it per group, not per row, if group sizes differ). Groups of one counterfactual get NaN.

``performance`` — ``metric`` (``accuracy``, ``macro_f1``, ``robust_accuracy``),
``attack`` (``none``, ``fgsm``, ``pgd``), ``eps``, ``value``, on the test split; the
attacks are clamped to the data domain (docs/deviations.md, D10). When the evaluation's constraints make
features immutable (and ``ig_rounds > 0``), ``ig_sensitivity`` rows (attack ``none``,
``eps`` NaN), one per round: the normalised integrated-gradients attribution of the
predicted class's logit that falls on the immutable features, the quantity Proposition
3.1 of the paper is about (:func:`sensitivity_rounds`).

``counterfactuals`` (only with ``save_counterfactuals``; :data:`POINT_COLUMNS`) — one row
per counterfactual with both points, float32 as searched, for re-prediction by other models
(a DataFrame like the other two; ``factual`` and ``counterfactual`` are Arrow fixed-size
lists, so ``counterfactuals.parquet`` stores them exactly; :func:`original_units` gives
them in the data's own units and categories).

Every random draw (factuals, targets, reference samples, MMD subsamples, PGD starts)
comes from a generator seeded by the evaluation data's identity and the run, never by
the model, so paired models see identical draws (:mod:`ctgrid.evaluation.grid`).
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import Literal, NamedTuple, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from .._torch import model_device
from ..constraints import Constraints
from ..data.dataset import Dataset
from ..errors import ConfigError
from ..generators import CounterfactualBatch, GeneratorConfig, codec_for
from ..seeding import torch_generator
from .config import EvaluationConfig
from .grid import CHUNK_ROWS, EvaluationGrid, build_grid, data_identity, search_config, search_grid
from .metrics import counterfactual_metrics
from .mmd import mmd_by_group
from .predictive import accuracy, ig_sensitivity, integrated_gradients, macro_f1, predict_logits
from .robustness import robust_accuracy

EVALUATION_COLUMNS = ("run", "individual", "split", "factual_index", "factual_label", "target",
                      "predicted", "generator", "lambda_energy", "metric", "value")
PERFORMANCE_COLUMNS = ("metric", "attack", "eps", "value")
CE_METRICS = ("validity", "validity_strict", "cost", "ip", "energy_differential",
              "share_unchanged", "redundancy", "converged", "steps", "ip_star")


class ModelEvaluation(NamedTuple):
    """What :func:`evaluate_model` measures for one model, three pandas DataFrames: the
    ``evaluation`` and ``performance`` frames (module docstring) and, with
    ``config.save_counterfactuals``, the ``counterfactuals`` themselves
    (:func:`counterfactual_points`; else ``None``)."""

    evaluation: pd.DataFrame
    performance: pd.DataFrame
    counterfactuals: pd.DataFrame | None = None


def evaluation_constraints(dataset: Dataset, config: EvaluationConfig,
                           constraints: Constraints | None = None) -> Constraints:
    """The training constraints (``constraints`` or the dataset's), or — when
    ``config.mutability`` is set — their domain with that mutability alone (features it
    does not name are free; an empty mapping lifts every mutability constraint)."""
    base = dataset.constraints if constraints is None else constraints
    if config.mutability is None:
        return base
    free = Constraints(base.lower, base.upper, ("both",) * base.n_features, base.groups)
    return free.with_mutability(dict(config.mutability), dataset.feature_names, "evaluation.mutability")


def evaluate_model(model: nn.Module, dataset: Dataset, config: EvaluationConfig, *,
                   generator_config: GeneratorConfig | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   constraints: Constraints | None = None,
                   chunk_rows: int = CHUNK_ROWS,
                   device: torch.device | str | None = None) -> ModelEvaluation:
    """``(evaluation, performance, counterfactuals)`` of ``model`` on ``dataset`` (module docstring).

    ``generator_config`` supplies generator settings the evaluation config does not
    (energy schedule, REVISE VAE sizes; default :class:`GeneratorConfig`); name, cost,
    ``tau``, ``T`` and step come from ``config``. ``cache_dir`` caches REVISE's VAE.
    ``config.enabled`` is the grid runner's switch and is not consulted here. ``device``
    (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``; default: where the model is) is where
    everything is computed: the data move there once, a model elsewhere is copied there (the
    caller's stays put); the random draws come from CPU generators whatever the device.
    """
    return evaluate_models([model], dataset, config, generator_config=generator_config,
                           cache_dir=cache_dir, constraints=constraints, chunk_rows=chunk_rows,
                           device=device)[0]


def evaluate_models(models: Sequence[nn.Module], dataset: Dataset, config: EvaluationConfig, *,
                    generator_config: GeneratorConfig | None = None,
                    cache_dir: str | os.PathLike | None = None,
                    constraints: Constraints | None = None,
                    chunk_rows: int = CHUNK_ROWS,
                    device: torch.device | str | None = None) -> list[ModelEvaluation]:
    """:func:`evaluate_model` of several models (a pack) under one configuration: their
    test-time searches run as one (each model's result is the one it gets alone)."""
    models, dataset, constraints = on_device(models, dataset, constraints, device)
    for model in models:
        k = predict_logits(model, dataset.X_train[:1].to(model_device(model))).shape[1]
        if k != dataset.n_classes:
            raise ConfigError(f"evaluate_model: the model has {k} outputs; dataset {dataset.name!r} "
                              f"has {dataset.n_classes} classes")
    cons = evaluation_constraints(dataset, config, constraints)
    grid = build_grid(dataset, config)
    batches = _search(models, grid, dataset, config, cons, generator_config, cache_dir, chunk_rows)
    name = search_config(config, generator_config).name
    out = [ModelEvaluation(_frame(model, grid, batch, config, name),
                           performance_frame(model, dataset, config, cons),
                           counterfactual_points(model, grid, batch) if config.save_counterfactuals else None)
           for model, batch in zip(models, batches)]
    for evaluation in out:
        hint = convergence_hint(evaluation.evaluation, dataset, config)
        if hint is not None:
            warnings.warn(hint, RuntimeWarning, stacklevel=3)
    return out


def on_device(models: Sequence[nn.Module], dataset: Dataset, constraints: Constraints | None,
              device: torch.device | str | None) -> tuple[list[nn.Module], Dataset, Constraints | None]:
    """The models, data and constraints of an evaluation on ``device`` (``None``: the first
    model's). A model elsewhere is copied there; on the CPU nothing moves (the very objects)."""
    if device is None:
        if not models:
            return list(models), dataset, constraints
        dev = model_device(models[0])
    else:
        from ..device import resolve_device
        dev = resolve_device(str(device))
    from ..device import configure
    configure(dev)
    moved = [m if model_device(m, dev) == dev else copy.deepcopy(m).to(dev) for m in models]
    return moved, dataset.to(dev), None if constraints is None else constraints.to(dev)


def convergence_hint(frame: pd.DataFrame, dataset: Dataset, config: EvaluationConfig) -> str | None:
    """The hint (warned by :func:`evaluate_models`, shown by ``ctgrid run``) when no test-time
    search reached ``tau``: on a new dataset the defaults (``tau`` 0.95, 50 SGD steps of 0.1 on
    the raw gradient) may be too short for its scale, and every cost and IP then measures
    unfinished searches."""
    converged = frame.loc[frame["metric"] == "converged", "value"]
    if len(converged) == 0 or converged.any():
        return None
    return (f"evaluation: no counterfactual of the {len(converged)} searched on {dataset.name!r} reached "
            f"tau {config.tau:g} within maxiter {config.maxiter} steps (lr {config.lr:g}, step "
            f"{config.step}): its measures describe unfinished searches; try a larger "
            f"evaluation.maxiter or evaluation.lr, evaluation.step: normalized, or a lower evaluation.tau")


def _search(models: Sequence[nn.Module], grid: EvaluationGrid, dataset: Dataset, config: EvaluationConfig,
            constraints: Constraints, generator_config: GeneratorConfig | None,
            cache_dir: str | os.PathLike | None, chunk_rows: int) -> list[CounterfactualBatch]:
    gen_cfg = search_config(config, generator_config)
    codec = codec_for(gen_cfg, dataset.X_train, cache_dir=cache_dir)  # REVISE: the training's VAE
    return search_grid(list(models), grid, gen_cfg, constraints, codec=codec, chunk_rows=chunk_rows)


def counterfactual_frame(model: nn.Module, dataset: Dataset, config: EvaluationConfig,
                         constraints: Constraints, *, generator_config: GeneratorConfig | None = None,
                         cache_dir: str | os.PathLike | None = None,
                         chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """The ``evaluation`` frame: one batched search over the whole grid, then every measure."""
    return counterfactual_frames([model], dataset, config, constraints, generator_config=generator_config,
                                 cache_dir=cache_dir, chunk_rows=chunk_rows)[0]


def counterfactual_frames(models: Sequence[nn.Module], dataset: Dataset, config: EvaluationConfig,
                          constraints: Constraints, *, generator_config: GeneratorConfig | None = None,
                          cache_dir: str | os.PathLike | None = None,
                          chunk_rows: int = CHUNK_ROWS) -> list[pd.DataFrame]:
    """:func:`counterfactual_frame` of several models: the paired grid once, one search for all."""
    grid = build_grid(dataset, config)
    batches = _search(models, grid, dataset, config, constraints, generator_config, cache_dir, chunk_rows)
    name = search_config(config, generator_config).name
    return [_frame(model, grid, batch, config, name) for model, batch in zip(models, batches)]


#: columns of ``counterfactuals.parquet`` (``factual`` and ``counterfactual``: float32 lists)
POINT_COLUMNS = ("run", "individual", "split", "factual_index", "target", "lambda_energy", "predicted",
                 "valid", "factual", "counterfactual")


def counterfactual_points(model: nn.Module, grid: EvaluationGrid, batch: CounterfactualBatch) -> pd.DataFrame:
    """One row per counterfactual, in the grid's order (:data:`POINT_COLUMNS`): where it
    came from, its target, the model's class at the factual (``predicted``), whether the
    model's ``argmax`` at the counterfactual is the target (``valid``) and both points,
    stored exactly (float32 Arrow lists) so that other models can re-predict them."""
    x_cf = batch.counterfactual
    valid = predict_logits(model, x_cf).argmax(1).cpu() == grid.target
    predicted = predict_logits(model, grid.x.to(x_cf.device)).argmax(1).cpu()
    d = x_cf.shape[1]

    def points(t: torch.Tensor) -> pa.Array:
        flat = t.detach().reshape(-1).to(torch.float32).cpu().numpy()
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), d)
    columns = [grid.run.numpy(), grid.individual.numpy(), np.full(len(grid), grid.split, dtype=object),
               grid.factual_index.numpy(), grid.target.numpy(), grid.lambda_energy.numpy(),
               predicted.numpy(), valid.numpy(), points(grid.x), points(x_cf)]
    table = pa.table([c if isinstance(c, pa.Array) else pa.array(c) for c in columns], names=list(POINT_COLUMNS))
    arrow = (pa.types.is_fixed_size_list, pa.types.is_string)   # kept as they are in the Parquet file
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if any(f(t) for f in arrow) else None)


def points_table(points: pd.DataFrame) -> pa.Table:
    """The ``counterfactuals`` frame as the Arrow table ``counterfactuals.parquet`` holds: the
    exact column types, without pandas' metadata (so any reader, ``pq.read_table(...).to_pandas()``
    included, gets plain columns back)."""
    return pa.Table.from_pandas(points, preserve_index=False).replace_schema_metadata(None)


def original_units(points: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """The ``counterfactuals`` frame with both points in the data's original units and
    categories (:meth:`Dataset.decode`): the key columns, then ``factual.<column>`` and
    ``counterfactual.<column>`` for every original variable, and ``changed`` — the variables
    the counterfactual moves (a category that flips, a number that changes by more than 1e-6
    of its sd), comma-separated."""
    keys = [c for c in points.columns if c not in ("factual", "counterfactual")]

    def decoded(column: str) -> pd.DataFrame:
        x = torch.tensor(np.stack(points[column].to_numpy()).astype(np.float32)) if len(points) \
            else torch.zeros(0, dataset.n_features)
        return dataset.decode(x)
    before, after = decoded("factual"), decoded("counterfactual")
    sd = dict(zip(dataset.feature_names, np.asarray(dataset.meta.get("feature_std", np.ones(dataset.n_features)))))
    moved = pd.DataFrame({c: (after[c] - before[c]).abs() > 1e-6 * sd.get(c, 1.0)
                          if pd.api.types.is_numeric_dtype(before[c]) else before[c] != after[c]
                          for c in before.columns})
    changed = pd.Series([",".join(c for c, m in zip(moved.columns, row) if m) for row in moved.to_numpy()],
                        dtype=object)
    return pd.concat([points[keys].reset_index(drop=True), before.add_prefix("factual."),
                      after.add_prefix("counterfactual."), changed.rename("changed")], axis=1)


def _frame(model: nn.Module, grid: EvaluationGrid, batch: CounterfactualBatch, config: EvaluationConfig,
           generator: str) -> pd.DataFrame:
    x_cf = batch.counterfactual
    values = _per_run_metrics(model, grid, x_cf, config)
    values["converged"] = batch.converged.double().cpu()
    values["steps"] = batch.steps.double().cpu()
    groups = grid.run * len(grid.lambdas) + grid.lambda_index
    ip_star = mmd_by_group(x_cf, grid.target.to(x_cf.device), grid.X, grid.y,
                           groups=groups.to(x_cf.device),
                           length_scale=config.mmd_length_scale, n_subsample=config.mmd_samples,
                           n_permutations=config.mmd_permutations,
                           generator=torch_generator(*grid.identity, "ip_star"))
    values["ip_star"] = ip_star["ip_star"]
    if config.mmd_permutations:
        values["ip_star_pvalue"] = ip_star["ip_star_p"]
    predicted = predict_logits(model, grid.x.to(x_cf.device)).argmax(1).cpu()  # batched inside
    return _long_frame(grid, generator, values, predicted)


def _per_run_metrics(model: nn.Module, grid: EvaluationGrid, x_cf: torch.Tensor,
                     config: EvaluationConfig) -> dict[str, torch.Tensor]:
    """Per-CE measures, run by run: each run draws its own target-class reference samples
    (IP, energy differential) from the split, seeded by the data identity and the run."""
    names: tuple[str, ...] = ("validity", "validity_strict", "cost", "ip", "energy_differential",
                              "share_unchanged")
    names += ("share_resettable",) if config.redundancy else ()
    out = {k: torch.empty(len(grid), dtype=torch.float64) for k in names}
    x = grid.x
    run = grid.run
    bounds = torch.searchsorted(run, torch.arange(int(run.max()) + 2)).tolist()
    for r, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        tgt = grid.target[lo:hi]
        res = counterfactual_metrics(model, x[lo:hi].to(x_cf.device), x_cf[lo:hi],
                                     tgt.to(x_cf.device), reference_X=grid.X, reference_y=grid.y,
                                     generator=torch_generator(*grid.identity, "reference", r),
                                     tau=config.tau, n_samples=config.n_ip_samples,
                                     n_energy_samples=config.n_energy_samples,
                                     resettable=config.redundancy)
        for k in names:
            out[k][lo:hi] = res[k]
    if config.redundancy:
        out["redundancy"] = out.pop("share_resettable")
    return out


def _long_frame(grid: EvaluationGrid, generator: str, values: dict[str, torch.Tensor],
                predicted: torch.Tensor) -> pd.DataFrame:
    """Melt ``{metric: (N,) values}`` into the tidy schema, metric-major then grid order."""
    n, k = len(grid), len(values)
    def tile(t: torch.Tensor, dtype) -> np.ndarray:
        return np.tile(t.cpu().numpy().astype(dtype), k)
    frame = pd.DataFrame({
        "run": tile(grid.run, np.int64),
        "individual": tile(grid.individual, np.int64),
        "split": np.full(n * k, grid.split, dtype=object),
        "factual_index": tile(grid.factual_index, np.int64),
        "factual_label": tile(grid.factual_label, np.int64),
        "target": tile(grid.target, np.int64),
        "predicted": tile(predicted, np.int64),
        "generator": np.full(n * k, generator, dtype=object),
        "lambda_energy": tile(grid.lambda_energy, np.float64),
        "metric": np.repeat(np.array(list(values), dtype=object), n),
        "value": np.concatenate([v.cpu().numpy().astype(np.float64) for v in values.values()]),
    })
    return frame


def performance_frame(model: nn.Module, dataset: Dataset, config: EvaluationConfig,
                      constraints: Constraints) -> pd.DataFrame:
    """Test-set accuracy, macro-F1 and robust accuracy under FGSM/PGD at each budget."""
    X, y = dataset.X_test, dataset.y_test
    device = model_device(model)
    Xd, yd = X.to(device), y.to(device)
    pred = predict_logits(model, Xd).argmax(1)
    rows = [("accuracy", "none", 0.0, accuracy(yd, pred)),
            ("macro_f1", "none", 0.0, macro_f1(yd, pred, dataset.n_classes))]
    if config.fgsm_eps:
        acc = robust_accuracy(model, Xd, yd, config.fgsm_eps, attack="fgsm", constraints=constraints)
        rows += [("robust_accuracy", "fgsm", e, float(a)) for e, a in zip(config.fgsm_eps, acc)]
    if config.pgd_eps:
        gen = torch_generator(*data_identity(dataset, "test", X, y), "pgd")
        acc = robust_accuracy(model, Xd, yd, config.pgd_eps, attack="pgd", constraints=constraints,
                              steps=config.pgd_steps, alpha=config.pgd_alpha, generator=gen)
        rows += [("robust_accuracy", "pgd", e, float(a)) for e, a in zip(config.pgd_eps, acc)]
    rows += [("ig_sensitivity", "none", float("nan"), v)
             for v in sensitivity_rounds(model, dataset, config, constraints)]
    frame = pd.DataFrame(rows, columns=list(PERFORMANCE_COLUMNS))
    return frame.astype({"metric": object, "attack": object, "eps": np.float64, "value": np.float64})


def sensitivity_rounds(model: nn.Module, dataset: Dataset, config: EvaluationConfig,
                       constraints: Constraints) -> list[float]:
    """Sensitivity to the immutable features, one value per round (empty if none is immutable).

    ``ig_samples`` test rows are drawn with replacement and the gradient of each row's
    predicted-class logit is integrated from a U(-1, 1) baseline (``ig_steps`` points);
    each of ``ig_rounds`` rounds resamples ``ig_samples`` of these attributions with
    replacement and :func:`ig_sensitivity` takes the share of the normalised attribution
    on the immutable features (``range`` normalisation for tabular data, ``minmax`` for
    images, as the reference; docs/deviations.md, R15). The reference integrated afresh in every
    round (100 x 2500 rows); resampling one pool of attributions gives the same rounds'
    distribution at 1/100 of the cost (MNIST: seconds instead of minutes). Draws are
    seeded by the test split's identity, so a BL/CT pair is probed at the same rows and
    baselines.
    """
    protected = [i for i, kind in enumerate(constraints.mutability) if kind == "none"]
    if not protected or config.ig_rounds == 0:
        return []
    X, y = dataset.X_test, dataset.y_test
    device = model_device(model)
    gen = torch_generator(*data_identity(dataset, "test", X, y), "ig_sensitivity")
    n = config.ig_samples
    x = X[torch.randint(X.shape[0], (n,), generator=gen)].to(device)
    target = predict_logits(model, x).argmax(1)
    attr = integrated_gradients(model, x, target, baseline="uniform", n_steps=config.ig_steps,
                                generator=gen)
    norm: Literal["range", "minmax"] = "minmax" if dataset.image_shape is not None else "range"
    return [ig_sensitivity(attr[torch.randint(n, (n,), generator=gen).to(attr.device)], protected,
                           normalisation=norm)
            for _ in range(config.ig_rounds)]
