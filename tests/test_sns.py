"""Stable Neighbor Search: analytic moves on a linear model, the ball, the domain,
mutability, the class, the integrated score; as an engine stage and in joint searches."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctgrid.constraints import Constraints
from ctgrid.generators import CounterfactualBatch, GeneratorConfig, RoutedModels, make_generator
from ctgrid.generators.sns import StableNeighborSearch

W = torch.tensor([3.0, 4.0])          # |W| = 5: the score rises fastest along (0.6, 0.8)


def linear(bias: float = 0.0) -> nn.Module:
    """Logits ``[0, W.x + bias]``: class 1 iff W.x + bias > 0."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(2), W]))
        model.bias.copy_(torch.tensor([0.0, bias]))
    return model


def batch(x_cf: list[list[float]], factual: list[list[float]] | None = None, target: int = 1):
    cf = torch.tensor(x_cf)
    fac = torch.tensor(factual) if factual is not None else cf.clone()
    n = len(x_cf)
    return CounterfactualBatch(fac, torch.full((n,), target), cf, torch.ones(n, dtype=torch.bool),
                               torch.full((n,), 3), cf.clone())


def free(lo: float = -10.0, hi: float = 10.0, mutability=("both", "both")) -> Constraints:
    return Constraints(torch.full((2,), lo), torch.full((2,), hi), tuple(mutability))


def test_on_a_linear_model_it_walks_straight_up_the_gradient_until_the_ball():
    sns = StableNeighborSearch(free(), radius=0.05, steps=40, step_size=0.002, points=8)
    out = sns.refine(linear(), batch([[0.2, 0.1], [1.0, -0.5]]))
    moved = out.counterfactual - torch.tensor([[0.2, 0.1], [1.0, -0.5]])
    # 40 steps of 0.002 = 0.08 > radius: the last iterates sit on the sphere along W/|W|
    assert moved.norm(dim=1).tolist() == pytest.approx([0.05, 0.05], abs=1e-6)
    unit = (moved / moved.norm(dim=1, keepdim=True)).flatten().tolist()
    assert unit == pytest.approx([0.6, 0.8, 0.6, 0.8], abs=5e-5)   # float32 differences of ~1
    short = StableNeighborSearch(free(), radius=1.0, steps=10, step_size=0.002, points=8)
    step = short.refine(linear(), batch([[0.2, 0.1]])).counterfactual - torch.tensor([[0.2, 0.1]])
    assert step.flatten().tolist() == pytest.approx([0.6 * 0.02, 0.8 * 0.02], abs=1e-6)


def test_integrated_score_is_the_midpoint_rule_by_hand():
    sns = StableNeighborSearch(free(), points=4)
    x = torch.tensor([[0.5, 0.25]])
    z = float(W @ x[0])
    want = sum(1 / (1 + math.exp(-(a - 0.5) / 4 * z)) for a in range(1, 5)) / 4
    assert sns.integrated_score(linear(), x, torch.tensor([1])).item() == pytest.approx(want, rel=1e-6)


def test_domain_mutability_class_and_score_hold_on_a_trained_mlp():
    torch.manual_seed(0)
    X = torch.randn(400, 2)
    y = (X[:, 0] * X[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    cons = free(-1.5, 1.5, ("increase", "both"))
    factual = X[:50].clamp(-1.5, 1.5)
    target = 1 - model(factual).argmax(1)
    engine = make_generator(GeneratorConfig(name="generic", maxiter=100, tau=0.6, lr=0.5), cons)
    base = engine.search(model, factual, target)
    sns = StableNeighborSearch(cons, radius=0.3, steps=60, step_size=0.01, points=10)
    out = sns.refine(model, base)
    gap = (out.counterfactual - base.counterfactual).norm(dim=1)
    assert bool((gap <= 0.3 + 1e-5).all())
    assert bool((out.counterfactual >= -1.5).all() and (out.counterfactual <= 1.5).all())
    assert bool((out.counterfactual[:, 0] >= factual[:, 0] - 1e-7).all())      # "increase" honoured
    valid = model(base.counterfactual).argmax(1) == target
    assert valid.sum() >= 10
    with torch.no_grad():
        now = model(out.counterfactual).argmax(1) == target
        before = sns.integrated_score(model, base.counterfactual, target)
        after = sns.integrated_score(model, out.counterfactual, target)
    assert bool(now[valid].all()), "a valid counterfactual stays in the target class"
    assert bool((after[valid] >= before[valid]).all()), "the integrated score never drops"
    assert float((after - before)[valid].mean()) > 0


def test_an_invalid_start_without_valid_neighbours_is_left_unchanged():
    sns = StableNeighborSearch(free(), radius=0.1, steps=20, step_size=0.01)
    start = [[-1.0, -1.0]]                                    # W.x - 5 < 0 everywhere nearby
    out = sns.refine(linear(bias=-5.0), batch(start))
    assert out.counterfactual.tolist() == start and out.converged.tolist() == [False]


def test_engine_stage_and_joint_searches_match_the_stage_alone():
    cons = free()
    gen = GeneratorConfig(name="generic", maxiter=5, sns_radius=0.05, sns_steps=20, sns_step_size=0.005)
    assert GeneratorConfig(sns_steps=7).canonical() == GeneratorConfig()     # off: settings reset
    x = torch.tensor([[0.5, 0.2], [-0.3, 0.1], [0.1, -0.4]])
    target = torch.tensor([1, 1, 1])
    models = [linear(), linear(bias=-0.5)]
    alone = [make_generator(gen, cons).search(m, x, target) for m in models]
    plain = make_generator(GeneratorConfig(name="generic", maxiter=5), cons).search(models[0], x, target)
    assert not torch.equal(alone[0].counterfactual, plain.counterfactual)   # the stage ran
    joint = make_generator(gen, cons).search(RoutedModels(models, [3, 3]), x.repeat(2, 1), target.repeat(2))
    for k in range(2):
        assert torch.equal(joint.counterfactual[3 * k:3 * k + 3], alone[k].counterfactual)


class Bump(nn.Module):
    """Logits ``[0, 4 - 40 (x_0 - 0.8)^2]``: the integrated score peaks at one x_0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(x[:, 0]), 4 - 40 * (x[:, 0] - 0.8) ** 2], dim=1)


def test_it_keeps_the_best_iterate_not_the_last():
    """Started next to the score's peak, long steps overshoot: the start must be kept."""
    sns = StableNeighborSearch(free(), radius=0.5, steps=7, step_size=0.05, points=16)
    grid = torch.stack([torch.linspace(0.5, 1.2, 7001), torch.zeros(7001)], dim=1)
    with torch.no_grad():
        peak = float(grid[sns.integrated_score(Bump(), grid, torch.ones(7001, dtype=torch.long)).argmax(), 0])
    start = [[peak + 1e-3, 0.0]]
    out = sns.refine(Bump(), batch(start))
    assert out.counterfactual[0, 0].item() == pytest.approx(start[0][0], abs=1e-6)


def test_the_default_settings_reach_the_ball_on_a_linear_model():
    """Black et al.'s step rule (200 steps of 2 r / 200): the default walks straight up the
    gradient to the sphere. The former default (100 steps of 1e-3) could move only 0.1."""
    start = [[0.2, 0.1], [1.0, -0.5]]
    for sns in (StableNeighborSearch(free(), radius=0.3),
                make_generator(GeneratorConfig(name="generic", sns_radius=0.3), free()).refine):
        assert sns.steps == 200 and sns.step_size is None and sns.points == 10
        moved = sns.refine(linear(), batch(start)).counterfactual - torch.tensor(start)
        assert moved.norm(dim=1).tolist() == pytest.approx([0.3, 0.3], abs=1e-5)
        assert (moved / moved.norm(dim=1, keepdim=True)).flatten().tolist() == pytest.approx(
            [0.6, 0.8, 0.6, 0.8], abs=5e-5)
    old = StableNeighborSearch(free(), radius=0.3, steps=100, step_size=1e-3, points=16)
    moved = old.refine(linear(), batch(start)).counterfactual - torch.tensor(start)
    assert moved.norm(dim=1).tolist() == pytest.approx([0.1, 0.1], abs=1e-5)


def test_a_relative_radius_is_a_share_of_the_base_move():
    """radius 0.8 x the distance from the factual: 0.8 x 0.5 and 0.8 x 1.0 on the two rows."""
    sns = StableNeighborSearch(free(), radius=0.8, relative=True)
    start, factual = [[0.3, 0.4], [0.6, 0.8]], [[0.0, 0.0], [0.0, 0.0]]
    moved = sns.refine(linear(), batch(start, factual)).counterfactual - torch.tensor(start)
    assert moved.norm(dim=1).tolist() == pytest.approx([0.4, 0.8], abs=1e-5)


def test_the_control_moves_as_far_as_sns_straight_along_the_gradient():
    """On ``Bump`` SNS stops at the integrated score's peak (a move along x_0 of d); the
    control moves d from the start along the gradient of log p(target) — here also x_0, but
    on the linear model with a bias it is W/|W| whatever SNS did."""
    start = [[0.7, 0.0]]
    sns = StableNeighborSearch(free(), radius=0.5, steps=200, step_size=0.002, points=16)
    ctrl = StableNeighborSearch(free(), radius=0.5, steps=200, step_size=0.002, points=16, control=True)
    a = sns.refine(Bump(), batch(start)).counterfactual
    b = ctrl.refine(Bump(), batch(start)).counterfactual
    d = (a - torch.tensor(start)).norm().item()
    assert 0.01 < d < 0.5
    assert (b - torch.tensor(start)).flatten().tolist() == pytest.approx([d, 0.0], abs=1e-5)
    lin = StableNeighborSearch(free(), radius=0.2, control=True)
    moved = lin.refine(linear(bias=0.3), batch([[0.2, 0.1]])).counterfactual - torch.tensor([[0.2, 0.1]])
    assert moved.flatten().tolist() == pytest.approx([0.6 * 0.2, 0.8 * 0.2], abs=1e-5)
