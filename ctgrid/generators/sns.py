"""Stable Neighbor Search (Black, Wang, Datta, Fredrikson, ICLR 2022): a refinement stage.

Starting from the counterfactuals ``x_c`` some base generator found, SNS searches the
L2 ball of radius ``radius`` around each for a point that keeps the target class and
maximises the target score integrated along the straight path from a zero baseline,

    S(x) = integral_0^1 s_t(a x) da  ~  mean_j s_t(a_j x),  a_j = (j - 1/2) / points,

with ``s_t`` the model's softmax probability of the target class. Points whose whole
neighbourhood along that path scores high are less likely to be invalidated when the
model is retrained (the paper's argument). Steps are normalised gradient-ascent moves of
L2 length ``step_size`` (default ``2 radius / steps``, Black et al.'s rule: 200 steps of
``2 radius / 200``, so the default reaches the ball's surface halfway); after each the
point is projected onto the ball, the data domain and the factual's mutability (a feature
moves only in the direction its mutability allows, relative to the factual) and, with
one-hot groups, onto valid one-hot vectors. Of the iterates predicted as the target (the start included), the one
with the highest ``S`` is returned, so SNS never lowers the integrated score of a valid
counterfactual; an invalid start is replaced only by a valid iterate. Rows are independent and
searched as one batch. The authors' released code does not run; this follows the
paper's description (docs/deviations.md, M9).

``relative``: the radius of each row is ``radius`` times the L2 distance its base search
moved from the factual (Black et al. tie the radius to the base search: 0.8 x the largest
PGD budget; our base searches have no budget, the distance they moved stands in for it;
docs/deviations.md, M12). ``control``: the equal-length control — each counterfactual moved
the L2 distance SNS moved it, straight along the gradient of its target log-probability
(away from the decision boundary), projected as SNS's iterates are. It asks whether SNS's
gain is more than moving the same distance away from the boundary.
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
    steps: int = 200
    step_size: float | None = None      # None: 2 radius / steps (per row when ``relative``)
    points: int = 10
    relative: bool = False
    control: bool = False

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

    def radii(self, start: torch.Tensor, factual: torch.Tensor) -> torch.Tensor:
        """``(n, 1)`` radius of each row: ``radius``, or ``radius`` x the base search's L2 move."""
        if self.relative:
            return self.radius * (start - factual).norm(dim=1, keepdim=True)
        return torch.full((start.shape[0], 1), self.radius, dtype=start.dtype, device=start.device)

    def _project(self, x: torch.Tensor, centre: torch.Tensor, factual: torch.Tensor,
                 radius: torch.Tensor) -> torch.Tensor:
        delta = x - centre
        norm = delta.norm(dim=1, keepdim=True)
        x = centre + delta * torch.clamp(radius / torch.where(norm > 0, norm, torch.ones_like(norm)), max=1.0)
        x = self.constraints.clamp(x)
        if self.constraints.is_constrained:
            x = self.constraints.keep_direction(x, factual)
        return self.constraints.project_onehot(x) if self.constraints.groups else x

    def refine(self, model: nn.Module, batch: CounterfactualBatch) -> CounterfactualBatch:
        """``batch`` with every counterfactual replaced by its stable neighbour."""
        target, factual = batch.target.long(), batch.factual
        start = batch.counterfactual.detach()
        radius = self.radii(start, factual)
        size = 2.0 * radius / self.steps if self.step_size is None else self.step_size
        with eval_mode(model):
            best, best_score = start.clone(), self._valid_score(model, start, target)
            x = start
            for _ in range(self.steps):
                xg = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(self.integrated_score(model, xg, target).sum(), xg)
                x = self._project(x.detach() + size * _unit(grad), start, factual, radius)
                score = self._valid_score(model, x, target)
                better = score > best_score
                best = torch.where(better[:, None], x, best)
                best_score = torch.where(better, score, best_score)
            if self.control:
                best = self._control(model, start, factual, target, (best - start).norm(dim=1, keepdim=True))
        with torch.no_grad():
            still = _predict(model, best) == target
        return CounterfactualBatch(factual, batch.target, best, batch.converged & still, batch.steps,
                                   batch.nascent)

    def _control(self, model: nn.Module, start: torch.Tensor, factual: torch.Tensor, target: torch.Tensor,
                 distance: torch.Tensor) -> torch.Tensor:
        """Each row moved ``distance`` straight along the gradient of its target log-probability
        at ``start`` (away from the boundary), projected like SNS's iterates."""
        xg = start.detach().requires_grad_(True)
        with torch.enable_grad():
            logp = forward_rows(model, xg, torch.arange(xg.shape[0], device=xg.device)).log_softmax(dim=1)
            (grad,) = torch.autograd.grad(logp.gather(1, target[:, None]).sum(), xg)
        return self._project(start + distance * _unit(grad), start, factual, distance)

    def _valid_score(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``S(x)`` where ``x`` is predicted as the target, ``-inf`` elsewhere."""
        with torch.no_grad():
            score = self.integrated_score(model, x, target)
            valid = _predict(model, x) == target
        return torch.where(valid, score, torch.full_like(score, -float("inf")))


def _unit(grad: torch.Tensor) -> torch.Tensor:
    """Rows of ``grad`` scaled to unit L2 length (zero rows stay zero)."""
    norm = grad.norm(dim=1, keepdim=True)
    return grad / torch.where(norm > 0, norm, torch.ones_like(norm))
