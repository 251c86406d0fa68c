"""Configuration of one Counterfactual Training run (docs/deviations.md, M2, M3, R1)."""
from __future__ import annotations

from dataclasses import dataclass

from .._validate import check, memo, param, reset_unused

OBJECTIVES = ("vanilla", "full", "energy", "adversarial")
#: Which loss terms each objective uses (``clf`` always).
OBJECTIVE_TERMS = {
    "vanilla": (),
    "full": ("div", "reg", "adv"),
    "energy": ("div", "reg"),
    "adversarial": ("adv",),
}
#: The weight field of each loss term (one map for the loss, job identity and tables).
TERM_WEIGHTS = {"clf": "lambda_clf", "div": "lambda_div", "reg": "lambda_reg", "adv": "lambda_adv"}


@dataclass(frozen=True)
class TrainingConfig:
    """Objective, loss weights and the optimisation schedule.

    Defaults follow the reference's effective values: Adam with ``lr = 1e-3``
    (now actually configurable: docs/deviations.md, D1), 100 epochs, ``nce = 1000``,
    loss weights ``(1, 0.5, 0.1, 0.25)``, nascent radius ``adv_eps = 0.3`` (L-inf).

    Deviations from the reference, each a parameter:
    ``shuffle`` (reference never shuffled mini-batches: ``False`` reproduces it);
    ``nonconverged = "replace"`` replaces a non-converged counterfactual by its
    ``x+`` as the reference did (zero divergence but still a ridge penalty and an
    adversarial example; docs/deviations.md, R3); ``"drop"`` leaves such rows out of every CE term.
    ``batch_size = None`` takes the dataset's default (30 synthetic, 1000 otherwise).
    ``adv_label``: the label of the adversarial loss on nascent counterfactuals, ``"true"``
    (the factual's ground truth; the reference's newest release, v0.1.3) or ``"predicted"``
    (the model's prediction at the factual; earlier releases and the AAAI-era results).
    YAML's bare ``true`` is read as ``"true"``.

    ``seed`` (the replicate) seeds the initialisation, the batch order and the CE draws;
    ``init_seed >= 0`` takes the initialisation from its own seed instead, everything else
    from ``seed`` — a retraining that varies only the initialisation, as Black et al.'s RS
    (docs/deviations.md, M10).
    """

    objective: str = param("full", choices=OBJECTIVES)
    lambda_clf: float = param(1.0, ge=0)
    lambda_div: float = param(0.5, ge=0, only=("div",))
    lambda_reg: float = param(0.1, ge=0, only=("reg",))
    lambda_adv: float = param(0.25, ge=0, only=("adv",))
    adv_eps: float = param(0.3, gt=0, only=("adv",))
    nepochs: int = param(100, ge=1, le=1_000_000)
    burnin: float = param(0.0, ge=0, le=1, only=("ce",))
    nce: int = param(1000, ge=1, only=("ce",))
    batch_size: int | None = param(None, ge=1)
    lr: float = param(1e-3, gt=0)
    optimizer: str = param("adam", choices=("adam", "sgd"))
    shuffle: bool = param(True)
    nonconverged: str = param("replace", choices=("replace", "drop"), only=("ce",))
    adv_label: str = param("true", choices=("true", "predicted"), only=("adv",))
    seed: int = param(0, ge=0)
    init_seed: int = param(-1, ge=-1, doc="initialisation-only seed: the weights' initialisation comes "
                                          "from it, batch order and CE draws still from seed (-1: "
                                          "everything from seed); Black et al.'s RS retrainings")
    nonfinite_patience: int = param(3, ge=1, doc="stop a run as failed after this many consecutive "
                                                 "epochs without a finite update (a diverged run)")
    leave_out: int = param(-1, ge=-1, doc="leave-one-out retraining: drop the leave_out-th row of a "
                                          "seeded permutation of the training rows (-1 = none; "
                                          "docs/deviations.md, M10)")

    def __post_init__(self) -> None:
        if self.adv_label is True:  # YAML `adv_label: true`
            object.__setattr__(self, "adv_label", "true")
        check(self, "training")

    @property
    def weights_seed(self) -> int:
        """The seed of the weights' initialisation (``init_seed`` if set, else ``seed``)."""
        return self.seed if self.init_seed < 0 else self.init_seed

    @property
    def terms(self) -> tuple[str, ...]:
        """The CE-dependent loss terms of the objective."""
        return OBJECTIVE_TERMS[self.objective]

    def canonical(self) -> "TrainingConfig":
        """This config with what the objective ignores reset: the weights (and the adversarial
        radius and label) of terms it does not use, and — without a CE term — the CE phase's
        parameters (fields declared ``only`` for a term name or ``"ce"``)."""
        return memo(self, "_canonical", lambda: reset_unused(
            self, set(self.terms) | ({"ce"} if self.needs_counterfactuals else set())))

    @property
    def needs_counterfactuals(self) -> bool:
        return bool(self.terms)

    @property
    def burnin_epochs(self) -> int:
        """Epochs ``1..burnin_epochs`` train without a CE phase (Python ``round`` = banker's, as Julia)."""
        return round(self.burnin * self.nepochs)


def weights(config: TrainingConfig) -> dict[str, float]:
    """The weight of each term the objective uses; terms weighted 0 are left out.

    ``clf`` is always present (also at weight 0), so every objective has a loss.
    Leaving zero-weight terms out means a ``full`` run with ``lambda_div =
    lambda_reg = lambda_adv = 0`` computes exactly the ``vanilla`` loss.
    """
    all_w = {term: float(getattr(config, name)) for term, name in TERM_WEIGHTS.items()}
    out = {"clf": all_w["clf"]}
    out.update({t: all_w[t] for t in config.terms if all_w[t] != 0})
    return out
