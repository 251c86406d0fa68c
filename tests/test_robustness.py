"""FGSM, PGD and robust accuracy against closed forms on linear softmax models.

For logits ``z = W x + b`` with two classes and label ``y``, the cross-entropy
gradient is ``grad_x = p_{1-y} (W[1-y] - W[y])`` with ``p_{1-y} > 0``, so FGSM moves
``x`` by ``eps * sign(W[1-y] - W[y])`` and PGD, whose gradient sign never changes,
ends in the same corner of the eps-ball.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ctgrid.constraints import Constraints
from ctgrid.evaluation import fgsm, pgd, robust_accuracy

W = torch.tensor([[0.5, -1.0, 2.0], [-0.5, 1.5, 1.0]])


def linear_model(weight: torch.Tensor = W) -> nn.Linear:
    m = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        m.weight.copy_(weight)
        m.bias.copy_(torch.tensor([0.1, -0.2])[: weight.shape[0]])
    return m


def data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) - 0.5, torch.randint(0, 2, (n,), generator=g)


def closed_form(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return x + eps * torch.sign(W[1 - y] - W[y])


def test_fgsm_equals_closed_form():
    x, y = data()
    got = fgsm(linear_model(), x, y, 0.03)
    assert torch.allclose(got, closed_form(x, y, 0.03), atol=1e-7)


def test_fgsm_never_leaves_a_tight_domain():
    x, y = data()
    dom = Constraints(torch.full((3,), -0.1), torch.full((3,), 0.1), ("both",) * 3)
    x = dom.clamp(x)
    got = fgsm(linear_model(), x, y, 0.5, constraints=dom)
    assert ((got >= -0.1) & (got <= 0.1)).all()
    assert torch.allclose(got, dom.clamp(closed_form(x, y, 0.5)))
    assert torch.equal(fgsm(linear_model(), x, y, 0.0), x)


def test_pgd_stays_in_ball_and_domain_and_reaches_the_corner():
    x, y = data(16)
    dom = Constraints(torch.full((3,), -0.52), torch.full((3,), 0.52), ("both",) * 3)
    x = dom.clamp(x)
    eps = 0.05
    got = pgd(linear_model(), x, y, eps, steps=40, alpha=0.01, generator=torch.Generator().manual_seed(1),
              constraints=dom)
    assert ((got - x).abs() <= eps + 1e-6).all()
    assert ((got >= -0.52) & (got <= 0.52)).all()
    expected = dom.clamp(closed_form(x, y, eps))
    assert torch.allclose(got, expected, atol=1e-6)


def test_pgd_is_reproducible_and_needs_a_generator():
    x, y = data()
    model = linear_model(torch.randn(2, 3, generator=torch.Generator().manual_seed(3)))
    kw = dict(steps=3, alpha=0.001)
    a = pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(4), **kw)
    b = pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(4), **kw)
    c = pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="Generator"):
        pgd(model, x, y, 0.1)


def test_robust_accuracy_by_hand():
    # class 1 iff x0 + x1 > 0; an attack lowers x0 + x1 by 2 eps.
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        model.bias.zero_()
    s = torch.tensor([0.01, 0.05, 0.1, 0.3])
    X = torch.stack([s, torch.zeros(4)], 1)
    y = torch.ones(4, dtype=torch.long)
    want = [1.0, 0.5, 0.25]                      # eps 0, 0.03 (2eps=0.06), 0.1 (2eps=0.2)
    got = robust_accuracy(model, X, y, [0.0, 0.03, 0.1], batch_size=3)
    assert got.tolist() == pytest.approx(want)
    got_pgd = robust_accuracy(model, X, y, [0.0, 0.03, 0.1], attack="pgd", alpha=0.01, steps=40,
                              generator=torch.Generator().manual_seed(0), batch_size=3)
    assert got_pgd.tolist() == pytest.approx(want)
    assert robust_accuracy(model, X, y, 0.03).shape == (1,)


def test_attacks_restore_mode_and_leave_no_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.ReLU(), nn.Linear(8, 2))
    model.train()
    x, y = data()
    fgsm(model, x, y, 0.1)
    pgd(model, x, y, 0.1, steps=2, generator=torch.Generator().manual_seed(0))
    robust_accuracy(model, x, y, [0.0, 0.05], attack="pgd", steps=2, generator=torch.Generator())
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
