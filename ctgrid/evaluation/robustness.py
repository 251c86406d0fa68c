"""Adversarial robustness: FGSM, PGD and robust accuracy (Acc*) at a list of budgets.

Both attacks are untargeted L-infinity attacks on the cross-entropy of the true
label, as the reference (docs/deviations.md, R14). Unlike the reference, every perturbed
input is clamped to the data domain (``Constraints.clamp``; docs/deviations.md, D10) when
``constraints`` is given. Gradients are taken with ``torch.autograd.grad`` with respect
to the inputs only, so model parameters never accumulate ``.grad``; the model runs in
eval mode and its own mode is restored afterwards.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..constraints import Constraints
from .._torch import eval_mode
from .predictive import model_dtype

Attack = Literal["fgsm", "pgd"]


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_x`` of the summed cross-entropy (sum, not mean: rows stay independent of the batch)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _clamp(x: torch.Tensor, constraints: Constraints | None) -> torch.Tensor:
    return x if constraints is None else constraints.clamp(x)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         constraints: Constraints | None = None) -> torch.Tensor:
    """Fast gradient sign method: ``clamp(x + eps * sign(grad_x CE(f(x), y)))``.

    Shapes: ``x (n, d)``, ``y (n,)`` -> ``(n, d)`` in the model's dtype, detached.
    ``eps = 0`` returns ``x`` unchanged, so Acc*(0) is the clean accuracy.
    """
    _check(x, y, eps)
    x = x.detach().to(model_dtype(model))
    if eps == 0:
        return x.clone()
    with eval_mode(model):
        grad = _input_gradient(model, x, y)
    return _clamp(x + eps * grad.sign(), constraints).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
        steps: int = 40, alpha: float = 0.01, generator: torch.Generator | None = None,
        random_start: bool = True, constraints: Constraints | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) in the L-infinity ball of radius ``eps``.

    Starts at ``x + U(-eps, eps)`` (drawn from ``generator``; required when
    ``random_start``), then ``steps`` times: ``x_adv += alpha * sign(grad)``, project
    to ``[x - eps, x + eps]`` and to the domain. Defaults: 40 steps, alpha 0.01 (reference).
    """
    _check(x, y, eps)
    if steps < 1 or alpha <= 0:
        raise ValueError(f"pgd: need steps >= 1 and alpha > 0, got steps={steps}, alpha={alpha}")
    x = x.detach().to(model_dtype(model))
    if eps == 0:
        return x.clone()
    lo, hi = x - eps, x + eps
    x_adv = x.clone()
    if random_start:
        if generator is None:
            raise ValueError("pgd: random_start needs an explicit torch.Generator")
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
        x_adv = _clamp(x + (2 * u.to(x.device) - 1) * eps, constraints)
    with eval_mode(model):
        for _ in range(steps):
            grad = _input_gradient(model, x_adv, y)
            x_adv = torch.minimum(torch.maximum(x_adv + alpha * grad.sign(), lo), hi)
            x_adv = _clamp(x_adv, constraints).detach()
    return x_adv


def robust_accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor,
                    eps: float | Sequence[float] = (0.03,), *, attack: Attack = "fgsm",
                    constraints: Constraints | None = None, steps: int = 40, alpha: float = 0.01,
                    generator: torch.Generator | None = None,
                    batch_size: int = 4096) -> torch.Tensor:
    """Accuracy on attacked inputs at each budget in ``eps`` -> float64 ``(len(eps),)``.

    The table uses ``eps = 0.03`` and the figure ``torch.linspace(0, 0.1, 10)``. Rows are
    attacked in batches of ``batch_size``; PGD draws its random starts from ``generator``
    budget by budget, batch by batch (reproducible for a fixed ``batch_size``).
    """
    budgets = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"robust_accuracy: attack {attack!r}; allowed: 'fgsm', 'pgd'")
    out = torch.empty(len(budgets), dtype=torch.float64)
    for k, e in enumerate(budgets):
        correct = 0
        for i in range(0, X.shape[0], batch_size):
            xb, yb = X[i:i + batch_size], y[i:i + batch_size]
            if attack == "fgsm":
                xa = fgsm(model, xb, yb, e, constraints=constraints)
            else:
                xa = pgd(model, xb, yb, e, steps=steps, alpha=alpha, generator=generator,
                         constraints=constraints)
            with eval_mode(model), torch.no_grad():
                correct += int((model(xa).argmax(1) == yb).sum())
        out[k] = correct / X.shape[0]
    return out


def _check(x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"attack inputs: need x (n, d) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not eps >= 0:
        raise ValueError(f"attack budget eps must be >= 0, got {eps}")
