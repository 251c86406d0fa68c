"""Evaluation orchestration: paired design, frame schema, batched search, CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from ctgrid import cli
from ctgrid.data import DataConfig, load_dataset
from ctgrid.evaluation.config import EvaluationConfig
from ctgrid.evaluation.evaluate import (CE_METRICS, EVALUATION_COLUMNS, PERFORMANCE_COLUMNS,
                                        evaluate_model, evaluation_constraints)
from ctgrid.evaluation.grid import build_grid, search_config, search_grid
from ctgrid.generators import make_generator
from ctgrid.grid.job import JobConfig
from ctgrid.models import ModelConfig, build_model

SMALL = dict(n_runs=3, n_individuals=12, lambda_energy=(0.1, 5.0), maxiter=20,
             n_ip_samples=50, n_energy_samples=10, mmd_samples=20, fgsm_eps=(0.0, 0.1), pgd_eps=(0.1,),
             pgd_steps=5)


@pytest.fixture(scope="module")
def moons():
    return load_dataset(DataConfig(name="moons"))


def fit(ds, seed: int, steps: int = 150) -> torch.nn.Module:
    """A vanilla MLP 1x32, full-batch Adam; different seeds give different models."""
    model = build_model(ModelConfig(), ds.n_features, ds.n_classes,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(model(ds.X_train), ds.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models(moons):
    return fit(moons, 1), fit(moons, 2, steps=40)


@pytest.fixture(scope="module")
def frames(moons, models):
    cfg = EvaluationConfig(**SMALL)
    return [evaluate_model(m, moons, cfg) for m in models]


KEYS = ["run", "individual", "lambda_energy", "split", "factual_index", "factual_label", "target"]


def _pairs(ev: pd.DataFrame) -> pd.DataFrame:
    return ev[ev.metric == "validity"][KEYS].reset_index(drop=True)


def test_pairs_identical_across_models_redrawn_across_runs(moons, models, frames):
    (ev_a, _, _), (ev_b, _, _) = frames
    assert not torch.equal(models[0](moons.X_train[:5]), models[1](moons.X_train[:5]))
    pairs = _pairs(ev_a)
    pd.testing.assert_frame_equal(pairs, _pairs(ev_b))
    assert (pairs.target != pairs.factual_label).all()
    assert (pairs.factual_label.to_numpy() == moons.y_train.numpy()[pairs.factual_index.to_numpy()]).all()
    first = pairs[pairs.lambda_energy == 0.1]
    per_run = [tuple(g.factual_index) for _, g in first.groupby("run")]
    assert len(set(per_run)) == len(per_run)                      # redrawn per run
    assert all(len(set(ix)) == len(ix) for ix in per_run)          # without replacement
    for _, g in pairs.groupby("run"):                              # same pairs for every lambda
        by_lam = [tuple(zip(h.factual_index, h.target)) for _, h in g.groupby("lambda_energy")]
        assert by_lam[0] == by_lam[1]


def test_frame_schema_one_row_per_counterfactual_and_metric(frames):
    ev, perf, _ = frames[0]
    assert tuple(ev.columns) == EVALUATION_COLUMNS
    assert tuple(perf.columns) == PERFORMANCE_COLUMNS
    for col in ("run", "individual", "factual_index", "factual_label", "target"):
        assert ev[col].dtype == np.int64
    assert ev.lambda_energy.dtype == np.float64 and ev.value.dtype == np.float64
    assert set(ev.metric) == set(CE_METRICS)
    n_ce = SMALL["n_runs"] * SMALL["n_individuals"] * len(SMALL["lambda_energy"])
    assert len(ev) == n_ce * len(CE_METRICS)
    assert not ev.duplicated(["run", "individual", "lambda_energy", "metric"]).any()
    assert set(ev.split) == {"train"} and set(ev.generator) == {"ecco"}
    wide = ev.pivot_table(index=["run", "individual", "lambda_energy"], columns="metric", values="value")
    assert ((wide.cost >= 0) & (wide.ip > 0) & wide.steps.between(0, SMALL["maxiter"])).all()
    # IP* is one value per (run, lambda, target) group, attached to each of its rows
    stars = ev[ev.metric == "ip_star"].groupby(["run", "lambda_energy", "target"]).value
    assert (stars.nunique() == 1).all() and stars.first().nunique() > 1


def test_pvalue_rows_only_with_permutations(moons, models):
    cfg = EvaluationConfig(**{**SMALL, "n_runs": 1, "mmd_permutations": 9, "pgd_eps": ()})
    ev, perf, _ = evaluate_model(models[0], moons, cfg)
    p = ev[ev.metric == "ip_star_pvalue"].value
    assert len(p) == SMALL["n_individuals"] * 2 and p.between(0.1, 1).all()
    assert "pgd" not in set(perf.attack)


def test_strict_validity_uses_tau(moons):
    """A flat linear model, p(class 1) = sigmoid(x0): 20 steps of 0.1 carry many factuals
    across the boundary (valid) but not to p >= 0.95 (x0 >= 2.94). Strict validity is
    exactly 'softmax target probability >= tau' (the reference ignored tau, docs/deviations.md D4)."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-0.5, 0.0], [0.5, 0.0]]))
        model.bias.zero_()
    base = {**SMALL, "n_individuals": 40, "pgd_eps": (), "lambda_energy": (0.1,)}
    strict = {}
    for tau in (0.95, 0.55):
        ev, _, _ = evaluate_model(model, moons, EvaluationConfig(**base, tau=tau))
        wide = ev.pivot_table(index=["run", "individual"], columns="metric", values="value")
        x = moons.X_train[ev[ev.metric == "validity"].factual_index.to_numpy().copy()]
        assert (wide.validity_strict == wide.converged).all()
        strict[tau] = wide.validity_strict.mean()
        if tau == 0.95:
            assert ((wide.validity == 1) & (wide.validity_strict == 0)).mean() > 0.3
            assert strict[tau] == (x[:, 0].abs() >= 2.94).double().mean().item()  # only far factuals
    assert strict[0.55] > strict[0.95]


def test_performance_rows(moons, models, frames):
    _, perf, _ = frames[0]
    model = models[0]
    with torch.no_grad():
        acc = (model(moons.X_test).argmax(1) == moons.y_test).double().mean().item()
    got = {(r.metric, r.attack, r.eps): r.value for r in perf.itertuples()}
    assert set(got) == {("accuracy", "none", 0.0), ("macro_f1", "none", 0.0),
                        ("robust_accuracy", "fgsm", 0.0), ("robust_accuracy", "fgsm", 0.1),
                        ("robust_accuracy", "pgd", 0.1)}
    assert got["accuracy", "none", 0.0] == pytest.approx(acc)
    assert got["robust_accuracy", "fgsm", 0.0] == pytest.approx(acc)
    assert got["robust_accuracy", "fgsm", 0.1] < acc
    assert got["robust_accuracy", "pgd", 0.1] <= got["robust_accuracy", "fgsm", 0.1] + 0.02


def test_batched_lambda_search_equals_per_lambda_searches(moons, models):
    cfg = EvaluationConfig(**{**SMALL, "lambda_energy": (0.0, 1.0, 10.0)})
    grid = build_grid(moons, cfg)
    gen = search_config(cfg)
    batched = search_grid(models[0], grid, gen, moons.constraints, chunk_rows=50)  # several chunks
    for li, lam in enumerate(grid.lambdas):
        rows = (grid.lambda_index == li).nonzero().squeeze(1)
        engine = make_generator(gen, moons.constraints, lambda_energy=lam)
        alone = engine.search(models[0], grid.x[rows], grid.target[rows])
        torch.testing.assert_close(batched.counterfactual[rows], alone.counterfactual, atol=1e-6, rtol=0)
        assert torch.equal(batched.steps[rows], alone.steps)
        assert torch.equal(batched.converged[rows], alone.converged)
    # the energy weight matters: lambda 10 moves further than lambda 0
    assert not torch.allclose(batched.counterfactual[grid.lambda_index == 0],
                              batched.counterfactual[grid.lambda_index == 2])


def test_deterministic(moons, models, frames):
    again = evaluate_model(models[0], moons, EvaluationConfig(**SMALL))
    pd.testing.assert_frame_equal(again[0], frames[0][0])
    pd.testing.assert_frame_equal(again[1], frames[0][1])


def test_mutability_override(moons, models):
    cfg = EvaluationConfig(**{**SMALL, "n_runs": 1, "mutability": {"0": "none"}})
    assert evaluation_constraints(moons, cfg).mutability == ("none", "both")
    ev, _, _ = evaluate_model(models[0], moons, cfg)
    assert (ev[ev.metric == "share_unchanged"].value >= 0.5).all()
    free = EvaluationConfig(**{**SMALL, "mutability": {}})
    constrained = moons.constraints.with_mutability({1: "increase"}, moons.feature_names)
    assert evaluation_constraints(moons, free, constrained).mutability == ("both", "both")
    assert evaluation_constraints(moons, EvaluationConfig(), constrained) is constrained


def test_generic_generator_collapses_lambda_grid(moons, models):
    ev, _, _ = evaluate_model(models[0], moons, EvaluationConfig(**{**SMALL, "generator": "generic",
                                                                  "n_runs": 1, "pgd_eps": ()}))
    assert set(ev.lambda_energy) == {0.0} and set(ev.generator) == {"generic"}
    assert (ev.metric == "validity").sum() == SMALL["n_individuals"]


# -- command line ------------------------------------------------------------------------

def _model_dir(path, model, objective="vanilla"):
    path.mkdir()
    job = JobConfig.from_dict({"data": {"name": "moons"}, "training": {"objective": objective}})
    (path / "config.yaml").write_text(yaml.safe_dump(job.to_dict()))
    torch.save({"state_dict": model.state_dict(), "job_id": job.job_id}, path / "model.pt")
    return path


def _main(monkeypatch, argv):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ("evaluate",))   # other subcommands are not under test
    return cli.main(argv)


FLAGS = ["--n-runs", "2", "--n-individuals", "8", "--lambda-energy", "0.5,5", "--maxiter", "10",
         "--fgsm-eps", "0.05", "--pgd-eps", "", "--threads", "1"]


def test_cli_evaluates_pair_on_same_factuals(tmp_path, monkeypatch, models, capsys):
    a = _model_dir(tmp_path / "bl", models[0])
    b = _model_dir(tmp_path / "ct", models[1], "full")
    assert _main(monkeypatch, ["evaluate", str(a), str(b), *FLAGS]) == 0
    ev = [pd.read_parquet(d / "evaluation.parquet") for d in (a, b)]
    perf = pd.read_parquet(a / "performance.parquet")
    assert len(ev[0]) == 2 * 8 * 2 * len(CE_METRICS)
    pd.testing.assert_frame_equal(_pairs(ev[0]), _pairs(ev[1]))
    assert set(zip(perf.attack, perf.eps)) == {("none", 0.0), ("fgsm", 0.05)}
    out = tmp_path / "out"
    assert _main(monkeypatch, ["evaluate", str(a), str(b), "--out", str(out), *FLAGS]) == 0
    assert (out / "bl" / "evaluation.parquet").exists() and (out / "ct" / "performance.parquet").exists()


@pytest.mark.parametrize("extra, bad", [
    (["--tau", "1.5"], None),
    (["--lambda-energy", "0.1,x"], None),
    (["--threads", "0"], None),
    ([], "missing"),
    ([], "badkey"),
    ([], "badmodel"),
])
def test_cli_bad_input_exit_2_nothing_written(tmp_path, monkeypatch, models, capsys, extra, bad):
    good = _model_dir(tmp_path / "good", models[0])
    dirs = [str(good)]
    if bad == "missing":
        dirs.append(str(tmp_path / "nowhere"))
    elif bad == "badkey":
        other = _model_dir(tmp_path / "other", models[1])
        (other / "config.yaml").write_text("data: {name: moons, n_trian: 100}\n")
        dirs.append(str(other))
    elif bad == "badmodel":
        other = _model_dir(tmp_path / "other", models[1])
        torch.save({"state_dict": {"0.weight": torch.zeros(3, 3)}}, other / "model.pt")
        dirs.append(str(other))
    assert _main(monkeypatch, ["evaluate", *dirs, *FLAGS, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ctgrid: error:")
    assert not list(tmp_path.rglob("*.parquet"))
