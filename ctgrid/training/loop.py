"""Counterfactual Training: the epoch loop, history and resume (docs/deviations.md, M3).

Randomness: every draw comes from a ``torch.Generator`` derived with
:func:`ctgrid.seeding.derive_seed` from ``(seed, purpose[, epoch])``, one stream
per purpose: ``init`` (model weights), ``shuffle`` (mini-batch order of epoch
``e``) and ``counterfactuals`` (factuals, targets and ``x+`` of epoch ``e``).
Hence the CE phase never shifts the batch order or the initialisation (a
``full`` run with zero CE weights trains exactly like ``vanilla``), and a run
resumed from a checkpoint replays the same draws as an uninterrupted one.

Speed: the CE phase runs ONE batched search per epoch; each mini-batch is one
forward pass over ``[x_b; x'; x+; nascent]`` and all terms come from one small
fixed matrix (:func:`objectives.term_matrix`); Adam uses the fused kernel. Many
compatible runs train as one batched network (:func:`train_pack`, :mod:`.pack`);
a single run is a pack of one.

Deviations from the reference, each a parameter of :class:`TrainingConfig` (docs/deviations.md, D1, D3, R3):
``lr`` is really used, ``shuffle`` (the reference never shuffled),
``nonconverged`` (``"drop"`` instead of the reference's ``"replace"``).
``nce`` smaller than the number of mini-batches is kept as given (the reference
raised it to one per batch; docs/deviations.md, D22); batches without counterfactuals train on ``L_clf``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from ..data import Dataset
from ..errors import ConfigError
from ..generators import GeneratorConfig
from ..models import ModelConfig, build_model, check_fits_data
from ..models.custom import ModelSpec, build_custom, describe, is_custom, module_rng
from ..seeding import derive_seed, torch_generator
from .checkpoint import fingerprint, load_checkpoint, save_checkpoint
from .config import TrainingConfig
from .pack import PackEpochs
from .search import PackSearch, SearchWrapper
from .stack import ModelStack, StackOptimizer


#: Columns of the per-epoch history. Loss components are NaN when the term is
#: not part of the objective (or has weight 0) and in epochs without CE phase;
#: ``converged``/``search_steps`` are NaN without CE phase (the reference logged 1.0).
HISTORY_COLUMNS = ("epoch", "loss", "clf", "div", "reg", "adv", "converged", "search_steps",
                   "n_ce", "acc_train", "acc_val", "t_ce", "t_update", "skipped")


@dataclass
class TrainResult:
    """The trained model, one history row per epoch, and whether all epochs ran.

    ``diverged`` says why training gave up on this run (``training.nonfinite_patience``
    consecutive epochs without a finite update); the runner records such a job as failed.
    """

    model: nn.Module
    history: pd.DataFrame
    completed: bool
    epochs_done: int
    diverged: str | None = None


def nonfinite_streak(history: Sequence[dict[str, Any]]) -> int:
    """Consecutive epochs at the end of ``history`` whose loss is not finite (no update)."""
    n = 0
    for row in reversed(history):
        if math.isfinite(float(row["loss"])):
            break
        n += 1
    return n


def validate(dataset: Dataset, config: TrainingConfig, model_config: ModelSpec | None = None) -> None:
    """Checks that need the data (the configs check themselves): ``nce <= n_train``, CNN on images."""
    if isinstance(model_config, ModelConfig):
        check_fits_data(model_config, dataset.image_shape is not None, dataset.name)
    n = len(dataset.y_train)
    if config.needs_counterfactuals and config.nce > n:
        raise ConfigError(f"training.nce: got {config.nce}; allowed: at most {n} "
                          f"(the training rows of {dataset.name!r})")


def make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """Adam (fused kernel where this torch has one: about a third faster per step) or SGD."""
    params = list(model.parameters())
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    try:
        return torch.optim.Adam(params, lr=config.lr, fused=True)
    except (RuntimeError, TypeError):  # torch < 2.4 has no fused Adam on CPU
        return torch.optim.Adam(params, lr=config.lr)


def history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    return frame.astype({"epoch": "int64", "n_ce": "int64", "skipped": "int64"})


@dataclass(frozen=True)
class PackMember:
    """One training run of a pack: its configs and its checkpoint file. ``model`` is a
    :class:`ModelConfig` or a user's classifier (:mod:`ctgrid.models.custom`)."""

    model: ModelSpec
    generator: GeneratorConfig
    training: TrainingConfig
    checkpoint_path: Path | None = None


#: what must be equal across the members of a pack (``training.<field>``)
PACK_TRAINING_FIELDS = ("nepochs", "batch_size", "optimizer", "leave_out")


def check_pack(dataset: Dataset, members: Sequence[PackMember]) -> None:
    """Members must share the architecture, the mini-batch grid, the epochs and the optimiser."""
    if not members:
        raise ValueError("a pack needs at least one member")
    if len(members) > 1 and any(is_custom(m.model) for m in members):
        raise ConfigError("a user's model (an nn.Module, a factory or model.kind: module) trains "
                          "alone, not in a pack of several")
    first = members[0]
    for m in members:
        validate(dataset, m.training, m.model)
        if m.model != first.model:
            raise ConfigError(f"pack members differ in the model: {m.model} vs {first.model}")
        for f in PACK_TRAINING_FIELDS:
            if getattr(m.training, f) != getattr(first.training, f):
                raise ConfigError(f"pack members differ in training.{f}: "
                                  f"{getattr(m.training, f)!r} vs {getattr(first.training, f)!r}")


def train(dataset: Dataset, model_config: ModelSpec, generator_config: GeneratorConfig,
          config: TrainingConfig, *, checkpoint_path: Path | None = None,
          cache_dir: Path | None = None,
          progress: Callable[[dict], None] | None = None,
          stop: Callable[[], bool] | None = None,
          wrap_search: SearchWrapper | None = None) -> TrainResult:
    """Train a classifier with ``config.objective`` on ``dataset`` (docs/deviations.md, M2, M3).

    ``model_config`` is a :class:`ModelConfig`, or any torch classifier mapping ``(n, d)``
    floats to ``(n, k)`` logits: an ``nn.Module`` (copied: the trained copy is the result's
    ``model``) or a factory ``(n_features, n_classes) -> nn.Module`` (built under the global
    RNG seeded from ``config.seed``) — same objective, CE phase, checkpoints and resume
    (:mod:`ctgrid.models.custom`; such a model trains alone, said once in the ``ctgrid`` log).

    Args:
        checkpoint_path: written atomically after every epoch; if it exists and
            belongs to this configuration, training resumes after its epoch.
        cache_dir: where REVISE's VAE is cached.
        progress: called with each new history row (a dict of :data:`HISTORY_COLUMNS`).
        stop: checked after each epoch (after checkpointing); ``True`` ends the
            run early with ``completed=False``.
        wrap_search: called once, at the first CT epoch, with a function that builds the
            generator's engine; returns the ``generate(model, x, target, nascent_eps=...)
            -> CounterfactualBatch`` used instead of the engine's ``search`` (e.g. sharded
            over MPI ranks). It must return rows in the order of ``x``.
    """
    member = PackMember(model_config, generator_config, config, checkpoint_path)
    if is_custom(model_config):
        logging.getLogger("ctgrid").info("model: a user's %s; it trains alone (not in a pack)",
                                         _what(model_config))
    report = None if progress is None else (lambda k, row: progress(row))
    return train_pack(dataset, [member], cache_dir=cache_dir, progress=report, stop=stop,
                      wrap_search=wrap_search)[0]


def train_pack(dataset: Dataset, members: Sequence[PackMember], *, cache_dir: Path | None = None,
               progress: Callable[[int, dict], None] | None = None,
               stop: Callable[[], bool] | None = None,
               wrap_search: SearchWrapper | None = None) -> list[TrainResult]:
    """Train the ``members`` (see :func:`check_pack`) as one batched network on ``dataset``.

    Each member's result equals what :func:`train` gives it alone: its own initialisation,
    shuffle order and CE draws from its own seed, its own checkpoint. Members resuming
    from checkpoints must have finished the same number of epochs. ``progress(k, row)``
    reports member ``k``'s history rows; ``stop`` is checked once per epoch for the pack.
    A member training gives up on (``diverged``) stops at that epoch as it would alone: no
    further history rows, checkpoints, progress reports or steps; the others go on.
    """
    check_pack(dataset, members)
    if members[0].training.leave_out >= 0:     # the same initialisation, one training row fewer
        dataset, _ = dataset.leave_one_out(members[0].training.leave_out)
    models = [_build(m, dataset) for m in members]
    stack = ModelStack(models)
    optimizer = StackOptimizer(stack, [m.training for m in members], make_optimizer)
    fps = [fingerprint(dataset, describe(m.model, mod) if is_custom(m.model) else m.model, m.generator,
                       m.training) for m, mod in zip(members, models)]
    custom = is_custom(members[0].model)
    histories: list[list[dict[str, Any]]] = []
    for k, m in enumerate(members):
        state = load_checkpoint(m.checkpoint_path, fps[k])
        histories.append([] if state is None else list(state["history"]))
        if state is not None:
            models[k].load_state_dict(state["model"])
            stack.load_member(k)
            optimizer.load_state_dict(k, state["optimizer"])
    done = {len(h) for h in histories}
    if len(done) > 1:
        raise ValueError(f"pack members resume from different epochs {sorted(done)}; run them apart")
    search = PackSearch(dataset, [m.generator for m in members], cache_dir, wrap_search)
    epochs = PackEpochs(dataset, stack, optimizer, [m.training for m in members], search)
    nepochs = members[0].training.nepochs
    diverged = [_gave_up(h, m.training, nepochs) for h, m in zip(histories, members)]
    for k, why in enumerate(diverged):
        if why is not None:     # resumed after it had already stopped (an interrupted pack)
            epochs.stop(k)
    for epoch in range(done.pop() + 1, nepochs + 1):
        if all(diverged):
            break
        with module_rng(derive_seed(members[0].training.seed, "module", epoch) if custom else None):
            rows = epochs.run(epoch)
        for k, (m, row) in enumerate(zip(members, rows)):
            if diverged[k] is not None:   # stopped: recorded no further, exactly as alone
                continue
            histories[k].append(row)
            if m.checkpoint_path is not None:
                save_checkpoint(m.checkpoint_path, model=models[k], optimizer=optimizer.state_dict(k),
                                epoch=epoch, history=histories[k], fp=fps[k], rng=epochs.seeds(k, epoch))
            if progress is not None:
                progress(k, dict(row))
            diverged[k] = _gave_up(histories[k], m.training, nepochs)
            if diverged[k] is not None:
                epochs.stop(k)
        if epoch < nepochs and not all(diverged) and stop is not None and stop():
            return [TrainResult(mod, history_frame(h), False, len(h)) for mod, h in zip(models, histories)]
    return [TrainResult(mod, history_frame(h), True, len(h), why)
            for mod, h, why in zip(models, histories, diverged)]


def _build(member: PackMember, dataset: Dataset) -> nn.Module:
    """A member's initial model, from its own ``init`` seed stream."""
    gen = torch_generator(member.training.weights_seed, "init")
    if isinstance(member.model, ModelConfig):
        return build_model(member.model, dataset.n_features, dataset.n_classes,
                           image_shape=dataset.image_shape, generator=gen)
    return build_custom(member.model, dataset.n_features, dataset.n_classes, gen)


def _what(model: ModelSpec) -> str:
    if isinstance(model, ModelConfig):
        return f"factory {model.factory}"
    if isinstance(model, nn.Module):
        return f"module {type(model).__name__}"
    return f"factory {getattr(model, '__qualname__', type(model).__name__)}"


def _gave_up(history: Sequence[dict[str, Any]], config: TrainingConfig, nepochs: int) -> str | None:
    """Why training gives up on a run after ``history`` (``None``: it goes on): the last
    ``nonfinite_patience`` epochs had no finite update. A pack member that gives up stops
    there — no more rows, checkpoints or steps — so its files are those of its run alone."""
    streak = nonfinite_streak(history)
    if streak < config.nonfinite_patience:
        return None
    return (f"training stopped at epoch {len(history)} of {nepochs}: {streak} consecutive epochs "
            f"without a finite update (training.nonfinite_patience {config.nonfinite_patience})")
