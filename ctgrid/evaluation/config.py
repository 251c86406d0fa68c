"""Configuration of the evaluation of trained models (docs/deviations.md, M4, R10)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .._validate import check, memo, param
from .._mutability import CATEGORICAL_MODES, mutability_pairs
from ..generators.config import GENERATORS, SNS_FIELDS, STEP_RULES

#: How factuals are drawn: ``balanced`` (the reference: a class uniformly, then a row of
#: it; here exactly ``n/k`` or ``n/k + 1`` per class), ``uniform`` over the split's rows, or
#: ``all`` (every row of the split once, in order; ``n_individuals`` is then the split's size).
FACTUAL_DRAWS = ("balanced", "uniform", "all")
#: Splits the factuals can come from (``split``; ``None``: test if ``test_time`` else train).
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class EvaluationConfig:
    """Test-time counterfactual grid and predictive metrics.

    For every ``lambda_energy`` the generator searches ``n_runs x n_individuals``
    factuals (training split unless ``test_time``), with ``lambda_cost``, ``tau``
    and ``maxiter`` as the paper's final evaluation (0, 0.95, 50). Baseline and
    CT models of one comparison get the *same* factual/target pairs per run
    (paired design; the reference drew them per model). ``mutability`` overrides
    the training constraints at evaluation (``None`` keeps them).

    ``factuals``: class-balanced draws (default, as the reference), uniform over rows, or every
    row of the split once (``all``). ``split`` names the split the factuals (and IP's reference
    samples) come from; ``None`` keeps ``test_time``'s choice (test or train).
    ``categorical``: one-hot groups projected after every step (``project``, default: the
    reference reconstructs the encoding at every decode), seen projected by the model with a
    continuous state (``step``), projected once at the end (``final``) or left continuous
    (``none``). ``step``: the search's step
    rule (``sgd`` as the reference; ``normalized`` takes steps of L2 length ``lr`` whatever
    the model's steepness). ``redundancy``: also measure redundancy proper (share of
    features resettable to the factual with the counterfactual staying valid; docs/deviations.md, M4).
    ``ig_rounds`` x ``ig_samples``: integrated-gradients sensitivity to the immutable
    features (``ig_samples`` test rows drawn with replacement, baseline U(-1, 1),
    ``ig_steps`` points, resampled ``ig_rounds`` times), measured only when the
    evaluation's constraints make some feature immutable. ``sns_*``: the Stable Neighbor Search
    stage (:mod:`ctgrid.generators.sns`; on when ``sns_radius > 0``; defaults as Black et al.:
    200 steps of ``2 radius / 200``, 10 path points; ``sns_relative``: the radius times each
    counterfactual's L2 move; ``sns_control``: the equal-length control). ``save_counterfactuals``: keep the
    points themselves (``counterfactuals.parquet``), e.g. to re-predict them with retrained
    models (the consistency table of ``ctgrid aggregate``).
    """

    enabled: bool = param(True)
    generator: str = param("ecco", choices=GENERATORS)
    lambda_energy: tuple[float, ...] = param((0.1, 0.5, 1.0, 5.0, 10.0), ge=0)
    lambda_cost: float = param(0.0, ge=0)
    tau: float = param(0.95, gt=0, lt=1)
    maxiter: int = param(50, ge=1, le=100_000)
    lr: float = param(0.1, gt=0)
    n_runs: int = param(5, ge=1, le=10_000)
    n_individuals: int = param(100, ge=1, le=1_000_000)
    test_time: bool = param(False)
    n_ip_samples: int = param(1000, ge=1)
    n_energy_samples: int = param(50, ge=1)
    mmd_length_scale: float = param(5.0, gt=0)
    mmd_samples: int | None = param(100, ge=2)
    mmd_permutations: int = param(0, ge=0)
    fgsm_eps: tuple[float, ...] = param((0.03,), ge=0)
    pgd_eps: tuple[float, ...] = param((), ge=0)
    pgd_steps: int = param(40, ge=1)
    pgd_alpha: float = param(0.01, gt=0)
    mutability: tuple[tuple[str, str], ...] | None = param(None)
    factuals: str = param("balanced", choices=FACTUAL_DRAWS)
    split: str | None = param(None, choices=SPLITS, doc="the factuals' split (None: test if test_time, "
                                                        "else train)")
    categorical: str = param("project", choices=CATEGORICAL_MODES)
    step: str = param("sgd", choices=STEP_RULES)
    redundancy: bool = param(True)
    ig_rounds: int = param(100, ge=0)
    ig_samples: int = param(2500, ge=1)
    ig_steps: int = param(50, ge=1)
    sns_radius: float = param(0.0, ge=0, doc="refine test-time counterfactuals with Stable Neighbor "
                                             "Search in this L2 radius (0 = off)")
    sns_steps: int = param(200, ge=1)
    sns_step_size: float | None = param(None, gt=0, doc="None: 2 x radius / sns_steps (Black et al.)")
    sns_points: int = param(10, ge=1)
    sns_relative: bool = param(False, doc="radius = sns_radius x the L2 distance the base search moved")
    sns_control: bool = param(False, doc="the equal-length control instead of SNS")
    save_counterfactuals: bool = param(False, doc="also write every test-time counterfactual (factual, "
                                                  "counterfactual, target) to counterfactuals.parquet")

    def canonical(self) -> "EvaluationConfig":
        """This config with the SNS settings reset when the stage is off (``sns_radius`` 0), so
        a grid crossing them with radius 0 names one job (as :meth:`GeneratorConfig.canonical`)."""
        if self.sns_radius > 0:
            return self
        return memo(self, "_canonical", lambda: replace(self, **{f: _DEFAULTS[f] for f in SNS_FIELDS}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "mutability", mutability_pairs(self.mutability, "evaluation.mutability"))
        check(self, "evaluation")
        from ..errors import ConfigError
        if self.generator == "ecco" and not self.lambda_energy:
            raise ConfigError("evaluation.lambda_energy: got []; the ecco evaluation needs at least one value")
        for key in ("lambda_energy", "fgsm_eps", "pgd_eps"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ConfigError(f"evaluation.{key}: got {list(values)}; values must be distinct")


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(EvaluationConfig)}
