"""The test-time protocol (issue 9): informative pairs, class-balanced factuals, one-hot
groups in every search, normalised steps, the adversarial label, redundancy and the
sensitivity to immutable features — on tiny hand-built models whose answers follow
from the literals."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from ctgrid.aggregate.pairing import paired_ce_units
from ctgrid.constraints import Constraints
from ctgrid.data.dataset import Dataset
from ctgrid.errors import ConfigError
from ctgrid.evaluation.config import EvaluationConfig
from ctgrid.evaluation.evaluate import evaluate_model
from ctgrid.evaluation.grid import build_grid
from ctgrid.generators import CounterfactualBatch, GeneratorConfig, make_generator
from ctgrid.grid.job import JobConfig
from ctgrid.training.config import TrainingConfig
from ctgrid.training.counterfactuals import ClassPools, counterfactual_phase


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    """A fixed linear classifier: logits = x W^T + b."""
    w = torch.tensor(weight)
    model = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(torch.tensor(bias))
    return model.eval()


def tiny_dataset(y_test: list[int], n_classes: int = 2, name: str = "tiny") -> Dataset:
    """1 feature equal to ``row index - n/2`` (so the sign says the side); test split = ``y_test``."""
    y = torch.tensor(y_test)
    X = (torch.arange(len(y_test), dtype=torch.float32) - len(y_test) / 2)[:, None]
    return Dataset(name=name, X_train=X, y_train=y, X_val=X[:0], y_val=y[:0], X_test=X, y_test=y,
                   feature_names=("x0",), constraints=Constraints.unconstrained(1, -100, 100),
                   n_classes=n_classes, batch_size=4)


# ----------------------------------------------------------------------------- balanced factuals

@pytest.mark.parametrize("n", [10, 11, 13, 250])
def test_balanced_factuals_give_each_class_n_over_k(n):
    # 3 classes, very unbalanced: 90 / 8 / 2 rows
    ds = tiny_dataset([0] * 90 + [1] * 8 + [2] * 2, n_classes=3)
    grid = build_grid(ds, EvaluationConfig(n_runs=4, n_individuals=n, lambda_energy=(1.0,), test_time=True))
    for r in range(4):
        labels = grid.factual_label[grid.run == r]
        counts = torch.bincount(labels, minlength=3).tolist()
        assert all(n // 3 <= c <= n // 3 + 1 for c in counts) and sum(counts) == n, counts
        idx = grid.factual_index[grid.run == r]
        assert torch.equal(ds.y_test[idx], labels)
        if n // 3 + 1 <= 8:   # class 1 has 8 rows: without replacement while they last
            assert len(set(idx[labels == 1].tolist())) == counts[1]
    assert not torch.equal(grid.factual_index[grid.run == 0], grid.factual_index[grid.run == 1])
    assert bool((grid.target != grid.factual_label).all())


@pytest.mark.parametrize("n", [2, 40, 100, 160])
def test_no_repeated_factual_where_every_class_has_enough_rows(n):
    """80 rows of each class: any n <= 160 balanced factuals of a run are distinct rows."""
    ds = tiny_dataset([0, 1] * 80)
    grid = build_grid(ds, EvaluationConfig(n_runs=5, n_individuals=n, lambda_energy=(1.0, 2.0), test_time=True))
    for r in range(5):
        for lam in (0, 1):
            idx = grid.factual_index[(grid.run == r) & (grid.lambda_index == lam)]
            assert len(idx) == n and len(set(idx.tolist())) == n
    short = build_grid(ds, EvaluationConfig(n_runs=1, n_individuals=200, lambda_energy=(1.0,), test_time=True))
    assert len(set(short.factual_index.tolist())) < 200     # 100 per class of 80 rows: repeats


def test_all_factuals_take_every_row_of_the_named_split_once():
    ds = tiny_dataset([0] * 7 + [1] * 5)
    val = Dataset(**{**ds.__dict__, "X_val": ds.X_test[:6] + 100, "y_val": ds.y_test[:6] * 0 + 1})
    grid = build_grid(val, EvaluationConfig(n_runs=2, n_individuals=3, lambda_energy=(1.0,), factuals="all",
                                            split="validation"))
    assert grid.split == "validation" and torch.equal(grid.X, val.X_val)
    assert grid.factual_index.tolist() == list(range(6)) * 2 and grid.individual.tolist() == list(range(6)) * 2
    assert grid.target.tolist() == [0] * 12                 # the other class of label 1
    assert build_grid(ds, EvaluationConfig(n_runs=1, lambda_energy=(1.0,), split="test")).split == "test"
    assert build_grid(ds, EvaluationConfig(n_runs=1, lambda_energy=(1.0,))).split == "train"


def test_uniform_factuals_follow_the_rows():
    ds = tiny_dataset([0] * 90 + [1] * 10)
    grid = build_grid(ds, EvaluationConfig(n_runs=20, n_individuals=50, lambda_energy=(1.0,),
                                           test_time=True, factuals="uniform"))
    share = float(grid.factual_label.float().mean())
    assert 0.05 < share < 0.15      # about the 10% of rows of class 1, not 50%


def test_balanced_draw_is_identical_for_two_models_and_predicted_is_recorded():
    ds = tiny_dataset([0] * 30 + [1] * 10)          # x0 = -20 .. 19
    cfg = EvaluationConfig(n_runs=3, n_individuals=8, lambda_energy=(1.0,), test_time=True, maxiter=5,
                           n_ip_samples=5, n_energy_samples=5, mmd_samples=4, fgsm_eps=(), ig_rounds=0)
    a = linear([[0.0], [1.0]], [0.0, -0.5])         # predicts 1 iff x0 > 0.5
    b = linear([[0.0], [-1.0]], [0.0, -0.5])        # predicts 1 iff x0 < -0.5
    ev_a, _, _ = evaluate_model(a, ds, cfg)
    ev_b, _, _ = evaluate_model(b, ds, cfg)
    keys = ["run", "individual", "factual_index", "factual_label", "target"]
    pa_, pb_ = (e[e.metric == "validity"].reset_index(drop=True) for e in (ev_a, ev_b))
    pd.testing.assert_frame_equal(pa_[keys], pb_[keys])
    x = ds.X_test[torch.as_tensor(pa_["factual_index"].to_numpy().copy()), 0]
    assert pa_["predicted"].tolist() == (x > 0.5).long().tolist()
    assert pb_["predicted"].tolist() == (x < -0.5).long().tolist()
    counts = pa_.groupby("run")["factual_label"].sum().tolist()
    assert counts == [4, 4, 4]                        # 8 individuals, 2 classes: 4 + 4 per run


# ----------------------------------------------------------------------------- informative pairs

def test_pairs_exclude_exactly_the_individuals_whose_target_a_model_predicts():
    # two runs x three individuals, one lambda; target 1 everywhere
    rows = []
    ip_bl = {(0, 0): 10.0, (0, 1): 20.0, (0, 2): 30.0, (1, 0): 40.0, (1, 1): 50.0, (1, 2): 60.0}
    pred_bl = {(0, 0): 1}                     # BL already predicts the target for run 0 / ind 0
    pred_ct = {(1, 2): 1}                     # CT already predicts it for run 1 / ind 2
    for job, preds, scale in (("bl", pred_bl, 1.0), ("ct", pred_ct, 0.5)):
        for (run, ind), ip in ip_bl.items():
            rows.append({"source": 0, "job_id": job, "lambda_energy": 1.0, "run": run,
                         "individual": ind, "target": 1, "predicted": preds.get((run, ind), 0),
                         "validity": 1.0, "ip": ip * scale if (run, ind) != (0, 1) else 1.0,
                         "cost": 2.0})
    per_ce = pd.DataFrame(rows)
    pairs = pd.DataFrame([{"source": 0, "ct_job": "ct", "bl_source": 0, "bl_job": "bl",
                           "dataset": "tiny", "objective": "full", "setting": "—",
                           "constrained": False}])
    units, excluded = paired_ce_units(pairs, per_ce)
    assert excluded[["n_units", "n_excluded"]].values.tolist() == [[6, 2]]
    ip = units["ip"].sort_values("run")
    # run 0 keeps individuals 1, 2: CT (1 + 15) / 2, BL (1 + 30) / 2; run 1 keeps 0, 1
    assert ip["ct"].tolist() == [8.0, 22.5] and ip["bl"].tolist() == [15.5, 45.0]
    kept, _ = paired_ce_units(pairs, per_ce, exclude_predicted=False)
    assert kept["ip"].sort_values("run")["bl"].tolist() == [pytest.approx(41 / 3), 50.0]


# ----------------------------------------------------------------------------- one-hot groups

def _onehot_case(categorical: str, group_kind: str = "both", lr: float = 0.1):
    """Features: one-hot group (c0, c1, c2) + x3; logit1 - logit0 = 3 c2 - 1 (x3 unused).

    From the factual (1, 0, 0, 0.5) the target 1 needs c2 to win the group."""
    model = linear([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]], [0.5, -0.5])
    cons = Constraints(torch.full((4,), -2.0), torch.full((4,), 2.0), (group_kind,) * 3 + ("both",),
                       groups=((0, 1, 2),))
    cfg = GeneratorConfig(name="generic", lambda_cost=0.0, tau=0.75, lr=lr, maxiter=20,
                          categorical=categorical)
    x = torch.tensor([[1.0, 0.0, 0.0, 0.5]])
    return make_generator(cfg, cons).search(model, x, torch.tensor([1]))


def test_step_projection_flips_the_group_at_the_hand_computed_step():
    out = _onehot_case("step")
    # the model sees c2 = 0 until the state passes c0 = 1: each step adds 0.1 * 3 * (1 - sigmoid(-1))
    inc = 0.3 * (1 - 1 / (1 + math.exp(1)))
    k = math.floor(1 / inc) + 1
    assert k == 5 and int(out.steps) == k and bool(out.converged)
    assert out.counterfactual.tolist() == [[0.0, 0.0, 1.0, 0.5]]


def test_project_mode_moves_a_group_only_when_one_step_carries_it_past_the_current_category():
    # the reference's evaluation: the state itself is projected after every step. A step of
    # 0.1 * 3 * (1 - sigmoid(-1)) = 0.22 on c2 is undone every time: the search never converges.
    stuck = _onehot_case("project")
    assert stuck.counterfactual.tolist() == [[1.0, 0.0, 0.0, 0.5]] and not bool(stuck.converged)
    assert int(stuck.steps) == 20
    # with lr 2 one step adds 4.39 to c2 > 1: the group flips at step 1 and p = sigmoid(2) >= 0.75
    jump = _onehot_case("project", lr=2.0)
    assert jump.counterfactual.tolist() == [[0.0, 0.0, 1.0, 0.5]] and bool(jump.converged)
    assert int(jump.steps) == 1


def test_final_projection_returns_valid_onehot_and_rechecks_convergence():
    cont = _onehot_case("none")
    c2 = float(cont.counterfactual[0, 2])
    assert 0 < c2 < 1 and bool(cont.converged)      # continuous: stops at 3 c2 - 1 >= logit(0.75)
    assert 3 * c2 - 1 >= math.log(3) - 1e-6
    out = _onehot_case("final")
    # the projection keeps c0 (1 > c2): a valid one-hot vector, back at the factual's class
    assert out.counterfactual.tolist() == [[1.0, 0.0, 0.0, 0.5]] and not bool(out.converged)


def test_immutable_group_never_moves():
    out = _onehot_case("step", group_kind="none")
    assert out.counterfactual.tolist() == [[1.0, 0.0, 0.0, 0.5]] and not bool(out.converged)


def test_group_mutability_by_variable_name():
    cons = Constraints.unconstrained(4).__class__(torch.zeros(4), torch.ones(4), ("both",) * 4,
                                                  groups=((1, 2, 3),))
    names = ("age", "sex=A", "sex=B", "sex=C")
    assert cons.with_mutability({"sex": "none"}, names).mutability == ("both", "none", "none", "none")
    assert cons.with_mutability({"sex=B": "none"}, names).mutability == ("both", "none", "none", "none")
    with pytest.raises(ConfigError, match="categorical"):
        cons.with_mutability({"sex": "increase"}, names)
    with pytest.raises(ConfigError, match="no feature named"):
        cons.with_mutability({"gender": "none"}, names)


def test_real_adult_search_keeps_every_group_onehot(data_dir):
    from ctgrid.data import DataConfig, load_dataset
    from ctgrid.models import ModelConfig, build_model
    ds = load_dataset(DataConfig(name="adult"), data_dir)
    assert len(ds.constraints.groups) == 8
    model = build_model(ModelConfig(), ds.n_features, ds.n_classes,
                        generator=torch.Generator().manual_seed(0))
    x = ds.X_test[:200]
    target = 1 - model(x).argmax(1)
    for mode in ("project", "final", "step"):
        cf = make_generator(GeneratorConfig(categorical=mode, maxiter=20), ds.constraints).search(
            model, x, target).counterfactual
        for g in ds.constraints.groups:
            block = cf[:, list(g)]
            assert bool(((block == 0) | (block == 1)).all()) and bool((block.sum(1) == 1).all())


# ----------------------------------------------------------------------------- normalised steps

def test_normalized_steps_have_length_lr_along_the_allowed_gradient():
    # logit1 - logit0 = 30 x0 + 40 x1 (steep); tau unreachable in 3 steps from far away
    model = linear([[0.0, 0.0], [30.0, 40.0]], [0.0, 0.0])
    x = torch.tensor([[-10.0, -10.0]])
    free = Constraints.unconstrained(2)
    cfg = GeneratorConfig(name="generic", lambda_cost=0.0, lr=0.1, maxiter=3, tau=0.99,
                          step="normalized")
    out = make_generator(cfg, free).search(model, x, torch.tensor([1]))
    assert torch.allclose(out.counterfactual, torch.tensor([[-10 + 0.3 * 0.6, -10 + 0.3 * 0.8]]))
    frozen_x0 = Constraints(free.lower, free.upper, ("none", "both"))
    out = make_generator(cfg, frozen_x0).search(model, x, torch.tensor([1]))
    assert torch.allclose(out.counterfactual, torch.tensor([[-10.0, -10 + 0.3]]))
    sgd = make_generator(GeneratorConfig(name="generic", lambda_cost=0.0, lr=0.1, maxiter=1, tau=0.99),
                         free).search(model, x, torch.tensor([1]))
    assert torch.allclose(sgd.counterfactual, torch.tensor([[-7.0, -6.0]]))   # lr * grad: 3 and 4


# ----------------------------------------------------------------------------- adversarial label

@pytest.mark.parametrize("adv_label", ["true", "predicted"])
def test_adv_label_differs_from_truth_only_where_the_prediction_does(adv_label):
    y = torch.tensor([0, 1] * 10)
    X = torch.arange(20, dtype=torch.float32)[:, None] - 9.5   # x0 > 0 for rows 10..19
    model = linear([[0.0], [1.0]], [0.0, 0.0])                 # predicts 1 iff x0 > 0

    def generate(model, x, target, *, nascent_eps):
        n = len(x)
        return CounterfactualBatch(x, target, x.clone(), torch.ones(n, dtype=torch.bool),
                                   torch.zeros(n, dtype=torch.long), x.clone())
    gen = torch.Generator().manual_seed(0)
    ce = counterfactual_phase(model, X, y, ClassPools(y, 2), nce=20, n_classes=2, generate=generate,
                              eps=0.3, gen=gen, nonconverged="replace",
                              constraints=Constraints.unconstrained(1), adv_label=adv_label)
    x = ce.nascent[:, 0]                                 # nascent = factual here
    pred = (x > 0).long()
    truth = y[(x + 9.5).long()]
    expected = pred if adv_label == "predicted" else truth
    assert torch.equal(ce.label, expected)
    assert bool((pred != truth).any()) and bool((pred == truth).any())


def test_adv_label_config_and_job_identity():
    assert TrainingConfig(adv_label=True).adv_label == "true"           # YAML's bare `true`
    with pytest.raises(ConfigError, match="training.adv_label"):
        TrainingConfig(adv_label="model")
    base = JobConfig()
    assert JobConfig(training=TrainingConfig(adv_label="true")).job_id == base.job_id
    assert JobConfig(training=TrainingConfig(adv_label="predicted")).job_id != base.job_id
    vanilla = JobConfig(training=TrainingConfig(objective="vanilla"))
    assert JobConfig(training=TrainingConfig(objective="vanilla", adv_label="predicted")).job_id \
        == vanilla.job_id


# ----------------------------------------------------------------------------- redundancy, IG

def test_redundancy_and_sensitivity_rows():
    ds = tiny_dataset([0] * 20 + [1] * 20)
    two = Dataset(**{**ds.__dict__, "X_train": ds.X_train.repeat(1, 2), "X_test": ds.X_test.repeat(1, 2),
                     "X_val": ds.X_val.repeat(1, 2), "feature_names": ("x0", "x1"),
                     "constraints": Constraints(torch.full((2,), -100.0), torch.full((2,), 100.0),
                                                ("none", "both"))})
    model = linear([[0.0, 0.0], [0.0, 1.0]], [0.0, 0.25])   # only x1 matters; no factual on the boundary
    cfg = EvaluationConfig(n_runs=2, n_individuals=6, lambda_energy=(1.0,), test_time=True, maxiter=50,
                           tau=0.6, n_ip_samples=5, n_energy_samples=5, mmd_samples=4, fgsm_eps=(),
                           ig_rounds=7, ig_samples=30, ig_steps=8)
    ev, perf, _ = evaluate_model(model, two, cfg)
    red = ev[ev.metric == "redundancy"]["value"]
    valid = ev[ev.metric == "validity"]["value"].to_numpy() == 1
    # x0 is immutable, so never changed: resettable; x1 moved and is needed
    assert valid.any() and (red.to_numpy()[valid] == 0.5).all() and red[~valid].isna().all()
    ig = perf[perf.metric == "ig_sensitivity"]["value"]
    assert len(ig) == 7 and (ig == 0).all()                # no attribution on the immutable x0
    free = EvaluationConfig(**{**cfg.__dict__, "mutability": ()})
    _, perf_free, _ = evaluate_model(model, two, free)
    assert "ig_sensitivity" not in set(perf_free.metric)


def test_mutability_errors_name_the_key_they_come_from():
    from ctgrid.data import DataConfig
    from ctgrid.evaluation.evaluate import evaluation_constraints
    ds = tiny_dataset([0, 1] * 5)
    with pytest.raises(ConfigError, match=r"^evaluation\.mutability: no feature named 'age'"):
        evaluation_constraints(ds, EvaluationConfig(mutability={"age": "none"}))
    with pytest.raises(ConfigError, match=r"^evaluation\.mutability\['x0'\]: got 'frozen'"):
        EvaluationConfig(mutability={"x0": "frozen"})
    with pytest.raises(ConfigError, match=r"^data\.mutability\['x0'\]: got 'frozen'"):
        DataConfig(mutability=[["x0", "frozen"]])
    with pytest.raises(ConfigError, match=r"^data\.mutability: got \[\['x0'\]\]"):
        DataConfig(mutability=[["x0"]])
    assert EvaluationConfig(mutability=[]).mutability == ()       # an empty list lifts them all
