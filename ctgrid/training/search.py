"""The CE phase of a pack: one counterfactual search over all members' factuals.

Every member draws its factuals, targets and ``x+`` from its own seed stream
(:func:`counterfactuals.draw_factuals`), exactly as alone; then ONE search runs over
the concatenated factuals, each row through its own member's model
(:class:`ctgrid.generators.RoutedModels`) and with its member's ``tau``, nascent
radius, ``lambda_cost`` and ``lambda_energy`` as per-row values, so the search step's
bookkeeping (penalties, constraints, convergence, compaction) runs once for the pack.
Members whose searches differ otherwise (generator kind, step size, budget, ...) search
in separate groups. With a ``wrap_search`` hook (sharded mode) every member searches
through its own wrapped engine instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .._validate import to_dict
from ..data import Dataset
from ..generators import (GeneratorConfig, RoutedModels, SearchEngine, codec_for,
                          generator_for, make_generator)
from ..seeding import torch_generator
from .config import TrainingConfig
from .counterfactuals import CETuples, ClassPools, Generate, ce_tuples, counterfactual_phase, draw_factuals

#: ``wrap_search(build) -> generate``: the training's CE search made from ``build()``, its
#: engine (e.g. split over the ranks of a group: :class:`ctgrid.parallel.ShardedGenerate`)
SearchWrapper = Callable[[Callable[[], SearchEngine]], Generate]

#: generator fields a pack's members may set differently within one search
PER_ROW = ("tau", "lambda_cost", "lambda_energy")
#: at most this many values (rows x features) in one fused search: larger searches run
#: their members in several searches (memory-bound steps slow down once out of cache)
SEARCH_VALUES = 2**20


class PackSearch:
    """The CE phases of a pack's members (see the module docstring)."""

    def __init__(self, dataset: Dataset, generators: Sequence[GeneratorConfig],
                 cache_dir: Path | None, wrap_search: SearchWrapper | None):
        self.ds, self.gens, self.cache_dir, self.wrap = dataset, list(generators), cache_dir, wrap_search
        self._wrapped: dict[int, Generate] = {}
        self._engines: dict[tuple[int, ...], SearchEngine] = {}

    def phases(self, models: Sequence[nn.Module], members: list[int], cfgs: Sequence[TrainingConfig],
               epoch: int, pools: ClassPools) -> dict[int, CETuples]:
        """The CE tuples of epoch ``epoch`` of ``members`` (models as at the start of the epoch)."""
        if self.wrap is not None:
            return {k: self._alone(models[k], k, cfgs[k], epoch, pools) for k in members}
        groups: dict[str, list[int]] = {}
        for k in members:
            key = {f: v for f, v in to_dict(self.gens[k]).items() if f not in PER_ROW}
            groups.setdefault(json.dumps(key, sort_keys=True), []).append(k)
        out: dict[int, CETuples] = {}
        for ks in groups.values():
            for part in _chunks(ks, [cfgs[k].nce * self.ds.n_features for k in ks], SEARCH_VALUES):
                out.update(self._together(models, part, cfgs, epoch, pools))
        return out

    def _alone(self, model: nn.Module, k: int, cfg: TrainingConfig, epoch: int,
               pools: ClassPools) -> CETuples:
        if k not in self._wrapped:
            assert self.wrap is not None
            self._wrapped[k] = self.wrap(lambda: generator_for(
                self.gens[k], self.ds.constraints, self.ds.X_train, cache_dir=self.cache_dir))
        ds = self.ds
        return counterfactual_phase(
            model, ds.X_train, ds.y_train, pools, nce=cfg.nce, n_classes=ds.n_classes,
            generate=self._wrapped[k], eps=cfg.adv_eps,
            gen=torch_generator(cfg.seed, "counterfactuals", epoch), nonconverged=cfg.nonconverged,
            constraints=ds.constraints, adv_label=cfg.adv_label)

    def _together(self, models: Sequence[nn.Module], ks: list[int], cfgs: Sequence[TrainingConfig],
                  epoch: int, pools: ClassPools) -> dict[int, CETuples]:
        ds = self.ds
        draws = [draw_factuals(models[k], ds.X_train, pools, nce=cfgs[k].nce, n_classes=ds.n_classes,
                               gen=torch_generator(cfgs[k].seed, "counterfactuals", epoch)) for k in ks]
        sizes = [len(d.idx) for d in draws]
        result = self._engine(ks, sizes).search(
            RoutedModels([models[k] for k in ks], sizes),
            torch.cat([d.x for d in draws]), torch.cat([d.target for d in draws]),
            nascent_eps=_per_row([cfgs[k].adv_eps for k in ks], sizes),
            tau=_per_row([self.gens[k].tau for k in ks], sizes))
        return {k: ce_tuples(d, part, ds.y_train, nonconverged=cfgs[k].nonconverged,
                             constraints=ds.constraints, adv_label=cfgs[k].adv_label)
                for k, d, part in zip(ks, draws, result.split(sizes))}

    def _engine(self, ks: list[int], sizes: list[int]) -> SearchEngine:
        """One engine for the members ``ks`` (their per-row weights; REVISE's shared VAE)."""
        key = (*ks, *sizes)
        if key not in self._engines:
            first = self.gens[ks[0]]
            weights = {f: _per_row([float(getattr(self.gens[k], f)) for k in ks], sizes)
                       for f in ("lambda_cost", "lambda_energy")}
            codec = codec_for(first, self.ds.X_train, cache_dir=self.cache_dir)
            self._engines[key] = make_generator(first, self.ds.constraints, codec=codec, **weights)
        return self._engines[key]


def _per_row(values: list[float], sizes: list[int]) -> torch.Tensor:
    """One float32 value per searched row: ``values[k]`` for the ``sizes[k]`` rows of member ``k``."""
    return torch.cat([torch.full((n,), v, dtype=torch.float32) for v, n in zip(values, sizes)])


def _chunks(items: list[int], sizes: list[int], limit: int) -> list[list[int]]:
    """``items`` in order, cut into consecutive runs whose ``sizes`` sum to at most ``limit``
    (a single item larger than ``limit`` forms its own run)."""
    out: list[list[int]] = [[]]
    total = 0
    for item, size in zip(items, sizes):
        if out[-1] and total + size > limit:
            out.append([])
            total = 0
        out[-1].append(item)
        total += size
    return out
