"""The test-time counterfactual grid: paired factual/target draws and one batched search.

**Paired design.** The factuals and targets of run ``r`` are drawn from a seed derived
from the *data* alone — dataset name, split, a fingerprint of the split's features and
labels, ``n_individuals`` and ``r`` — never from the model. A baseline and a CT model
trained on the same data therefore explain the same individuals towards the same
targets in every run, and the per-run CT/BL ratios of the paper's tables compare like
with like. The reference chose individuals per model by the model's own predictions
(unpaired) and kept the label pairs fixed across runs (docs/deviations.md, D5); here
the pairs are redrawn per run.

Per run (``evaluation.factuals``): ``balanced`` (default, as the reference) gives every
class with rows in the split ``n/k`` factuals (``n/k + 1`` for ``n mod k`` classes drawn at
random) in random order, each a row of its class drawn without replacement (with
replacement only if the class has too few rows: the aggregation then counts each distinct
factual once); ``uniform`` draws ``n_individuals`` row indices uniformly without
replacement; ``all`` takes every row of the split once, in order. Each factual's target is uniform over the classes
other than its **true** label — drawn from data only, so BL and CT share it. The reference
drew it relative to the model's prediction; a factual whose target the model already
predicts is therefore possible here. Its search does not stop at step 0 (it must reach
``tau``), but it starts on the target's side of the boundary and is cheap and plausible by
construction, so the aggregation compares a BL/CT pair only on the individuals for which
neither model already predicts the target; the evaluation records each model's
``predicted`` class at the factual for that.

**One search.** Every run x ``lambda_energy`` setting of a model is one row of a
single batched search; the energy weight is a per-row tensor
(:func:`ctgrid.generators.make_generator` with a tensor ``lambda_energy``). Rows are
independent, so this equals one search per setting.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence, overload

import torch
from torch import nn

from .._torch import model_device, tensor_digest
from ..constraints import Constraints
from ..data.dataset import Dataset
from ..errors import ConfigError, DataError
from ..generators import CounterfactualBatch, GeneratorConfig, RoutedModels, make_generator
from ..generators.engine import Codec
from ..seeding import torch_generator
from .config import EvaluationConfig

#: Upper bound on rows per search call; larger grids are searched in chunks of this
#: many rows (rows are independent, so chunking does not change results).
CHUNK_ROWS = 65536


def split_data(dataset: Dataset, test_time: bool,
               split: str | None = None) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``(split name, X, y)``: ``split`` if given, else the test split for final results
    (``test_time``) and the training split otherwise."""
    name = split or ("test" if test_time else "train")
    if name == "validation":
        return name, dataset.X_val, dataset.y_val
    if name == "test":
        return name, dataset.X_test, dataset.y_test
    return "train", dataset.X_train, dataset.y_train


def fingerprint(X: torch.Tensor, y: torch.Tensor) -> str:
    """16 hex digits of the SHA-256 of a split's features and labels."""
    return str(tensor_digest(X, y.long()).hexdigest()[:16])


def data_identity(dataset: Dataset, split: str, X: torch.Tensor, y: torch.Tensor) -> tuple:
    """Seed parts naming the evaluation data: what paired models share, nothing model-specific."""
    return ("ctgrid-eval", dataset.name, split, fingerprint(X, y), dataset.n_classes)


@dataclass(frozen=True, eq=False)
class EvaluationGrid:
    """The expanded grid, one entry per counterfactual, ordered ``(run, lambda, individual)``.

    ``x`` ``(N, d)`` factuals; every other field ``(N,)``. ``lambda_index`` points into
    ``lambdas``; ``X``/``y`` are the split the factuals (and reference samples) come from.
    """

    split: str
    identity: tuple
    lambdas: tuple[float, ...]
    run: torch.Tensor
    individual: torch.Tensor
    factual_index: torch.Tensor
    factual_label: torch.Tensor
    target: torch.Tensor
    lambda_index: torch.Tensor
    X: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.run.numel()

    @property
    def x(self) -> torch.Tensor:
        return self.X[self.factual_index]

    @property
    def lambda_energy(self) -> torch.Tensor:
        return torch.tensor(self.lambdas, dtype=torch.float64)[self.lambda_index]


def lambda_settings(config: EvaluationConfig) -> tuple[float, ...]:
    """The energy weights searched: ``config.lambda_energy`` for ECCo; one setting recorded
    as ``0.0`` for generators without an energy term (repeating it would change nothing)."""
    if config.generator != "ecco":
        return (0.0,)
    if not config.lambda_energy:
        raise ConfigError("evaluation.lambda_energy: got []; allowed: at least one value >= 0")
    return tuple(config.lambda_energy)


def draw_pairs(identity: tuple, y: torch.Tensor, n_classes: int, n_individuals: int,
               run: int, factuals: str = "balanced") -> tuple[torch.Tensor, torch.Tensor]:
    """``(row indices, targets)`` of one run; a function of the data identity and ``run`` only."""
    y = y.cpu()
    if factuals == "balanced":
        gen = torch_generator(*identity, "pairs-balanced", n_individuals, run)
        idx = _balanced_rows(y, n_classes, n_individuals, gen)
    elif factuals == "all":
        gen = torch_generator(*identity, "pairs-all", run)
        idx = torch.arange(y.numel())
        n_individuals = y.numel()
    elif factuals == "uniform":
        gen = torch_generator(*identity, "pairs", n_individuals, run)
        n = y.numel()
        if n_individuals <= n:
            idx = torch.randperm(n, generator=gen)[:n_individuals]
        else:
            idx = torch.randint(n, (n_individuals,), generator=gen)
    else:
        raise ConfigError(f"evaluation.factuals: got {factuals!r}; allowed: balanced, uniform, all")
    shift = torch.randint(1, n_classes, (n_individuals,), generator=gen)
    return idx, (y[idx] + shift) % n_classes


def _balanced_rows(y: torch.Tensor, n_classes: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` row indices, ``n // k`` or ``n // k + 1`` of each of the ``k`` classes present in
    ``y``, in random order; within a class without replacement while its rows last."""
    present = torch.nonzero(torch.bincount(y, minlength=n_classes)).flatten()
    k = present.numel()
    counts = torch.full((k,), n // k, dtype=torch.long)
    counts[torch.randperm(k, generator=gen)[:n % k]] += 1
    labels = present.repeat_interleave(counts)[torch.randperm(n, generator=gen)]
    idx = torch.empty(n, dtype=torch.long)
    for c, m in zip(present.tolist(), counts.tolist()):
        rows = torch.nonzero(y == c).flatten()
        if m <= rows.numel():
            pick = rows[torch.randperm(rows.numel(), generator=gen)[:m]]
        else:
            pick = rows[torch.randint(rows.numel(), (m,), generator=gen)]
        idx[labels == c] = pick
    return idx


def build_grid(dataset: Dataset, config: EvaluationConfig) -> EvaluationGrid:
    """All factual/target pairs of ``n_runs`` runs, crossed with every energy weight."""
    split, X, y = split_data(dataset, config.test_time, config.split)
    if y.numel() == 0:
        raise DataError(f"evaluation: the {split} split of {dataset.name!r} has no rows")
    if dataset.n_classes < 2:
        raise DataError(f"evaluation: {dataset.name!r} has {dataset.n_classes} class; need >= 2")
    identity = data_identity(dataset, split, X, y)
    lambdas = lambda_settings(config)
    m, L = (y.numel() if config.factuals == "all" else config.n_individuals), len(lambdas)
    runs, idxs, targets = [], [], []
    for r in range(config.n_runs):
        idx, tgt = draw_pairs(identity, y, dataset.n_classes, m, r, config.factuals)
        runs.append(torch.full((L * m,), r, dtype=torch.long))
        idxs.append(idx.repeat(L))
        targets.append(tgt.repeat(L))
    index = torch.cat(idxs)
    per_run = torch.arange(L).repeat_interleave(m)
    return EvaluationGrid(split=split, identity=identity, lambdas=lambdas, run=torch.cat(runs),
                          individual=torch.arange(m).repeat(L * config.n_runs), factual_index=index,
                          factual_label=y.cpu()[index], target=torch.cat(targets),
                          lambda_index=per_run.repeat(config.n_runs), X=X, y=y)


def search_config(config: EvaluationConfig, base: GeneratorConfig | None = None) -> GeneratorConfig:
    """The generator searched at test time: ``base`` (e.g. the training generator, for its
    energy schedule or VAE sizes) with the evaluation's name, cost, ``tau``, ``T``, step size,
    step rule, one-hot handling and Stable Neighbor Search stage."""
    return replace(base or GeneratorConfig(), name=config.generator, lambda_cost=config.lambda_cost,
                   tau=config.tau, maxiter=config.maxiter, lr=config.lr, step=config.step,
                   categorical=config.categorical, sns_radius=config.sns_radius,
                   sns_steps=config.sns_steps, sns_step_size=config.sns_step_size,
                   sns_points=config.sns_points, sns_relative=config.sns_relative,
                   sns_control=config.sns_control)


@overload
def search_grid(model: nn.Module, grid: EvaluationGrid, generator: GeneratorConfig,
                constraints: Constraints, *, codec: Codec | None = ...,
                chunk_rows: int = ...) -> CounterfactualBatch: ...
@overload
def search_grid(model: Sequence[nn.Module], grid: EvaluationGrid, generator: GeneratorConfig,
                constraints: Constraints, *, codec: Codec | None = ...,
                chunk_rows: int = ...) -> list[CounterfactualBatch]: ...
def search_grid(model: nn.Module | Sequence[nn.Module], grid: EvaluationGrid, generator: GeneratorConfig,
                constraints: Constraints, *, codec: Codec | None = None,
                chunk_rows: int = CHUNK_ROWS) -> CounterfactualBatch | list[CounterfactualBatch]:
    """Search every row of ``grid`` (each with its own energy weight), ``chunk_rows`` at a time.

    Given several models (a pack), every chunk is searched for all of them in ONE search
    (:class:`ctgrid.generators.RoutedModels`: each model's rows through that model, with
    the rows and chunks it has alone, so each result is the one it gets alone); returns
    one batch per model.
    """
    models = [model] if isinstance(model, nn.Module) else list(model)
    device = model_device(models[0])
    lam = grid.lambda_energy.float()
    x_all, K = grid.x, len(models)
    parts: list[list[CounterfactualBatch]] = [[] for _ in models]
    for start in range(0, len(grid), chunk_rows):
        rows = slice(start, start + chunk_rows)
        x, target = x_all[rows].to(device), grid.target[rows].to(device)
        n = x.shape[0]
        engine = make_generator(generator, constraints, codec=codec,
                                lambda_energy=lam[rows].to(device).repeat(K))
        found = engine.search(_routed(models, [n] * K, device), x.repeat(K, 1), target.repeat(K))
        for k, part in enumerate(found.split([n] * K)):
            parts[k].append(part)
    out = [CounterfactualBatch.concat(p) for p in parts]
    return out[0] if isinstance(model, nn.Module) else out


def _routed(models: list[nn.Module], sizes: list[int], device: torch.device) -> RoutedModels:
    """The models of one search as :class:`RoutedModels`, its row bounds on the search's device
    (RoutedModels makes them on the CPU; ``torch.searchsorted`` wants them beside the rows. Phase 2
    of docs/gpu.md makes RoutedModels place them itself)."""
    routed = RoutedModels(models, sizes)
    if routed.bounds.device != device:
        routed.bounds = routed.bounds.to(device)
    return routed
