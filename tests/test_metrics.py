"""Per-counterfactual, predictive and consistency metrics on hand-checkable cases."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctgrid.errors import DataError
from ctgrid.evaluation import (accuracy, confusion_matrix, cost, counterfactual_metrics,
                               energy_differential, ig_sensitivity, implausibility,
                               integrated_gradients, invalidation_rate, macro_f1,
                               mean_l1_distance, share_resettable, share_unchanged,
                               validity, validity_strict)
from ctgrid.evaluation.metrics import target_class_samples


def linear(weight, bias=None) -> nn.Linear:
    """A linear model with hand-set weights (rows = classes)."""
    w = torch.tensor(weight, dtype=torch.float32)
    m = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(torch.tensor(bias, dtype=torch.float32) if bias is not None else torch.zeros(w.shape[0]))
    return m


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- distances

def test_cost_and_share_unchanged_by_hand():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    x_cf = torch.tensor([[1.0, -2.0, 0.0], [1.0, 1.0 + 5e-6, 1.5]])
    assert cost(x, x_cf).tolist() == pytest.approx([3.0, 0.5 + 5e-6], abs=1e-6)
    assert share_unchanged(x, x_cf).tolist() == pytest.approx([1 / 3, 2 / 3])
    assert cost(x, x_cf).dtype == torch.float64


def test_implausibility_is_mean_l1_to_target_sample():
    x_cf = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 5.0]])
    target = torch.tensor([1, 1, 0])
    samples = {1: torch.tensor([[1.0, 1.0], [3.0, 0.0]]), 0: torch.tensor([[0.0, 1.0]])}
    ip = implausibility(x_cf, target, samples, block_size=1)
    # row 0: (2 + 3)/2; row 1: (0 + 3)/2; row 2: 4
    assert ip.tolist() == pytest.approx([2.5, 1.5, 4.0])


def test_blocked_l1_matches_broadcast():
    g = gen(1)
    x, s = torch.randn(37, 5, generator=g), torch.randn(11, 5, generator=g)
    naive = (x[:, None, :] - s[None]).abs().sum(-1).mean(1).double()
    for block in (1, 4, 1000):
        assert torch.allclose(mean_l1_distance(x, s, block_size=block), naive, atol=1e-5)


def test_target_class_samples_draw_within_class_and_reproducibly():
    X = torch.arange(20.0).reshape(10, 2)
    y = torch.tensor([0, 1] * 5)
    a = target_class_samples(X, y, [1, 0], 50, gen(3))
    b = target_class_samples(X, y, [1, 0], 50, gen(3))
    assert a[1].shape == (50, 2) and torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert set(a[1][:, 0].tolist()) <= {2.0, 6.0, 10.0, 14.0, 18.0}
    assert set(a[0][:, 0].tolist()) <= {0.0, 4.0, 8.0, 12.0, 16.0}
    with pytest.raises(DataError, match="class 2"):
        target_class_samples(X, y, [2], 5, gen())


# ---------------------------------------------------------------- model-based measures

def test_validity_and_strict_validity_use_tau():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 0.0]])      # p(1) = 0.75, then class 0
    target = torch.tensor([1, 1])
    assert validity(logits, target).tolist() == [1.0, 0.0]
    assert validity_strict(logits, target, 0.7).tolist() == [1.0, 0.0]
    assert validity_strict(logits, target, 0.8).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="tau"):
        validity_strict(logits, target, 0.0)


def test_energy_differential_sign_convention():
    model = linear([[0.0, 0.0], [1.0, 0.0]])                          # f_1(x) = x_0
    samples = {1: torch.tensor([[2.0, 7.0], [2.0, -3.0]])}          # mean f_1 = 2
    x_cf = torch.tensor([[0.5, 0.0], [3.0, 1.0]])
    ed = energy_differential(model, x_cf, torch.tensor([1, 1]), samples)
    assert ed.tolist() == pytest.approx([1.5, -1.0])


def test_share_resettable_by_hand():
    model = linear([[0.0, 0.0], [1.0, 1.0]])                          # class 1 iff x0 + x1 > 0
    x = torch.full((3, 2), -1.0)
    x_cf = torch.tensor([[2.0, 0.5], [-1.0, 3.0], [-1.0, -0.5]])
    got = share_resettable(model, x, x_cf, torch.tensor([1, 1, 1]))
    assert got[:2].tolist() == [0.5, 0.5]        # resetting x0 breaks row 0; x0 unchanged in row 1
    assert math.isnan(got[2].item())             # row 2 is not a valid CE


def test_counterfactual_metrics_agree_with_parts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))
    g = gen(5)
    ref_X, ref_y = torch.randn(60, 3, generator=g), torch.arange(60) % 3
    x = torch.randn(9, 3, generator=g)
    x_cf = x + torch.randn(9, 3, generator=g)
    target = torch.tensor([0, 1, 2] * 3)
    out = counterfactual_metrics(model, x, x_cf, target, reference_X=ref_X, reference_y=ref_y,
                                 generator=gen(7), tau=0.5, n_samples=40, n_energy_samples=6,
                                 resettable=True)
    assert set(out) == {"validity", "validity_strict", "cost", "ip", "energy_differential",
                        "share_unchanged", "share_resettable"}
    assert all(v.shape == (9,) and v.dtype == torch.float64 for v in out.values())
    g2 = gen(7)
    ip_s = target_class_samples(ref_X, ref_y, [0, 1, 2], 40, g2)
    en_s = target_class_samples(ref_X, ref_y, [0, 1, 2], 6, g2)
    assert torch.allclose(out["ip"], implausibility(x_cf, target, ip_s))
    assert torch.allclose(out["energy_differential"], energy_differential(model, x_cf, target, en_s))
    assert torch.equal(out["cost"], cost(x, x_cf))
    assert (out["validity_strict"] <= out["validity"]).all()       # tau = 0.5 with 3 classes


# ---------------------------------------------------------------- predictive

def test_macro_f1_equals_hand_count():
    y_true = torch.tensor([0, 0, 1, 1, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 1, 0, 2])
    assert confusion_matrix(y_true, y_pred).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    expected = (2 / 4 + 4 / 5 + 2 / 3) / 3       # 2TP / (2TP + FP + FN) per class
    assert macro_f1(y_true, y_pred) == pytest.approx(expected)
    assert macro_f1(y_true, y_pred, n_classes=5) == pytest.approx(expected)   # unseen classes excluded
    assert macro_f1(torch.tensor([0, 1]), torch.tensor([0, 0])) == pytest.approx((2 / 3 + 0) / 2)
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_macro_f1_matches_sklearn_when_available():
    sk = pytest.importorskip("sklearn.metrics")
    g = gen(2)
    y_true, y_pred = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    ref = sk.f1_score(y_true.numpy(), y_pred.numpy(), average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred) == pytest.approx(ref)


def test_integrated_gradients_linear_is_exact():
    model = linear([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]])
    x = torch.tensor([[1.0, 2.0, -4.0], [0.5, 0.0, 1.0]])
    t = torch.tensor([1, 1])
    w = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    assert torch.allclose(integrated_gradients(model, x, t, baseline="zeros", n_steps=3), x.double() * w)
    b = 2 * torch.rand(x.shape, generator=gen(4), dtype=torch.float64) - 1
    got = integrated_gradients(model, x, t, baseline="uniform", generator=gen(4), n_steps=2)
    assert torch.allclose(got, (x.double() - b) * w, atol=1e-6)


def test_integrated_gradients_completeness_on_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 0, 1, 1])
    attr = integrated_gradients(model, x, t, baseline="zeros", n_steps=400, batch_size=100)
    with torch.no_grad():
        gap = model(x).gather(1, t[:, None]).squeeze(1) - model(torch.zeros_like(x))[:, t].diagonal()
    assert torch.allclose(attr.sum(1), gap, atol=1e-4)


def test_ig_sensitivity_normalisations():
    g = torch.tensor([[1.0, -1.0], [3.0, 0.0]])                       # max - min = 4
    assert ig_sensitivity(g, [0]) == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert ig_sensitivity(g, [1], normalisation="range") == pytest.approx((1 / 4 + 0) / 2)
    assert ig_sensitivity(g, [1], normalisation="minmax") == pytest.approx((0 + 1 / 4) / 2)


# ---------------------------------------------------------------- consistency

def test_invalidation_rate_on_linear_models():
    x_cf = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    target = torch.tensor([1, 1, 0])
    models = [linear([[0.0, 0.0], [1.0, 1.0]]),      # class 1 iff x0 + x1 > 0: all valid
              linear([[0.0, 0.0], [2.0, -1.0]]),     # class 1 iff 2 x0 > x1: row 1 invalid
              linear([[0.0, 0.0], [-1.0, -0.5]])]    # class 1 iff x0 + x1/2 < 0: all invalid
    rate = invalidation_rate(x_cf, target, models)
    assert rate.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3])
    assert rate.mean().item() == pytest.approx(4 / 9)


# ---------------------------------------------------------------- side effects

def test_metrics_restore_mode_and_leave_no_grad():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    model[1].eval()                                   # a mixed state must come back as it was
    x = torch.randn(6, 3)
    x_cf = x + 1.0
    target = torch.tensor([0, 1] * 3)
    counterfactual_metrics(model, x, x_cf, target, reference_X=x, reference_y=target,
                           generator=gen(), n_samples=5, n_energy_samples=2, resettable=True)
    integrated_gradients(model, x, target, generator=gen(), n_steps=4)
    invalidation_rate(x_cf, target, [model])
    assert model.training and model[0].training and not model[1].training
    assert all(p.grad is None for p in model.parameters())


def test_share_resettable_linear_fast_path_equals_probing_the_inputs():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    class Wrapped(torch.nn.Module):   # not a Sequential: the generic path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    x = torch.randn(40, 6)
    x_cf = x + torch.randn(40, 6) * (torch.rand(40, 6) > 0.4)
    target = mlp(x_cf).argmax(1)
    target[::4] = (target[::4] + 1) % 3              # some invalid counterfactuals (NaN)
    fast = share_resettable(mlp, x, x_cf, target, max_rows=7)
    slow = share_resettable(Wrapped(mlp), x, x_cf, target, max_rows=7)
    assert torch.equal(fast.isnan(), slow.isnan()) and fast.isnan().any()
    assert torch.allclose(fast[~fast.isnan()], slow[~slow.isnan()])
