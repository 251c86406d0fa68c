"""Stable Neighbor Search (Black, Wang, Datta, Fredrikson, ICLR 2022): a refinement stage.

Starting from the counterfactuals ``x_c`` some base generator found, SNS searches the
L2 ball of radius ``radius`` around each for a point that keeps the target class and
maximises the target score integrated along the straight path from a zero baseline,

    S(x) = integral_0^1 s_t(a x) da  ~  mean_j s_t(a_j x),  a_j = (j - 1/2) / points,

with ``s_t`` the model's softmax probability of the target class. Points whose whole
neighbourhood along that path scores high are less likely to be invalidated when the
model is retrained (the paper's argument). Steps are normalised gradient-ascent moves of
L2 length ``step_size``; after each the point is projected onto the ball, the data
domain and the factual's mutability (a feature moves only in the direction its
mutability allows, relative to the factual) and, with one-hot groups, onto valid
one-hot vectors. Of the iterates predicted as the target (the start included), the one
with the highest ``S`` is returned, so SNS never lowers the integrated score of a valid
counterfactual; an invalid start is replaced only by a valid iterate. Rows are independent and
searched as one batch. The authors' released code does not run; this follows the
paper's description (docs/deviations.md, M9).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._torch import eval_mode
from ..constraints import Constraints
from .engine import CounterfactualBatch, forward_rows


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return forward_rows(model, x, torch.arange(x.shape[0], device=x.device)).argmax(dim=1)


@dataclass(frozen=True)
class StableNeighborSearch:
    """The SNS stage: ``refine(model, batch)`` returns the batch with refined counterfactuals."""

    constraints: Constraints
    radius: float = 0.3
    steps: int = 100
    step_size: float = 1e-3
    points: int = 16

    def integrated_score(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``S(x)`` per row: the target probability averaged over ``points`` midpoints of the
        path from 0 to ``x`` (differentiable in ``x``). A row's path points are contiguous,
        so several models searched at once (:class:`RoutedModels`) each see their own rows."""
        m = self.points
        alphas = (torch.arange(m, dtype=x.dtype, device=x.device) + 0.5) / m
        path = (x[:, None, :] * alphas[None, :, None]).reshape(-1, x.shape[1])     # (n m, d)
        rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(m)
        probs = forward_rows(model, path, rows).softmax(dim=1)
        return probs.gather(1, target.repeat_interleave(m)[:, None]).reshape(-1, m).mean(dim=1)

    def _project(self, x: torch.Tensor, centre: torch.Tensor, factual: torch.Tensor) -> torch.Tensor:
        delta = x - centre
        norm = delta.norm(dim=1, keepdim=True)
        x = centre + delta * torch.clamp(self.radius / torch.where(norm > 0, norm, torch.ones_like(norm)),
                                         max=1.0)
        x = self.constraints.clamp(x)
        if self.constraints.is_constrained:
            x = self.constraints.keep_direction(x, factual)
        return self.constraints.project_onehot(x) if self.constraints.groups else x

    def refine(self, model: nn.Module, batch: CounterfactualBatch) -> CounterfactualBatch:
        """``batch`` with every counterfactual replaced by its stable neighbour."""
        target, factual = batch.target.long(), batch.factual
        start = batch.counterfactual.detach()
        with eval_mode(model):
            best, best_score = start.clone(), self._valid_score(model, start, target)
            x = start
            for _ in range(self.steps):
                xg = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(self.integrated_score(model, xg, target).sum(), xg)
                norm = grad.norm(dim=1, keepdim=True)
                step = grad / torch.where(norm > 0, norm, torch.ones_like(norm))
                x = self._project(x.detach() + self.step_size * step, start, factual)
                score = self._valid_score(model, x, target)
                better = score > best_score
                best = torch.where(better[:, None], x, best)
                best_score = torch.where(better, score, best_score)
        with torch.no_grad():
            still = _predict(model, best) == target
        return CounterfactualBatch(factual, batch.target, best, batch.converged & still, batch.steps,
                                   batch.nascent)

    def _valid_score(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``S(x)`` where ``x`` is predicted as the target, ``-inf`` elsewhere."""
        with torch.no_grad():
            score = self.integrated_score(model, x, target)
            valid = _predict(model, x) == target
        return torch.where(valid, score, torch.full_like(score, -float("inf")))
