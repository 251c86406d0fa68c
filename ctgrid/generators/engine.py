"""The batched gradient-search engine behind every counterfactual generator.

All factuals of a call are searched at once as one ``(n, d)`` tensor. A row is
*converged* as soon as the softmax probability of its target reaches ``tau``;
converged rows are frozen (dropped from the active set) while the others go on,
for at most ``maxiter`` SGD steps. One forward and one backward pass over the
active rows per step serve both the convergence check and the gradient.

The *nascent* counterfactual of a row is the last point of its path with
``||x'_t - x||_inf <= eps`` (the factual if none); it is tracked on the fly, so
the path is never stored.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..constraints import Constraints
from .penalties import SearchState

Penalty = Callable[[SearchState], torch.Tensor]


class Codec(Protocol):
    """A latent space to search in (REVISE): deterministic ``encode`` and ``decode``."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class CounterfactualBatch:
    """Result of one batched search; every field has one entry (row) per factual.

    Shapes: ``factual``, ``counterfactual``, ``nascent``: ``(n, d)``;
    ``target``, ``converged``, ``steps``: ``(n,)``.
    """

    factual: torch.Tensor
    target: torch.Tensor
    counterfactual: torch.Tensor
    converged: torch.Tensor
    steps: torch.Tensor
    nascent: torch.Tensor

    def __len__(self) -> int:
        return self.target.numel()

    @staticmethod
    def concat(parts: Sequence["CounterfactualBatch"]) -> "CounterfactualBatch":
        """Concatenate results row-wise (e.g. shards gathered from several ranks)."""
        return CounterfactualBatch(*(torch.cat([getattr(p, f) for p in parts])
                                     for f in ("factual", "target", "counterfactual",
                                               "converged", "steps", "nascent")))


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients during a search; both restored after."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


class SearchEngine:
    """Gradient search ``x' <- x' - lr * grad[CE(M(x'), t) + sum_k w_k pen_k(x')]``.

    Args:
        constraints: domain bounds (clamp after every step) and mutability
            (forbidden step components zeroed; in latent space the decoded point
            is projected onto the allowed half-spaces instead).
        penalties: ``(weight, penalty)`` pairs, each penalty ``SearchState -> (n,)``.
        lr, maxiter, tau: SGD step size, step budget, decision threshold.
        codec: optional latent space (REVISE); the search state is ``z`` and
            ``x' = clamp(decode(z))``.
    """

    def __init__(self, constraints: Constraints, *, penalties: Sequence[tuple[float, Penalty]] = (),
                 lr: float = 0.1, maxiter: int = 30, tau: float = 0.75, codec: Codec | None = None):
        self.constraints = constraints
        self.penalties = tuple((float(w), p) for w, p in penalties if w != 0)
        self.lr, self.maxiter, self.tau, self.codec = lr, maxiter, tau, codec

    def _to_input(self, state: torch.Tensor, factual: torch.Tensor) -> torch.Tensor:
        if self.codec is None:
            return state
        x = self.constraints.clamp(self.codec.decode(state))
        return self.constraints.protect(x, factual) if self.constraints.is_constrained else x

    def _objective(self, x_cf: torch.Tensor, factual: torch.Tensor, target: torch.Tensor,
                   logits: torch.Tensor, step: int, maxiter: int) -> torch.Tensor:
        loss = F.cross_entropy(logits, target, reduction="none")
        if self.penalties:
            st = SearchState(x_cf, factual, target, logits, step, maxiter)
            for weight, pen in self.penalties:
                loss = loss + weight * pen(st)
        return loss

    def search(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
               nascent_eps: float = 0.3, maxiter: int | None = None,
               tau: float | None = None) -> CounterfactualBatch:
        """Search counterfactuals for factuals ``x`` ``(n, d)`` towards classes ``target`` ``(n,)``."""
        T = self.maxiter if maxiter is None else int(maxiter)
        tau = self.tau if tau is None else float(tau)
        x = x.detach()
        target = target.detach().long()
        n = x.shape[0]
        with frozen(model), torch.enable_grad():
            state = x.clone() if self.codec is None else self.codec.encode(x).detach()
            final, nascent = x.clone(), x.clone()
            converged = torch.zeros(n, dtype=torch.bool, device=x.device)
            steps = torch.zeros(n, dtype=torch.long, device=x.device)
            active = torch.arange(n, device=x.device)
            for t in range(T + 1):
                if active.numel() == 0:
                    break
                s = state[active].requires_grad_(True)
                fa, ta = x[active], target[active]
                xa = self._to_input(s, fa)
                logits = model(xa)
                x_now = xa.detach()
                final[active] = x_now
                near = (x_now - fa).abs().amax(dim=1) <= nascent_eps
                nascent[active[near]] = x_now[near]
                done = logits.detach().softmax(dim=1).gather(1, ta[:, None]).squeeze(1) >= tau
                converged[active[done]] = True
                keep = ~done
                if t == T or not bool(keep.any()):
                    break
                loss = self._objective(xa, fa, ta, logits, t, T)
                (grad,) = torch.autograd.grad(loss[keep].sum(), s)
                delta = torch.nan_to_num(-self.lr * grad[keep], nan=0.0, posinf=0.0, neginf=0.0)
                new = s.detach()[keep]
                if self.codec is None:
                    moved = self.constraints.clamp(new + self.constraints.mask_step(delta))
                    # mutability wins over the domain for factuals outside it
                    new = new + self.constraints.mask_step(moved - new)
                else:
                    new = new + delta
                active = active[keep]
                state[active] = new
                steps[active] += 1
        return CounterfactualBatch(x, target, final, converged, steps, nascent)
