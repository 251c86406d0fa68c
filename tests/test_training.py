"""Counterfactual Training: loss terms by hand, CE phase rules, schedule, equivalences, CLI errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctgrid.constraints import Constraints
from ctgrid.data import DataConfig, load_dataset
from ctgrid.generators import CounterfactualBatch, GeneratorConfig, generator_for, make_generator
from ctgrid.models import ModelConfig
from ctgrid.training import HISTORY_COLUMNS, TrainingConfig, train
from ctgrid.training import objectives as obj
from ctgrid.training.counterfactuals import ClassPools, counterfactual_phase, group_bounds
from ctgrid.training.loop import make_optimizer
from ctgrid.training.pack import PackEpochs, StepLog
from ctgrid.training.stack import ModelStack, StackOptimizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest (and undisturbed by other processes) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def moons_small():
    return load_dataset(DataConfig(name="moons", n_train=300, n_val=60, n_test=60))


def log_softmax_ce(z: list[float], y: int) -> float:
    return -z[y] + math.log(sum(math.exp(v) for v in z))


# ---------------------------------------------------------------- loss terms by hand

def test_pure_terms_match_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5], [-1.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    expected = sum(log_softmax_ce(z, y) for z, y in zip(logits.tolist(), labels.tolist())) / 3
    assert obj.classification_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert obj.adversarial_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    target = torch.tensor([1, 0, 1])
    assert obj.target_logits(logits, target).tolist() == [0.0, 0.5, 3.0]
    f_cf, f_plus = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert obj.contrastive_divergence(f_cf, f_plus).item() == pytest.approx(((1 - 3) + (-2 - 0.5)) / 2)
    assert obj.ridge(f_cf, f_plus).item() == pytest.approx(((9 + 1) + (0.25 + 4)) / 2)


def _identity_epochs(objective: str, optimizer: str = "adam", **lam) -> PackEpochs:
    """A linear model with weight I and bias 0: logits equal the inputs."""
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    ds = load_dataset(DataConfig(name="moons", n_train=20, n_val=0, n_test=10))
    cfg = TrainingConfig(objective=objective, optimizer=optimizer, lr=1.0, **lam)
    stack = ModelStack([model])
    return PackEpochs(ds, stack, StackOptimizer(stack, [cfg], make_optimizer), [cfg], [lambda: None])


XB, YB = [[1.0, 0.0], [0.0, 2.0], [0.5, -0.5]], [0, 0, 1]
X_CF, X_PLUS, NASC = [[0.2, 1.0], [1.5, 0.0]], [[-1.0, 3.0], [2.0, -1.0]], [[0.0, 0.5], [1.0, 1.0]]
T, Y_FACT = [1, 0], [1, 0]


def _hand_batch(ep: PackEpochs):
    """The hand batch as a pack of one (leading member axis of size 1)."""
    ce = tuple(torch.tensor(v)[None] for v in (X_CF, X_PLUS, NASC, T, Y_FACT))
    return ep.assemble([0], torch.tensor(XB)[None], torch.tensor(YB)[None], ce)


HAND = {
    "clf": sum(log_softmax_ce(z, y) for z, y in zip(XB, YB)) / 3,
    "div": sum(c[t] - p[t] for c, p, t in zip(X_CF, X_PLUS, T)) / 2,
    "reg": sum(p[t] ** 2 + c[t] ** 2 for c, p, t in zip(X_CF, X_PLUS, T)) / 2,
    "adv": sum(log_softmax_ce(z, y) for z, y in zip(NASC, Y_FACT)) / 2,
}


def test_loop_terms_equal_hand_computation_and_pure_functions():
    """Rows [x_b; x'; x+; nascent] through an identity model (logits = inputs): every term by hand."""
    ep = _identity_epochs("full", lambda_clf=1.0, lambda_div=0.5, lambda_reg=0.25, lambda_adv=2.0)
    b = _hand_batch(ep)
    assert b.names == ("clf", "div", "reg", "adv") and b.inputs.shape == (1, 9, 2)
    terms = dict(zip(b.names, ep.evaluate(b)[0].tolist()))
    for name, want in HAND.items():
        assert terms[name] == pytest.approx(want, rel=1e-6, abs=1e-7), name
    f_cf = obj.target_logits(torch.tensor(X_CF), torch.tensor(T))
    f_plus = obj.target_logits(torch.tensor(X_PLUS), torch.tensor(T))
    pure = {"clf": obj.classification_loss(torch.tensor(XB), torch.tensor(YB)),
            "div": obj.contrastive_divergence(f_cf, f_plus), "reg": obj.ridge(f_cf, f_plus),
            "adv": obj.adversarial_loss(torch.tensor(NASC), torch.tensor(Y_FACT))}
    for name, value in pure.items():
        assert value.item() == pytest.approx(HAND[name], rel=1e-6, abs=1e-7), name


def test_one_update_follows_the_hand_gradient():
    """SGD(lr=1) on the weighted loss moves the bias by minus its hand-computed gradient."""
    lam = {"clf": 1.0, "div": 0.5, "reg": 0.25, "adv": 2.0}
    ep = _identity_epochs("full", optimizer="sgd", **{f"lambda_{k}": v for k, v in lam.items()})
    log = StepLog(1)
    ep.step([([0], None, _hand_batch(ep))], log)
    ep.stack.sync()
    (means,), (skipped,) = log.means(), log.skipped
    assert skipped == 0
    assert means["loss"] == pytest.approx(sum(lam[k] * HAND[k] for k in lam), rel=1e-6)
    softmax = lambda z: [math.exp(v) / sum(math.exp(u) for u in z) for v in z]  # noqa: E731
    dz = []                                    # (row x, d loss / d logits of that row)
    for rows, labels, w in ((XB, YB, lam["clf"] / 3), (NASC, Y_FACT, lam["adv"] / 2)):
        dz += [(z, [w * (p - (k == y)) for k, p in enumerate(softmax(z))]) for z, y in zip(rows, labels)]
    for c, p, t in zip(X_CF, X_PLUS, T):       # div: +-lam/m at the target logit; reg: 2 f lam / m
        dz.append((c, [(lam["div"] / 2 + lam["reg"] * c[t]) * (k == t) for k in range(2)]))
        dz.append((p, [(-lam["div"] / 2 + lam["reg"] * p[t]) * (k == t) for k in range(2)]))
    grad_b = [sum(g[k] for _, g in dz) for k in range(2)]
    grad_w = [[sum(g[k] * x[j] for x, g in dz) for j in range(2)] for k in range(2)]
    model = ep.stack.models[0]
    assert model[0].bias.tolist() == pytest.approx([-g for g in grad_b], rel=1e-5)
    want_w = [[(k == j) - grad_w[k][j] for j in range(2)] for k in range(2)]
    for got, want in zip(model[0].weight.tolist(), want_w):
        assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("objective,names,rows", [("vanilla", ("clf",), 3),
                                                  ("energy", ("clf", "div", "reg"), 7),
                                                  ("adversarial", ("clf", "adv"), 5)])
def test_objectives_use_their_terms(objective, names, rows):
    ep = _identity_epochs(objective)
    b = _hand_batch(ep)
    assert b.names == names and b.inputs.shape[1] == rows
    for name, value in zip(names, ep.evaluate(b)[0].tolist()):
        assert value == pytest.approx(HAND[name], rel=1e-6, abs=1e-7), name


def test_zero_weight_terms_are_left_out():
    cfg = TrainingConfig(objective="full", lambda_div=0.0, lambda_adv=0.0)
    assert obj.weights(cfg) == {"clf": 1.0, "reg": 0.1}


# ---------------------------------------------------------------- CE phase rules

def _fake_generate(cf: torch.Tensor, converged: list[bool]):
    calls = []

    def generate(model, x, target, *, nascent_eps):
        calls.append((x.clone(), target.clone(), nascent_eps))
        n = len(x)
        return CounterfactualBatch(x, target, cf[:n].clone(), torch.tensor(converged[:n]),
                                   torch.full((n,), 3), x.clone())
    return generate, calls


def _phase(mutability, cf, converged, nonconverged="replace"):
    """4 features; every training row of class 1 is 0, of class 0 is 5; a model predicting class 0."""
    X = torch.cat([torch.full((3, 4), 5.0), torch.zeros(3, 4)])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))
    cons = Constraints(torch.full((4,), -9.0), torch.full((4,), 9.0), tuple(mutability))
    generate, calls = _fake_generate(cf, converged)
    ce = counterfactual_phase(model, X, y, ClassPools(y, 2), nce=len(converged), n_classes=2,
                              generate=generate, eps=0.3, gen=torch.Generator().manual_seed(0),
                              nonconverged=nonconverged, constraints=cons)
    return ce, calls


def test_protect_rules_each_kind():
    # x+ = 0 everywhere (class-1 rows); x' above (row 0) and below (row 1) it
    cf = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    ce, calls = _phase(("none", "increase", "decrease", "both"), cf, [True, True])
    assert calls[0][1].tolist() == [1, 1] and calls[0][2] == 0.3   # target: the class not predicted
    assert ce.counterfactual.tolist() == cf.tolist()
    assert ce.plus.tolist() == [[1.0, 1.0, 0.0, 0.0],    # none: x'; increase: max(x', x+); decrease: min
                                [-1.0, 0.0, -1.0, 0.0]]
    assert ce.target.tolist() == [1, 1] and ce.converged == 1.0 and ce.steps == 3.0


def test_nonconverged_replaced_by_x_plus_or_dropped():
    cf = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    ce, _ = _phase(("none",) * 4, cf, [True, False])
    assert ce.counterfactual.tolist() == [[1.0] * 4, [0.0] * 4]   # row 1 := its x+ (zeros)
    assert ce.plus.tolist() == [[1.0] * 4, [0.0] * 4]
    assert ce.converged == 0.5 and len(ce) == 2
    ce, _ = _phase(("none",) * 4, cf, [True, False], nonconverged="drop")
    assert len(ce) == 1 and ce.counterfactual.tolist() == [[1.0] * 4] and ce.n_drawn == 2


def test_targets_avoid_prediction_and_x_plus_has_target_class():
    y = torch.arange(5).repeat_interleave(20)
    X = y[:, None].float().repeat(1, 3)          # a row's features equal its class
    model = nn.Linear(3, 5)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 0.0, 9.0, 0.0, 0.0]))   # always predicts class 2
    generate, _ = _fake_generate(torch.zeros(100, 3), [True] * 100)
    ce = counterfactual_phase(model, X, y, ClassPools(y, 5), nce=100, n_classes=5, generate=generate,
                              eps=0.3, gen=torch.Generator().manual_seed(1), nonconverged="replace",
                              constraints=Constraints.unconstrained(3))
    assert set(ce.target.tolist()) == {0, 1, 3, 4}
    assert torch.equal(ce.plus[:, 0].long(), ce.target)
    assert sorted(ce.label.tolist()) == y.tolist()       # nce = N: every factual once


def test_group_bounds_spread_evenly():
    assert group_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert group_bounds(2, 3) == [(0, 1), (1, 2), (2, 2)]


# ---------------------------------------------------------------- schedule and equivalences

def test_burnin_epochs_have_no_ce_phase(moons_small):
    calls, built = [], []

    def wrap_search(build):   # called once, at the first CT epoch, with the engine's builder
        engine = build()
        built.append((engine.maxiter, len(calls)))

        def generate(model, x, target, *, nascent_eps):
            calls.append(len(x))
            return engine.search(model, x, target, nascent_eps=nascent_eps)
        return generate

    cfg = TrainingConfig(objective="full", nepochs=4, burnin=0.5, nce=50, batch_size=30)
    res = train(moons_small, ModelConfig(), GeneratorConfig(maxiter=5), cfg, wrap_search=wrap_search)
    assert built == [(5, 0)]
    h = res.history
    assert list(h.columns) == list(HISTORY_COLUMNS) and res.completed and res.epochs_done == 4
    assert calls == [50, 50]
    assert h["div"].isna().tolist() == [True, True, False, False]
    assert h["converged"].isna().tolist() == [True, True, False, False]
    assert h["n_ce"].tolist() == [0, 0, 50, 50]
    assert (h["t_ce"].iloc[2:] > 0).all() and (h["skipped"] == 0).all()


def test_dropping_every_counterfactual_leaves_clf_only(moons_small):
    def never_converges(model, x, target, *, nascent_eps):
        n = len(x)
        return CounterfactualBatch(x, target, x.clone(), torch.zeros(n, dtype=torch.bool),
                                   torch.full((n,), 4), x.clone())

    cfg = TrainingConfig(objective="full", nepochs=1, nce=40, batch_size=30, nonconverged="drop")
    h = train(moons_small, ModelConfig(), GeneratorConfig(), cfg,
              wrap_search=lambda build: never_converges).history
    assert h["converged"].tolist() == [0.0] and h["search_steps"].tolist() == [4.0]
    assert h["n_ce"].tolist() == [0] and h[["div", "reg", "adv"]].isna().all(axis=None)
    assert h["loss"].iloc[0] == pytest.approx(h["clf"].iloc[0])


def test_full_with_zero_ce_weights_trains_exactly_like_vanilla(moons_small):
    base = dict(nepochs=3, nce=100, batch_size=30, seed=7)
    gen = GeneratorConfig(maxiter=10)
    van = train(moons_small, ModelConfig(), gen, TrainingConfig(objective="vanilla", **base))
    full = train(moons_small, ModelConfig(), gen, TrainingConfig(
        objective="full", lambda_div=0.0, lambda_reg=0.0, lambda_adv=0.0, **base))
    assert full.history["converged"].notna().all()            # the CE phase did run
    for (k, a), b in zip(van.model.state_dict().items(), full.model.state_dict().values()):
        assert torch.equal(a, b), k
    other = train(moons_small, ModelConfig(), gen, TrainingConfig(objective="full", **base))
    assert not torch.equal(other.model[0].weight, van.model[0].weight)


def test_non_finite_loss_skips_the_step(moons_small):
    ds = moons_small
    bad = torch.full_like(ds.X_train, float("nan"))
    from dataclasses import replace
    res = train(replace(ds, X_train=bad), ModelConfig(), GeneratorConfig(),
                TrainingConfig(objective="vanilla", nepochs=1, batch_size=100))
    assert res.history["skipped"].tolist() == [3]
    assert math.isnan(res.history["loss"].iloc[0])


def test_stop_hook_and_checkpoint_resume_in_process(moons_small, tmp_path):
    cfg = TrainingConfig(objective="full", nepochs=4, nce=60, batch_size=30, seed=3)
    gen = GeneratorConfig(maxiter=8)
    whole = train(moons_small, ModelConfig(), gen, cfg)
    ck = tmp_path / "ck.pt"
    rows = []
    part = train(moons_small, ModelConfig(), gen, cfg, checkpoint_path=ck, progress=rows.append,
                 stop=lambda: len(rows) >= 2)
    assert not part.completed and part.epochs_done == 2 and ck.exists()
    rest = train(moons_small, ModelConfig(), gen, cfg, checkpoint_path=ck)
    assert rest.completed and rest.history["epoch"].tolist() == [1, 2, 3, 4]
    for a, b in zip(whole.model.state_dict().values(), rest.model.state_dict().values()):
        assert torch.equal(a, b)
    from ctgrid.errors import ConfigError
    with pytest.raises(ConfigError, match="different configuration"):
        train(moons_small, ModelConfig(), gen, TrainingConfig(objective="full", nepochs=4, nce=61,
                                                              batch_size=30, seed=3), checkpoint_path=ck)
    from dataclasses import replace
    frozen_x0 = moons_small.constraints.with_mutability({0: "none"}, moons_small.feature_names)
    with pytest.raises(ConfigError, match="different configuration"):
        train(replace(moons_small, constraints=frozen_x0), ModelConfig(), gen, cfg, checkpoint_path=ck)


def test_nce_larger_than_training_set_is_rejected(moons_small):
    from ctgrid.errors import ConfigError
    with pytest.raises(ConfigError, match="training.nce"):
        train(moons_small, ModelConfig(), GeneratorConfig(), TrainingConfig(nce=301))


# ---------------------------------------------------------------- CT does what the paper says

def _implausibility(model, ds, lam_energy: float, n: int = 300) -> tuple[float, float]:
    """Mean L1 distance of test-time CEs to the target-class training points, and validity."""
    engine = make_generator(GeneratorConfig(name="ecco", lambda_cost=0.0, lambda_energy=lam_energy,
                                            tau=0.5, maxiter=50), ds.constraints)
    x = ds.X_test[:n]
    with torch.no_grad():
        target = 1 - model(x).argmax(dim=1)
    res = engine.search(model, x, target)
    same = (ds.y_train[None, :] == target[:, None]).float()
    ip = (torch.cdist(res.counterfactual, ds.X_train, p=1) * same).sum(1) / same.sum(1)
    return float(ip.mean()), float(res.converged.float().mean())


def test_ct_lowers_implausibility_on_circles():
    """Paper settings for circles (tau 0.5, nce 1000, lambda_reg 0.5), 10 epochs, two seeds."""
    ds = load_dataset(DataConfig(name="circles"))
    ip = {"vanilla": [], "full": []}
    for seed in (0, 1):
        for objective in ip:
            cfg = TrainingConfig(objective=objective, nepochs=10, nce=1000, lambda_reg=0.5, seed=seed)
            model = train(ds, ModelConfig(), GeneratorConfig(name="ecco", tau=0.5), cfg).model
            with torch.no_grad():
                acc = float((model(ds.X_test).argmax(1) == ds.y_test).float().mean())
            ip[objective].append((acc, [_implausibility(model, ds, le) for le in (0.5, 5.0)]))
    for (acc_v, _), (acc_c, _) in zip(ip["vanilla"], ip["full"]):
        assert abs(acc_v - acc_c) <= 0.02
    mean_ip = {k: sum(d for _, runs in v for d, _ in runs) / 4 for k, v in ip.items()}
    validity = {k: min(val for _, runs in v for _, val in runs) for k, v in ip.items()}
    assert min(validity.values()) >= 0.9, validity
    assert mean_ip["full"] < 0.97 * mean_ip["vanilla"], mean_ip


# ---------------------------------------------------------------- CLI

def _cli(args: list[str], capsys) -> tuple[int, str]:
    from ctgrid.cli import main
    rc = main(["train", *args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("args,needle", [
    (["--lambda-div", "-1"], "training.lambda_div"),
    (["--tau", "1.5"], "generator.tau"),
    (["--nce", "3001"], "training.nce"),
    (["--generator", "ecc"], "generator.name"),
    (["--mutability", "age=none"], "age"),
    (["--mutability", "x0"], "--mutability"),
    (["--objective", "ful"], "training.objective"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _cli(["--data", "moons", "--nepochs", "1", "--out", str(out), *args], capsys)
    assert rc == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctgrid: error:") and needle in lines[0]


def test_cli_yaml_unknown_key_and_flags_override(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lambda_rge: 0.5\n")
    rc, err = _cli(["--config", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "lambda_reg" in err and not (tmp_path / "o").exists()
    good = tmp_path / "good.yaml"
    good.write_text("data: {name: moons, n_train: 120, n_val: 30, n_test: 30}\n"
                    "generator: {maxiter: 5}\ntraining: {objective: full, nepochs: 3, nce: 40}\n")
    out = tmp_path / "run"
    rc, err = _cli(["--config", str(good), "--nepochs", "2", "--out", str(out)], capsys)
    assert rc == 0, err
    # the layout of a grid job (ctgrid.modeldir); the checkpoint is dropped once done
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "done.json", "history.parquet",
                                                      "model.pt"]
    import pandas as pd
    import yaml
    assert len(pd.read_parquet(out / "history.parquet")) == 2
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert set(resolved) == {"data", "model", "generator", "training", "evaluation"}
    assert resolved["training"]["nepochs"] == 2 and resolved["training"]["batch_size"] is None
    assert resolved["generator"]["maxiter"] == 5 and resolved["data"]["n_train"] == 120
    state = torch.load(out / "model.pt", weights_only=True)
    assert "0.weight" in state["state_dict"] and state["config"]["training"]["nepochs"] == 2
    # the written config reproduces the run bit for bit (same derived seed)
    again = tmp_path / "again"
    rc, err = _cli(["--config", str(out / "config.yaml"), "--out", str(again)], capsys)
    assert rc == 0, err
    state2 = torch.load(again / "model.pt", weights_only=True)
    assert all(torch.equal(state["state_dict"][k], state2["state_dict"][k]) for k in state["state_dict"])
    assert state["job_id"] == state2["job_id"]


def test_revise_generator_trains_with_cached_vae(moons_small, tmp_path):
    cfg = TrainingConfig(objective="energy", nepochs=1, nce=30, batch_size=30)
    gen = GeneratorConfig(name="revise", maxiter=3, vae_epochs=2)
    res = train(moons_small, ModelConfig(), gen, cfg, cache_dir=tmp_path)
    assert list(tmp_path.glob("vae-*.pt")) and res.history["n_ce"].iloc[0] == 30
    assert generator_for(gen, moons_small.constraints, moons_small.X_train, cache_dir=tmp_path)


def test_hidden_widths_build_one_layer_per_entry_and_keep_nlayers_networks():
    from ctgrid.models import ModelConfig, build_model
    from ctgrid.seeding import torch_generator
    net = build_model(ModelConfig(hidden=(128, 64, 16)), 24, 2)
    shapes = [tuple(m.weight.shape) for m in net if isinstance(m, torch.nn.Linear)]
    assert shapes == [(128, 24), (64, 128), (16, 64), (2, 16)]
    assert ModelConfig(hidden=(128, 64, 16)).widths == (128, 64, 16) and ModelConfig(nlayers=2).widths == (32, 32)
    a = build_model(ModelConfig(nlayers=3), 5, 2, generator=torch_generator(1, "init")).state_dict()
    b = build_model(ModelConfig(hidden=(32, 32, 32)), 5, 2, generator=torch_generator(1, "init")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from ctgrid.errors import ConfigError
    with pytest.raises(ConfigError, match="model.hidden"):
        ModelConfig(hidden=(16, 0))
