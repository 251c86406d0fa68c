"""Any torch classifier (issue 22): a user's ``nn.Module``, a factory, or ``model.kind: module``
in a grid — trained with the CT objective, checkpointed, resumed bit for bit (dropout included),
evaluated; alone, never packed; bad modules are one clear error."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from ctgrid.cli import main
from ctgrid.data import DataConfig, load_dataset
from ctgrid.errors import ConfigError
from ctgrid.evaluation import EvaluationConfig, evaluate_model
from ctgrid.generators import GeneratorConfig
from ctgrid.models import ModelConfig
from ctgrid.training import TrainingConfig, train
from ctgrid.training.loop import PackMember, train_pack

from usermodels import ResidualMLP, residual

REPO = Path(__file__).resolve().parents[1]
GEN = GeneratorConfig(maxiter=10)
CT = TrainingConfig(objective="full", nepochs=6, nce=40, burnin=0.0, seed=3)


@pytest.fixture(scope="module")
def moons():
    return load_dataset(DataConfig(name="moons", n_train=240, n_val=40, n_test=80))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ct_on_a_user_module_trains_checkpoints_resumes_bit_identically_and_evaluates(moons, tmp_path):
    whole = train(moons, residual, GEN, CT, checkpoint_path=tmp_path / "whole.pt")
    assert whole.completed and len(whole.history) == 6
    assert whole.history["converged"].notna().all() and whole.history["loss"].notna().all()
    epochs: list[int] = []
    part = train(moons, residual, GEN, CT, checkpoint_path=tmp_path / "split.pt",
                 stop=lambda: len(epochs.append(1) or epochs) >= 2)
    assert not part.completed and part.epochs_done == 2
    resumed = train(moons, residual, GEN, CT, checkpoint_path=tmp_path / "split.pt")
    assert _same(whole.model, resumed.model)
    cols = [c for c in whole.history if not c.startswith("t_")]
    assert whole.history[cols].equals(resumed.history[cols])
    first = train(moons, residual, GEN, TrainingConfig(objective="vanilla", nepochs=1, seed=3))
    assert not _same(first.model, whole.model)          # CT moved the weights
    ev, perf, _ = evaluate_model(whole.model, moons, EvaluationConfig(n_runs=2, n_individuals=10))
    assert set(ev["metric"]) >= {"validity", "ip", "cost"} and perf["value"].notna().all()


def test_a_module_instance_is_copied_and_a_factory_is_seeded(moons, caplog):
    net = ResidualMLP(2, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="ctgrid"):
        out = train(moons, net, GEN, TrainingConfig(objective="vanilla", nepochs=2))
    assert out.model is not net and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert sum("trains alone" in r.getMessage() for r in caplog.records) == 1
    a = train(moons, residual, GEN, TrainingConfig(objective="vanilla", nepochs=1, seed=1))
    b = train(moons, residual, GEN, TrainingConfig(objective="vanilla", nepochs=1, seed=1))
    c = train(moons, residual, GEN, TrainingConfig(objective="vanilla", nepochs=1, seed=2))
    assert _same(a.model, b.model) and not _same(a.model, c.model)
    cfg = train(moons, ModelConfig(kind="module", factory="usermodels:residual"), GEN,
                TrainingConfig(objective="vanilla", nepochs=1, seed=1))
    assert _same(cfg.model, a.model)                    # the same factory by name: the same model


def test_bad_user_models_are_one_clear_error(moons):
    bad = [(lambda d, k: nn.Linear(d, k + 1), "expected logits"),
           (lambda d, k: "not a module", "not a torch nn.Module"),
           (nn.Sequential(nn.Linear(5, 2)), "fails on a batch"),
           (ModelConfig(kind="module", factory="usermodels:nothing"), "cannot import")]
    for model, needle in bad:
        with pytest.raises(ConfigError, match=needle):
            train(moons, model, GEN, TrainingConfig(objective="vanilla", nepochs=1))
    with pytest.raises(ConfigError, match="model.factory"):
        ModelConfig(kind="module")
    with pytest.raises(ConfigError, match="model.factory"):
        ModelConfig(factory="usermodels:residual")
    members = [PackMember(residual, GEN, TrainingConfig(objective="vanilla", nepochs=1, seed=s)) for s in (0, 1)]
    with pytest.raises(ConfigError, match="alone"):
        train_pack(moons, members)


GRID = textwrap.dedent("""\
    name: custom
    data: {name: moons, n_train: 200, n_val: 20, n_test: 60}
    model: {kind: module, factory: "usermodels:residual"}
    training: {objective: [vanilla, full], nepochs: 2, nce: 20, seed: [0, 1]}
    evaluation: {n_runs: 1, n_individuals: 6, lambda_energy: [1.0], ig_rounds: 2, ig_samples: 20}
    """)


def test_a_grid_of_a_user_factory_runs_each_job_alone_and_evaluates(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    assert main(["run", str(grid), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    assert "4 pack(s)" in capsys.readouterr().out
    assert main(["run", str(grid), "--results", str(tmp_path / "r")]) == 0
    jobs = sorted((tmp_path / "r" / "custom" / "jobs").iterdir())
    assert len(jobs) == 4
    for job in jobs:
        log = (job / "log.txt").read_text()
        assert log.count("it trains alone") == 1 and (job / "evaluation.parquet").exists()
    assert main(["evaluate", str(jobs[0]), "--out", str(tmp_path / "ev")]) == 0   # model dir reads back
    bad = grid.with_name("bad.yaml")
    bad.write_text(GRID.replace("usermodels:residual", "usermodels:wrong_shape"))
    capsys.readouterr()
    assert main(["run", str(bad), "--results", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected logits (2, 2)" in err[0] and not (tmp_path / "r2").exists()


def test_the_example_runs_and_prints_the_paired_key_results():
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "own_data_and_model.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "key results" in out and "one CT counterfactual" in out
    for quantity in ("ip ", "ip_star", "cost", "validity", "accuracy"):
        assert quantity in out, quantity
