"""A job: one fully resolved configuration (data, model, generator, training, evaluation).

A job's identity is a hash of its *canonical* configuration, in which every
parameter its objective does not use is reset to its default. So the 135
``vanilla`` points of the penalties grid, which differ only in CT-only
parameters, are one job (docs/deviations.md, D13), while each grid point still maps
to the job that produces its results.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

from .._validate import build, memo, plain_dict, seed_dict, to_dict, unknown_key
from ..data.config import DataConfig
from ..evaluation.config import EvaluationConfig
from ..generators.config import GeneratorConfig
from ..models import ModelConfig
from ..seeding import derive_seed
from ..training.config import TrainingConfig

GROUPS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "generator": GeneratorConfig,
                           "training": TrainingConfig, "evaluation": EvaluationConfig}

#: a search step's cost relative to ECCo's / Generic's, per generator (REVISE also decodes
#: through its VAE), in :meth:`JobConfig.expected_cost_parts`
SEARCH_COST = {"revise": 1.5}


@dataclass(frozen=True)
class JobConfig:
    """Everything one training + evaluation needs; built once from YAML or flags."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    generator: GeneratorConfig = GeneratorConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None) -> "JobConfig":
        """Build from ``{group: {key: value}}``; unknown groups/keys raise ConfigError."""
        mapping = dict(mapping or {})
        for key in mapping:
            if key not in GROUPS:
                raise unknown_key(str(key), list(GROUPS), "config")
        return cls(**{g: build(t, mapping.get(g), g) for g, t in GROUPS.items()})

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def canonical(self) -> "JobConfig":
        """This job with every parameter its objective and generator ignore reset to default.

        Each config declares which of its fields its generator or objective uses
        (:meth:`TrainingConfig.canonical`, :meth:`GeneratorConfig.canonical`); an objective
        without counterfactuals ignores the whole generator, a disabled evaluation all of it,
        an evaluation without SNS its SNS settings (:meth:`EvaluationConfig.canonical`).
        """
        return memo(self, "_canonical", self._canonical)

    def _canonical(self) -> "JobConfig":
        tr = self.training.canonical()
        gen = self.generator.canonical() if tr.needs_counterfactuals else GeneratorConfig()
        ev = self.evaluation.canonical() if self.evaluation.enabled else EvaluationConfig(enabled=False)
        out = replace(self, generator=gen, training=tr, evaluation=ev)
        out.__dict__["_canonical"] = out   # canonical of canonical: itself
        return out

    @property
    def job_id(self) -> str:
        """16 hex digits of the SHA-256 of the canonical configuration's non-default values.

        Only values that differ from their field's default are hashed, so a later
        ctgrid release that adds a parameter (with a default that keeps the old
        behaviour) keeps every existing job id and finds existing results.
        """
        canon = self.canonical()

        def digest() -> str:
            text = json.dumps(_non_default(canon), sort_keys=True, separators=(",", ":"))
            return hashlib.sha256(text.encode()).hexdigest()[:16]
        return memo(canon, "_job_id", digest)

    @property
    def seed(self) -> int:
        """Training seed: from the identity parts a baseline and its CT models share
        (data, model, replicate ``training.seed``), so a BL/CT pair starts from the same
        weights and batch order; never from rank, order or process count."""
        c = self.canonical()
        return derive_seed("train", json.dumps(c.data.identity(), sort_keys=True),
                           json.dumps(seed_dict(c.model), sort_keys=True), c.training.seed) % (2**31)

    @property
    def init_seed(self) -> int:
        """Initialisation seed (``-1`` when ``training.init_seed`` is unset: the training seed's),
        derived like :attr:`seed` from data, model and ``training.init_seed``."""
        c = self.canonical()
        if c.training.init_seed < 0:
            return -1
        return derive_seed("init", json.dumps(c.data.identity(), sort_keys=True),
                           json.dumps(seed_dict(c.model), sort_keys=True), c.training.init_seed) % (2**31)

    @property
    def run_training(self) -> TrainingConfig:
        """The training config a run uses: the replicate and initialisation seeds derived."""
        return replace(self.training, seed=self.seed, init_seed=self.init_seed)

    @property
    def name(self) -> str:
        """A short human-readable label (``moons-full-ecco``)."""
        tr = self.training
        gen = f"-{self.generator.name}" if tr.needs_counterfactuals else ""
        return f"{self.data.label}-{tr.objective}{gen}"

    def expected_cost(self) -> float:
        """A rough relative cost of the job run alone, for longest-expected-first ordering
        (:meth:`expected_cost_parts` summed)."""
        return sum(self.expected_cost_parts())

    def expected_cost_parts(self) -> tuple[float, float]:
        """``(training, evaluation)``: the rough relative costs of training the job alone and of
        evaluating it (sizes from the dataset registry where the config leaves them to the
        dataset). A fused pack shares much of the training part between its members
        (:func:`ctgrid.grid.packs.member_costs`), never the evaluation part."""
        from ..data.loaders import data_spec
        tr, gen = self.training, self.generator
        spec = data_spec(self.data)
        n_train = self.data.n_train or spec.n_train
        batch = tr.batch_size or spec.batch_size
        train = tr.nepochs * (n_train / batch) * 1.0
        if tr.needs_counterfactuals:
            ce_epochs = tr.nepochs - tr.burnin_epochs
            train += ce_epochs * tr.nce * gen.maxiter * SEARCH_COST.get(gen.name, 1.0) / 300.0
        evaluation = 0.0
        if self.evaluation.enabled:
            ev = self.evaluation
            evaluation = len(ev.lambda_energy) * ev.n_runs * ev.n_individuals * ev.maxiter / 300.0
        return train, evaluation


def _non_default(job: JobConfig) -> dict[str, dict[str, Any]]:
    """``{group: {key: value}}`` of the identity values that differ from the field defaults."""
    out: dict[str, dict[str, Any]] = {}
    for group in GROUPS:
        cfg = getattr(job, group)
        defaults = _defaults(type(cfg))
        values = cfg.identity() if group == "data" else plain_dict(cfg)
        out[group] = {k: v for k, v in values.items() if v != defaults[k]}
    return out


_DEFAULTS: dict[type, dict[str, Any]] = {}


def _defaults(cls: type) -> dict[str, Any]:
    """Every field's default of config class ``cls``, rendered as :func:`to_dict` renders values."""
    if cls not in _DEFAULTS:
        _DEFAULTS[cls] = {f.name: _plain(f.default) for f in dataclasses.fields(cls)}
    return _DEFAULTS[cls]


def _plain(value: Any) -> Any:
    """A default as :func:`to_dict` renders values (tuples as lists)."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value
