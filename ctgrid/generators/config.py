"""Configuration of a counterfactual generator (one engine, several presets)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .._validate import check, memo, param, reset_unused
from .._mutability import CATEGORICAL_MODES

GENERATORS = ("generic", "ecco", "revise")
ENERGY_SCHEDULES = ("reference", "reference_exact", "constant")
#: Step rules: ``sgd`` moves ``lr * grad`` (the reference), ``normalized`` moves ``lr`` in
#: L2 along the allowed part of the gradient, whatever the model's steepness.
STEP_RULES = ("sgd", "normalized")


#: the Stable Neighbor Search settings (reset to their defaults when ``sns_radius`` is 0)
SNS_FIELDS = ("sns_steps", "sns_step_size", "sns_points", "sns_relative", "sns_control")


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of the batched gradient search (docs/deviations.md, M1, R5).

    Defaults are what the published numbers were really produced with: SGD step
    ``lr = 0.1`` (the reference ignored its configured 0.25), ``maxiter = 30``,
    ``tau = 0.75``, ``lambda_cost = 0.001``, ``lambda_energy = 5``.

    ``energy_schedule`` scales ECCo's energy term by ``phi(t) = a (b + t)^-0.9``:
    ``"reference"`` uses ``b = max(1, round(T/25))``, ``a = b/10`` — the reference's
    schedule, except that it is never zero; ``"reference_exact"`` keeps the
    reference's ``b = round(T/25)``, which silently disables the energy term for
    ``T <= 12`` (docs/deviations.md, D2; use it only to reproduce published numbers);
    ``"constant"`` uses ``phi = 1``.

    ``step``: ``"sgd"`` (reference) moves ``lr * grad``, so the step length scales with the
    model's input gradient; ``"normalized"`` moves exactly ``lr`` (L2) along the allowed
    part of the gradient. ``categorical``: one-hot groups treated as continuous
    (``"none"``, the reference's training searches), the state projected onto valid one-hot
    vectors after every step (``"project"``, the reference's evaluation), the model seeing the
    projected point with a continuous state (``"step"``) or one projection at the end
    (``"final"``). ``sns_radius > 0`` refines every result with Stable Neighbor Search
    (:mod:`ctgrid.generators.sns`; Black et al. 2022) within that L2 radius (times the base
    search's L2 move with ``sns_relative``); its defaults are Black et al.'s (200 steps of
    ``2 radius / 200``, 10 path points); ``sns_control`` replaces the SNS point by the
    equal-length move along the gradient (docs/deviations.md, M12).
    """

    name: str = param("ecco", choices=GENERATORS)
    lr: float = param(0.1, gt=0)
    maxiter: int = param(30, ge=1, le=100_000)
    tau: float = param(0.75, gt=0, lt=1)
    lambda_cost: float = param(0.001, ge=0)
    lambda_energy: float = param(5.0, ge=0, only=("ecco",))
    energy_schedule: str = param("reference", choices=ENERGY_SCHEDULES, only=("ecco",))
    energy_quadratic: float = param(1e-3, ge=0, doc="weight of the small quadratic energy part",
                                    only=("ecco",))
    latent_dim: int | None = param(None, ge=1, doc="REVISE VAE latent size (None: 2 if d <= 2 else 4)",
                                   only=("revise",))
    vae_hidden: int | None = param(None, ge=1, doc="REVISE VAE hidden size (None: 16 if d <= 2 else 32)",
                                   only=("revise",))
    vae_epochs: int = param(100, ge=1, only=("revise",))
    step: str = param("sgd", choices=STEP_RULES)
    categorical: str = param("none", choices=CATEGORICAL_MODES)
    sns_radius: float = param(0.0, ge=0, doc="Stable Neighbor Search stage: L2 radius (0 = off)")
    sns_steps: int = param(200, ge=1, doc="SNS gradient-ascent steps")
    sns_step_size: float | None = param(None, gt=0, doc="SNS step length (L2; None: 2 radius / steps)")
    sns_points: int = param(10, ge=1, doc="SNS points of the integrated-score path")
    sns_relative: bool = param(False, doc="SNS radius = sns_radius x the base search's L2 move, per row")
    sns_control: bool = param(False, doc="replace the SNS point by the equal-length move along the "
                                         "target's gradient (the control)")

    def __post_init__(self) -> None:
        check(self, "generator")

    def canonical(self) -> "GeneratorConfig":
        """This config with the parameters its generator ignores (``only`` others) reset,
        and the SNS settings reset when the stage is off."""
        def reset() -> "GeneratorConfig":
            out = reset_unused(self, {self.name})
            if out.sns_radius == 0:
                out = replace(out, **{f: _DEFAULT_SNS[f] for f in SNS_FIELDS})
            return out
        return memo(self, "_canonical", reset)

    @property
    def latent(self) -> bool:
        return self.name == "revise"


_DEFAULT_SNS: dict[str, Any] = {f.name: f.default for f in fields(GeneratorConfig) if f.name in SNS_FIELDS}
