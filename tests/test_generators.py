"""Tests of the batched counterfactual engine and its three configurations.

Expectations come from hand-derived formulas (linear softmax models, the ECCo
decay schedule) or from a deliberately naive single-row loop written here, never
from numbers the engine produced. Models and data are small and float64, so
batched and row-by-row results agree to rounding.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctgrid.constraints import Constraints
from ctgrid.errors import ConfigError
from ctgrid.generators import GeneratorConfig, generator_for, make_generator, train_vae
from ctgrid.generators.engine import CLASS_MAJOR_CLASSES, target_log_probs
from ctgrid.generators.penalties import energy_decay

D, K = 5, 3
MUTABILITY = ("none", "increase", "decrease", "both", "both")
NAMES = ("generic", "ecco", "revise")


# ---------------------------------------------------------------- fixtures


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and avoids oversubscription on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    """Points near a 2-D plane in 5-D (so the REVISE VAE has structure to learn)."""
    g = _gen(0)
    f64 = torch.float64
    plane = torch.randn(400, 2, generator=g, dtype=f64) @ torch.randn(2, D, generator=g, dtype=f64)
    return plane + 0.2 * torch.randn(400, D, generator=g, dtype=f64)


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    """A random (untrained) 3-class MLP with smooth activations, float64; weights ~ N(0, 0.5^2)
    keep the search tame, so rounding differences are not amplified over 40 steps."""
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K)).double()
    g = _gen(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.eval()


@pytest.fixture(scope="module")
def tight(data) -> Constraints:
    """A domain narrower than the data ([10%, 90%] quantiles), so searches hit its bounds."""
    lower, upper = data.quantile(0.1, dim=0), data.quantile(0.9, dim=0)
    return Constraints(lower.float(), upper.float(), MUTABILITY)


@pytest.fixture(scope="module")
def vae(data):
    return train_vae(data.float(), epochs=50, seed=0).double()


@pytest.fixture(scope="module")
def factuals(data, mlp, tight):
    """Factuals inside the tight domain (exactly representable as its float32 bounds are) and
    a target drawn among the other classes."""
    x = tight.clamp(data[:48]).float().double()
    with torch.no_grad():
        pred = mlp(x).argmax(1)
    return x, (pred + torch.randint(1, K, (len(x),), generator=_gen(2))) % K


def engine(name: str, constraints: Constraints, vae=None, **kw):
    cfg = GeneratorConfig(name=name, **{"lr": 0.3, "maxiter": 40, "tau": 0.7, **kw})
    return make_generator(cfg, constraints, codec=vae if name == "revise" else None)


def target_prob(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(1).gather(1, target[:, None]).squeeze(1)


# ------------------------------------------------- analytic: linear softmax

W = np.array([[0.5, -1.0], [-0.3, 0.8]])   # rows: class weights w_0, w_1
B = np.array([0.2, -0.1])


def linear_model() -> nn.Module:
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W))
        model.bias.copy_(torch.from_numpy(B))
    return model


def softmax_np(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def linear_search_np(x0, t, *, lr, T, tau, lam_cost=0.0, lam_energy=0.0, q=1e-3):
    """The search on the linear model by hand: grad_x CE = -(1 - p_t)(w_t - w_o), the L1 cost's
    gradient is lam_cost * sign(x' - x), the energy E = -(w_t x' + b_t) has gradient
    -lam_energy * phi(k) * (1 + 2 q E) * w_t with phi(k) = a (b + k + 1)^-0.9, b = max(1, round(T/25)),
    a = b / 10. Returns (final point, steps, probabilities along the path)."""
    o = 1 - t
    bb = max(1, round(T / 25))
    x, probs = np.array(x0, dtype=float), []
    for k in range(T + 1):
        p = softmax_np(W @ x + B)[t]
        probs.append(p)
        if p >= tau or k == T:
            return x, k, probs
        e = -(W[t] @ x + B[t])
        phi = bb / 10 * (bb + k + 1) ** -0.9
        grad = (-(1 - p) * (W[t] - W[o]) + lam_cost * np.sign(x - x0)
                - lam_energy * phi * (1 + 2 * q * e) * W[t])
        x = x - lr * grad
    raise AssertionError("unreachable")


FACTUALS_2D = np.array([[1.0, -0.5], [2.0, -1.5], [0.3, 0.1], [-1.0, -2.0], [3.0, 1.0]])


@pytest.mark.parametrize("tau", [0.6, 0.9, 0.99])
def test_generic_moves_along_weight_difference_and_stops_at_tau(tau):
    model, lr, T = linear_model(), 0.1, 60
    x = torch.from_numpy(FACTUALS_2D)
    target = 1 - model(x).argmax(1)
    gen = make_generator(GeneratorConfig(name="generic", lambda_cost=0.0, lr=lr, maxiter=T, tau=tau),
                         Constraints.unconstrained(2))
    res = gen.search(model, x, target)
    for i, (x0, t) in enumerate(zip(FACTUALS_2D, target.tolist())):
        x_end, k, probs = linear_search_np(x0, t, lr=lr, T=T, tau=tau)
        assert all(abs(p - tau) > 1e-9 for p in probs)   # the step count is unambiguous
        assert int(res.steps[i]) == k
        assert bool(res.converged[i]) == (probs[-1] >= tau)
        np.testing.assert_allclose(res.counterfactual[i].numpy(), x_end, rtol=0, atol=1e-12)
        move, w = x_end - x0, W[t] - W[1 - t]
        assert abs(move[0] * w[1] - move[1] * w[0]) < 1e-12 and move @ w > 0   # along w_t - w_o
    assert int(res.steps.max()) >= 5   # the search really iterated


def test_ecco_with_cost_matches_hand_derived_gradient():
    model, lr, T, tau = linear_model(), 0.1, 30, 0.95
    x = torch.from_numpy(FACTUALS_2D)
    target = 1 - model(x).argmax(1)
    cfg = GeneratorConfig(name="ecco", lambda_cost=0.05, lambda_energy=5.0, lr=lr, maxiter=T, tau=tau)
    res = make_generator(cfg, Constraints.unconstrained(2)).search(model, x, target)
    for i, (x0, t) in enumerate(zip(FACTUALS_2D, target.tolist())):
        x_end, k, probs = linear_search_np(x0, t, lr=lr, T=T, tau=tau, lam_cost=0.05, lam_energy=5.0)
        assert all(abs(p - tau) > 1e-9 for p in probs)
        assert int(res.steps[i]) == k
        np.testing.assert_allclose(res.counterfactual[i].numpy(), x_end, rtol=0, atol=1e-12)


# ------------------------------------------- a naive single-row reference loop


def naive_path(model, x0, t, constraints, *, lr, T, tau, lam_cost, lam_energy, q=1e-3):
    """Plain SGD on one row, storing the path: zero forbidden step components, then clamp."""
    lo, hi = constraints.lower.double(), constraints.upper.double()
    inc = torch.tensor([m in ("both", "increase") for m in constraints.mutability])
    dec = torch.tensor([m in ("both", "decrease") for m in constraints.mutability])
    bb = max(1, round(T / 25))
    x, path = x0.clone(), [x0.clone()]
    for k in range(T):
        if float(target_prob(model, x[None], torch.tensor([t]))[0]) >= tau:
            break
        xr = x.clone().requires_grad_(True)
        z = model(xr[None])[0]
        e = -z[t]
        loss = (torch.nn.functional.cross_entropy(z[None], torch.tensor([t]))
                + lam_cost * (xr - x0).abs().sum()
                + lam_energy * bb / 10 * (bb + k + 1) ** -0.9 * (e + q * e * e))
        (g,) = torch.autograd.grad(loss, xr)
        step = -lr * g
        step[(step > 0) & ~inc] = 0
        step[(step < 0) & ~dec] = 0
        x = torch.minimum(torch.maximum(x + step, lo), hi)
        path.append(x.clone())
    return path


@pytest.mark.parametrize("name", ["generic", "ecco"])
def test_batched_search_equals_naive_loop_and_nascent_is_last_point_in_ball(name, mlp, tight, factuals):
    x, target = factuals
    lam_cost = 0.01
    gen = engine(name, tight, lambda_cost=lam_cost)
    paths = [naive_path(mlp, x[i], int(target[i]), tight, lr=0.3, T=40, tau=0.7,
                        lam_cost=lam_cost, lam_energy=5.0 if name == "ecco" else 0.0)
             for i in range(len(x))]
    cases = set()
    for eps in (0.1, 0.4, 1.5):
        res = gen.search(mlp, x, target, nascent_eps=eps)
        for i, path in enumerate(paths):
            assert int(res.steps[i]) == len(path) - 1
            torch.testing.assert_close(res.counterfactual[i], path[-1], rtol=0, atol=1e-10)
            within = [k for k, p in enumerate(path) if float((p - x[i]).abs().max()) <= eps]
            torch.testing.assert_close(res.nascent[i], path[within[-1]], rtol=0, atol=1e-10)
            cases.add("end" if within[-1] == len(path) - 1 else "start" if within[-1] == 0 else "middle")
        assert float((res.nascent - x).abs().amax()) <= eps
    assert cases == {"start", "middle", "end"}   # every case of the nascent rule occurs


# --------------------------------------------------- invariants, every generator


def _run(name, mlp, constraints, vae, factuals, **kw):
    x, target = factuals
    return engine(name, constraints, vae, **kw).search(mlp, x, target, nascent_eps=0.3)


@pytest.mark.parametrize("name", NAMES)
def test_mutability_is_respected(name, mlp, tight, vae, factuals):
    x = factuals[0]
    res = _run(name, mlp, tight, vae, factuals)
    for pt in (res.counterfactual, res.nascent):
        assert torch.equal(pt[:, 0], x[:, 0])            # none
        assert bool((pt[:, 1] >= x[:, 1]).all())         # increase only
        assert bool((pt[:, 2] <= x[:, 2]).all())         # decrease only
    # the constraints bind: without them some rows move those features the forbidden way
    free = Constraints(tight.lower, tight.upper, ("both",) * D)
    cf = _run(name, mlp, free, vae, factuals).counterfactual
    assert bool((cf[:, 0] != x[:, 0]).any())
    assert bool((cf[:, 1] < x[:, 1]).any()) and bool((cf[:, 2] > x[:, 2]).any())


@pytest.mark.parametrize("name", NAMES)
def test_domain_is_respected_exactly(name, mlp, tight, vae, factuals):
    lower, upper = tight.lower.double(), tight.upper.double()
    free = Constraints(tight.lower, tight.upper, ("both",) * D)
    for constraints in (tight, free):
        res = _run(name, mlp, constraints, vae, factuals)
        for pt in (res.counterfactual, res.nascent):
            assert bool(((pt >= lower) & (pt <= upper)).all())
        if name != "revise":   # (decoded points rarely reach the bounds)
            hits = (res.counterfactual == lower) | (res.counterfactual == upper)
            assert bool(hits[:, 3:].any())   # the clamp was active on free features


@pytest.mark.parametrize("kind", ["both", "increase"])
def test_clamped_points_land_exactly_on_the_bound(kind):
    """float32, big steps across bounds near zero: ``v + (u - v)`` would often round past ``u``."""
    d, g = 64, _gen(5)
    model = nn.Linear(d, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([-torch.ones(d), torch.ones(d)]))
        model.bias.zero_()
    upper = torch.rand(d, generator=g) * 0.7 + 0.01
    constraints = Constraints(torch.full((d,), -10.0), upper, (kind,) * d)
    x = -3 * torch.rand(200, d, generator=g)
    cfg = GeneratorConfig(name="generic", lambda_cost=0.0, lr=50.0, maxiter=3, tau=0.99)
    res = make_generator(cfg, constraints).search(model, x, torch.ones(200, dtype=torch.long))
    assert bool((res.steps >= 1).all())
    assert torch.equal(res.counterfactual, upper.expand(200, d))   # every feature clamped at u


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_row_by_row(name, mlp, tight, vae, factuals):
    x, target = factuals
    gen = engine(name, tight, vae)
    res = gen.search(mlp, x, target)
    assert len(set(res.steps.tolist())) > 2   # rows finish at different steps (compaction exercised)
    for i in range(0, len(x), 3):
        one = gen.search(mlp, x[i:i + 1], target[i:i + 1])
        assert int(one.steps[0]) == int(res.steps[i])
        assert bool(one.converged[0]) == bool(res.converged[i])
        torch.testing.assert_close(one.counterfactual[0], res.counterfactual[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(one.nascent[0], res.nascent[i], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_converged_rows_are_frozen_and_unconverged_use_all_steps(name, mlp, tight, vae, factuals):
    x, target = factuals
    gen = engine(name, tight, vae)
    res = gen.search(mlp, x, target)
    p = target_prob(mlp, res.counterfactual, target)
    conv = res.converged
    assert bool(conv.any()) and bool((~conv).any())
    assert bool((p[conv] >= 0.7).all()) and bool((p[~conv] < 0.7).all())
    assert bool((res.steps[~conv] == 40).all()) and bool((res.steps[conv] <= 40).all())
    assert torch.equal(res.target, target) and torch.equal(res.factual, x)
    # a larger budget continues only the unconverged rows (ECCo's phi has the same b for T=40, 60)
    longer = gen.search(mlp, x, target, maxiter=60)
    assert torch.equal(longer.counterfactual[conv], res.counterfactual[conv])
    assert torch.equal(longer.steps[conv], res.steps[conv])
    assert bool((longer.steps[~conv] > 40).any())


@pytest.mark.parametrize("name", NAMES)
def test_model_is_left_untouched(name, mlp, tight, vae, factuals):
    model = nn.Sequential(nn.Linear(D, 8), nn.Dropout(0.5), nn.Linear(8, K)).double()
    model.train()
    model[2].bias.requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]
    res = engine(name, tight, vae).search(model, *factuals)
    again = engine(name, tight, vae).search(model, *factuals)
    assert torch.equal(res.counterfactual, again.counterfactual)   # dropout was off
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_model_state_is_restored_when_the_search_fails(tight, factuals):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, K).double()

        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        engine("generic", tight).search(model, *factuals)
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["generic", "ecco"])
def test_factual_already_at_target_takes_no_step(name, mlp, tight, factuals):
    x = factuals[0]
    with torch.no_grad():
        pred = mlp(x).argmax(1)
    confident = target_prob(mlp, x, pred) >= 0.7
    assert int(confident.sum()) >= 3
    res = engine(name, tight).search(mlp, x, pred)
    assert torch.equal(res.steps[confident], torch.zeros_like(res.steps[confident]))
    assert bool(res.converged[confident].all())
    assert torch.equal(res.counterfactual[confident], x[confident])
    assert torch.equal(res.nascent[confident], x[confident])


def test_probability_exactly_tau_counts_as_converged():
    """On the decision boundary of a 2-class model both logits are equal: p = 0.5 exactly."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    x = torch.tensor([[0.3, 0.3], [-1.25, -1.25], [0.3, 0.2]], dtype=torch.float64)
    cfg = GeneratorConfig(name="generic", lambda_cost=0.0, lr=0.1, maxiter=10, tau=0.5)
    res = make_generator(cfg, Constraints.unconstrained(2)).search(model, x, torch.tensor([1, 0, 1]))
    assert res.steps.tolist()[:2] == [0, 0] and bool(res.converged.all())
    assert int(res.steps[2]) == 1   # p < 0.5 at the start, >= 0.5 after one step


def test_revise_starts_from_the_reconstruction(mlp, tight, vae, factuals):
    x, target = factuals
    res = engine("revise", tight, vae).search(mlp, x, target)
    start = tight.protect(tight.clamp(vae.decode(vae.encode(x))), x)
    zero = res.steps == 0
    assert torch.equal(zero, target_prob(mlp, start, target) >= 0.7)
    assert torch.equal(res.counterfactual[zero], start[zero])


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch(name, mlp, tight, vae):
    res = engine(name, tight, vae).search(mlp, torch.zeros(0, D, dtype=torch.float64),
                                          torch.zeros(0, dtype=torch.long))
    assert len(res) == 0 and res.counterfactual.shape == (0, D)


def test_non_finite_gradient_components_do_not_move():
    class SqrtModel(nn.Module):
        """Linear logits + 0 * sqrt(x0): the gradient in x0 is NaN where x0 == 0."""

        def __init__(self):
            super().__init__()
            self.lin = linear_model()

        def forward(self, x):
            return self.lin(x) + 0 * torch.sqrt(x[:, :1])

    x = torch.tensor([[0.0, -0.5], [1.0, -0.5]], dtype=torch.float64)
    target = torch.tensor([1, 1])
    cfg = GeneratorConfig(name="generic", lambda_cost=0.0, lr=0.1, maxiter=30, tau=0.9)
    res = make_generator(cfg, Constraints.unconstrained(2)).search(SqrtModel(), x, target)
    assert bool(torch.isfinite(res.counterfactual).all())
    assert float(res.counterfactual[0, 0]) == 0.0 and float(res.counterfactual[0, 1]) > -0.5
    x_end, k, _ = linear_search_np(x[1].numpy(), 1, lr=0.1, T=30, tau=0.9)   # row 1 unaffected
    np.testing.assert_allclose(res.counterfactual[1].numpy(), x_end, rtol=0, atol=1e-12)
    assert int(res.steps[1]) == k


def test_per_row_energy_weights_equal_separate_searches(mlp, tight, factuals):
    x, target = factuals
    lams = torch.tensor([0.1, 5.0, 10.0], dtype=torch.float64).repeat_interleave(len(x) // 3)
    cfg = GeneratorConfig(name="ecco", lr=0.3, maxiter=40, tau=0.7)
    res = make_generator(cfg, tight, lambda_energy=lams).search(mlp, x, target)
    for lam in (0.1, 5.0, 10.0):
        rows = lams == lam
        one = make_generator(cfg, tight, lambda_energy=lam).search(mlp, x[rows], target[rows])
        torch.testing.assert_close(res.counterfactual[rows], one.counterfactual, rtol=0, atol=1e-12)
        assert torch.equal(res.steps[rows], one.steps)


# ------------------------------------------------------------- ECCo schedule


def test_energy_decay_values():
    assert energy_decay(0, 30, "reference") == pytest.approx(0.1 * 2 ** -0.9, rel=1e-12)   # ~0.0536
    assert energy_decay(29, 30, "reference") == pytest.approx(0.1 * 31 ** -0.9, rel=1e-12)  # ~0.0045
    assert energy_decay(0, 50, "reference") == pytest.approx(0.2 * 3 ** -0.9, rel=1e-12)
    assert energy_decay(9, 100, "reference") == pytest.approx(0.4 * 14 ** -0.9, rel=1e-12)
    assert energy_decay(7, 30, "constant") == 1.0
    for T in (13, 30, 50):
        assert all(energy_decay(k, T, "reference_exact") == energy_decay(k, T, "reference")
                   for k in range(T))


def test_reference_exact_reproduces_the_disabled_energy_defect():
    for T in range(1, 13):
        assert all(energy_decay(k, T, "reference_exact") == 0.0 for k in range(T))
        assert all(energy_decay(k, T, "reference") > 0.0 for k in range(T))
    assert energy_decay(0, 13, "reference_exact") > 0.0


def test_ecco_with_reference_exact_and_short_budget_is_generic(mlp, tight, factuals):
    x, target = factuals
    kw = dict(lr=0.3, maxiter=5, tau=0.7, lambda_cost=0.01)
    generic = make_generator(GeneratorConfig(name="generic", **kw), tight).search(mlp, x, target)
    exact = make_generator(GeneratorConfig(name="ecco", energy_schedule="reference_exact", **kw),
                           tight).search(mlp, x, target)
    fixed = make_generator(GeneratorConfig(name="ecco", **kw), tight).search(mlp, x, target)
    assert torch.equal(exact.counterfactual, generic.counterfactual)
    assert not torch.equal(fixed.counterfactual, generic.counterfactual)


# ------------------------------------------------------------------ REVISE


def test_revise_needs_a_vae(tight):
    with pytest.raises(ConfigError, match="revise"):
        make_generator(GeneratorConfig(name="revise"), tight)


def test_revise_vae_is_cached_on_disk(tmp_path, monkeypatch, data, mlp, tight, factuals):
    X = data.float()
    cfg = GeneratorConfig(name="revise", lr=0.3, maxiter=20, tau=0.7, vae_epochs=5)
    first = generator_for(cfg, tight, X, cache_dir=tmp_path, seed=4)
    files = list(tmp_path.glob("vae-*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob(".vae-*"))

    def no_training(*args, **kwargs):
        raise AssertionError("the cached VAE should have been loaded")

    monkeypatch.setattr("ctgrid.generators.vae.train_vae", no_training)
    second = generator_for(cfg, tight, X, cache_dir=tmp_path, seed=4)
    for a, b in zip(first.codec.state_dict().values(), second.codec.state_dict().values()):
        assert torch.equal(a, b)
    x, target = factuals[0].float(), factuals[1]
    model = mlp.float()
    try:
        r1, r2 = first.search(model, x, target), second.search(model, x, target)
    finally:
        mlp.double()
    assert torch.equal(r1.counterfactual, r2.counterfactual) and torch.equal(r1.steps, r2.steps)
    with pytest.raises(AssertionError, match="cached"):   # other data: another cache entry
        generator_for(cfg, tight, X[:-1], cache_dir=tmp_path, seed=4)


def test_vae_training_is_seeded_and_leaves_global_rng_alone(data):
    X = data[:200].float()
    state = torch.get_rng_state()
    a, b = train_vae(X, epochs=3, seed=7), train_vae(X, epochs=3, seed=7)
    c = train_vae(X, epochs=3, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_revise_encoder_is_deterministic(vae, factuals):
    x = factuals[0]
    z1, z2 = vae.encode(x), vae.encode(x)
    assert torch.equal(z1, z2)
    assert torch.equal(z1, vae.posterior(x)[0])   # the posterior mean, no sampling


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name, data, mlp, tight, factuals):
    x, target = factuals
    cfg = GeneratorConfig(name=name, lr=0.3, maxiter=20, tau=0.7, vae_epochs=5)
    runs = []
    for _ in range(2):
        gen = generator_for(cfg, tight, data.float(), seed=11)
        if gen.codec is not None:
            gen.codec.double()
        runs.append(gen.search(mlp, x, target))
    assert torch.equal(runs[0].counterfactual, runs[1].counterfactual)
    assert torch.equal(runs[0].nascent, runs[1].nascent)
    assert torch.equal(runs[0].steps, runs[1].steps)


def test_a_pack_member_searches_as_alone_whatever_its_rows_alignment():
    """Float32, 30 features into 8 hidden units: MKL's GEMM gives other last bits for an input
    view at another 16-byte offset, and a pack member's rows start wherever the rows before it
    end (333 rows of 30 floats: offset 39,960 bytes, 8 mod 16). RoutedModels copies such views, so every
    member's search equals its search alone bit for bit."""
    from ctgrid.generators import RoutedModels
    torch.manual_seed(3)
    models = [nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2)) for _ in range(3)]
    sizes = [333, 64, 1000]
    x = torch.randn(sum(sizes), 30)
    target = torch.randint(0, 2, (sum(sizes),))
    cons = Constraints(torch.full((30,), -10.0), torch.full((30,), 10.0), ("both",) * 30)
    gen = GeneratorConfig(name="ecco", maxiter=20, tau=0.99, lambda_energy=0.0)
    joint = make_generator(gen, cons).search(RoutedModels(models, sizes), x, target)
    start = 0
    for m, n in zip(models, sizes):
        alone = make_generator(gen, cons).search(m, x[start:start + n].clone(), target[start:start + n])
        assert torch.equal(joint.counterfactual[start:start + n], alone.counterfactual)
        assert torch.equal(joint.steps[start:start + n], alone.steps)
        start += n


def _ce_and_grad(fn, logits, target, upstream):
    z = logits.clone().requires_grad_(True)
    loss = fn(z, target)
    (grad,) = torch.autograd.grad((loss * upstream).sum(), z)
    return loss.detach(), grad


@pytest.mark.parametrize("classes", [2, 3, 5, 8])
def test_cross_entropy_rows_has_the_bits_of_torch_cross_entropy_forward_and_backward(classes):
    """The search's cross-entropy in the class-major layout (rows padded to full vectors) against
    ``F.cross_entropy``, every bit, for batch sizes around and far past the vector width; without
    the padding the rows past the last full vector differ (the control)."""
    from ctgrid.generators.engine import cross_entropy_rows as fast
    cross_entropy_rows = lambda z, t: fast(z, t, min_rows=0)  # noqa: E731   (the layout at every size)
    gen = torch.Generator().manual_seed(classes)
    torch_ce = lambda z, t: F.cross_entropy(z, t, reduction="none")  # noqa: E731
    unpadded = lambda z, t: -z.t().log_softmax(dim=0).gather(0, t[None]).squeeze(0)  # noqa: E731
    control = 0
    for n in [*range(1, 130), 1000, 45_007, 200_003]:
        for scale in (0.01, 3.0, 50.0):
            logits = torch.randn(n, classes, generator=gen) * scale
            target = torch.randint(0, classes, (n,), generator=gen)
            upstream = torch.randn(n, generator=gen)
            want = _ce_and_grad(torch_ce, logits, target, upstream)
            got = _ce_and_grad(cross_entropy_rows, logits, target, upstream)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (n, scale)
            if n < 130:
                other = _ce_and_grad(unpadded, logits, target, upstream)
                control += int(not (torch.equal(other[0], want[0]) and torch.equal(other[1], want[1])))
    assert control > 0, "the unpadded layout differs somewhere (else the padding is not tested)"
    double = torch.randn(300, classes, dtype=torch.float64, generator=gen)
    t = torch.randint(0, classes, (300,), generator=gen)
    ones = torch.ones(300, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(_ce_and_grad(cross_entropy_rows, double, t, ones),
                                                 _ce_and_grad(torch_ce, double, t, ones)))


@pytest.mark.parametrize("classes", [2, 10])
def test_reaches_decides_every_row_as_the_row_wise_softmax_even_exactly_at_tau(classes):
    """Each row's tau is its own row-wise probability (must reach) or the next float above it
    (must not): the fast class-major softmax alone gets some of these wrong by a last bit."""
    from ctgrid.generators.engine import reaches
    gen = torch.Generator().manual_seed(classes)
    logits = torch.randn(50_000, classes, generator=gen) * torch.logspace(-3, 1, 50_000)[:, None]
    target = torch.randint(0, classes, (50_000,), generator=gen)
    exact = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
    fast = logits.t().contiguous().softmax(dim=0).gather(0, target[None, :]).squeeze(0)
    assert not torch.equal(fast, exact), "the two kernels differ somewhere (else this tests nothing)"
    above = torch.nextafter(exact, torch.full_like(exact, 2.0))
    assert reaches(logits, target, exact).all()
    assert not reaches(logits, target, above).any()
    for tau in (0.5, 0.75, float(exact[7]), float(above[7])):   # scalar thresholds
        assert torch.equal(reaches(logits, target, tau), exact >= tau)
    assert torch.equal(reaches(logits[:10], target[:10], 0.6), exact[:10] >= 0.6)   # few rows
    if classes <= CLASS_MAJOR_CLASSES:   # from the search's own log-probabilities (its cross-entropy's)
        log_p = target_log_probs(logits, target)
        assert not torch.equal(log_p.exp(), exact), "exp(log p) differs somewhere (else nothing is tested)"
        assert reaches(logits, target, exact, log_p=log_p).all()
        assert not reaches(logits, target, above, log_p=log_p).any()
        for tau in (0.5, 0.75, float(exact[7]), float(above[7])):
            assert torch.equal(reaches(logits, target, tau, log_p=log_p), exact >= tau)


def test_per_row_settings_follow_the_rows_through_every_compaction():
    """``_Rows.at``: a per-factual value gathered once and compacted with the rows equals
    indexing the value at the active rows after any sequence of compactions."""
    from ctgrid.generators.engine import _Rows
    gen = torch.Generator().manual_seed(3)
    n = 500
    rows = _Rows(torch.randn(n, 2, generator=gen), torch.randn(n, 2, generator=gen), torch.zeros(n, dtype=torch.long))
    tau, weights = torch.rand(n, generator=gen), torch.rand(n, generator=gen, dtype=torch.float64)
    assert rows.at(0.5) == 0.5
    for _ in range(6):
        assert torch.equal(rows.at(tau), tau[rows.idx]) and torch.equal(rows.at(weights), weights[rows.idx])
        go_on = torch.nonzero(torch.rand(len(rows.idx), generator=gen) < 0.7).squeeze(1)
        rows.keep(go_on, rows.state)
    other = tau.clone()   # a new tensor is gathered afresh, not served another one's rows
    other[rows.idx] += 1
    assert torch.equal(rows.at(other), tau[rows.idx] + 1)


@pytest.mark.parametrize("generator", ["generic", "ecco"])
def test_a_search_split_into_slices_equals_the_search_of_the_whole(data_dir, generator):
    """What sharded mode relies on: each row's counterfactual does not depend on the rows searched
    beside it, also when a slice's active rows fall below 16 (MKL's GEMM then takes other last
    bits; the engine pads). Adult, nearly every row converging within a few steps."""
    from ctgrid.data import DataConfig, load_dataset
    from ctgrid.models import ModelConfig
    from ctgrid.training import TrainingConfig, train
    ds = load_dataset(DataConfig(name="adult"), data_dir)
    model = train(ds, ModelConfig(), GeneratorConfig(name="ecco", maxiter=30),
                  TrainingConfig(objective="vanilla", nepochs=1, seed=0)).model
    engine = make_generator(GeneratorConfig(name=generator, maxiter=200, tau=0.5, lr=0.5), ds.constraints)
    idx = torch.randperm(len(ds.X_train), generator=torch.Generator().manual_seed(1))[:2000]
    x = ds.X_train[idx]
    target = 1 - model(x).argmax(1)
    tau = torch.linspace(0.5, 0.6, 2000)
    whole = engine.search(model, x, target, tau=tau)
    assert int(whole.converged.sum()) > 1990 and int(whole.steps.max()) > 1
    for k in (2, 3, 4, 7, 16):
        cuts = [(r * 2000) // k for r in range(k + 1)]
        parts = [engine.search(model, x[a:b].clone(), target[a:b], tau=tau[a:b]) for a, b in zip(cuts, cuts[1:])]
        for field in ("counterfactual", "nascent", "steps", "converged"):
            assert torch.equal(torch.cat([getattr(p, field) for p in parts]), getattr(whole, field)), (k, field)


@pytest.mark.parametrize("kinds", [("none", "increase", "decrease") + ("both",) * 20,   # few: by column
                                   ("none", "increase", "both", "decrease"),             # many: whole batch
                                   ("both",) * 6])
def test_keep_direction_is_the_clamp_to_the_allowed_steps_bit_for_bit(kinds):
    """``keep_direction`` equals ``clamp(new, old + lo, old + hi)`` (the step bounds) every bit,
    whether it clamps the constrained columns only (few) or the whole batch (many), also for
    values exactly at the bound, and never changes a free column."""
    d = len(kinds)
    c = Constraints(torch.full((d,), -5.0), torch.full((d,), 5.0), kinds)
    gen = torch.Generator().manual_seed(d)
    old = torch.randn(700, d, generator=gen)
    new = old + torch.randn(700, d, generator=gen)
    new[::7] = old[::7]                                   # unmoved rows: exactly at the bound
    lo, hi = c.step_bounds(new)
    got = c.keep_direction(new, old)
    assert torch.equal(got, torch.clamp(new, old + lo, old + hi))
    free = [i for i, k in enumerate(kinds) if k == "both"]
    assert torch.equal(got[:, free], new[:, free])
    for i, k in enumerate(kinds):
        if k == "none":
            assert torch.equal(got[:, i], old[:, i])
        elif k == "increase":
            assert bool((got[:, i] >= old[:, i]).all())
        elif k == "decrease":
            assert bool((got[:, i] <= old[:, i]).all())
