"""Per-row penalty terms of the counterfactual search objective.

Each penalty maps the current batch state to a ``(n,)`` tensor; the engine sums
``weight * penalty`` with the target cross-entropy. Rows are independent, so the
gradient of the batch sum equals the row-by-row gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class SearchState:
    """What a penalty may look at in one step (``step`` counts completed steps)."""

    x_cf: torch.Tensor      # (n, d) current counterfactual in input space
    factual: torch.Tensor   # (n, d)
    gap: torch.Tensor       # (n, d) |x_cf - factual| (differentiable; shared with the nascent check)
    target: torch.Tensor    # (n,)
    logits: torch.Tensor    # (n, K) model logits at x_cf
    step: int
    maxiter: int
    rows: torch.Tensor | None = None  # (n,) indices of these rows in the searched batch
    #: ``at(values)``: ``values[rows]`` for a per-factual ``(N,)`` tensor, kept compacted with
    #: the rows (one gather per compaction, not per step); ``None``: index ``rows`` directly
    at: Callable[[torch.Tensor], torch.Tensor] | None = None


def per_row(weights: torch.Tensor, penalty):
    """``weights[i] * penalty`` for row ``i`` of the searched batch: one weight per factual.

    Lets one search serve several settings at once (e.g. every test-time
    ``lambda_energy``); rows are independent, so this equals separate searches.
    """
    converted: dict[tuple, torch.Tensor] = {}

    def weighted(state: SearchState) -> torch.Tensor:
        if state.rows is None:
            raise ValueError("per-row penalty weights need SearchState.rows")
        like = state.logits
        key = (like.dtype, like.device)
        if key not in converted:   # one tensor per dtype and device: ``at`` keeps it compacted
            converted[key] = weights.to(like)
        w = converted[key]
        return (state.at(w) if state.at is not None else w[state.rows]) * penalty(state)
    return weighted


def l1_cost(state: SearchState) -> torch.Tensor:
    """L1 distance ``||x' - x||_1`` (unweighted, as the reference's 'Wachter')."""
    return state.gap.sum(dim=1)


def energy_decay(step: int, maxiter: int, schedule: str) -> float:
    """ECCo's decay factor ``phi(t) = a (b + t)^-0.9`` with ``t = step + 1`` (docs/deviations.md, R6)."""
    if schedule == "constant":
        return 1.0
    b = round(maxiter / 25)  # Python and Julia both round half to even
    if schedule == "reference":
        b = max(b, 1)
    a = b / 10
    return a * math.pow(b + step + 1, -0.9) if b > 0 else 0.0


def make_energy(schedule: str, quadratic: float):
    """ECCo's energy penalty ``phi(t) (E + q E^2)`` with ``E = -f_target(x')``."""
    def energy(state: SearchState) -> torch.Tensor:
        e = -state.logits.gather(1, state.target[:, None]).squeeze(1)
        return energy_decay(state.step, state.maxiter, schedule) * (e + quadratic * e * e)
    return energy
