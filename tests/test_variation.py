"""Retraining variations for the consistency experiments: leave-one-out (LOO) drops exactly
one seeded training row and keeps the initialisation; random seed (RS) changes only the seed."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ctgrid.data import DataConfig, load_dataset
from ctgrid.errors import ConfigError
from ctgrid.generators import GeneratorConfig
from ctgrid.grid import JobConfig
from ctgrid.models import ModelConfig
from ctgrid.training import TrainingConfig, train


@pytest.fixture(scope="module")
def moons():
    return load_dataset(DataConfig(name="moons", n_train=120, n_val=20, n_test=20))


def test_leave_one_out_drops_exactly_one_seeded_row(moons):
    n = len(moons.y_train)
    rows = set()
    for i in range(5):
        loo, row = moons.leave_one_out(i)
        assert len(loo.y_train) == n - 1 and 0 <= row < n
        keep = [r for r in range(n) if r != row]
        assert torch.equal(loo.X_train, moons.X_train[keep]) and torch.equal(loo.y_train, moons.y_train[keep])
        assert torch.equal(loo.X_test, moons.X_test) and loo.constraints is moons.constraints
        assert moons.leave_one_out(i)[1] == row                      # deterministic
        rows.add(row)
    assert len(rows) == 5                                            # variants drop distinct rows
    with pytest.raises(ConfigError, match="training.leave_out: got 120"):
        moons.leave_one_out(n)


def test_a_loo_job_keeps_the_initialisation_and_trains_on_the_rest(moons):
    base = JobConfig(training=TrainingConfig(objective="full", nepochs=2, nce=20, batch_size=30))
    loo = replace(base, training=replace(base.training, leave_out=7))
    assert loo.seed == base.seed and loo.job_id != base.job_id       # same initialisation stream
    reduced, _ = moons.leave_one_out(7)
    gen = GeneratorConfig(maxiter=5)
    got = train(moons, ModelConfig(), gen, replace(loo.training, seed=loo.seed))
    want = train(reduced, ModelConfig(), gen, replace(base.training, seed=base.seed))
    for k, v in got.model.state_dict().items():
        assert torch.equal(v, want.model.state_dict()[k]), k


def test_random_seed_variants_differ_only_in_the_seed():
    a = JobConfig(training=TrainingConfig(seed=0))
    b = JobConfig(training=TrainingConfig(seed=1))
    da, db = a.canonical().to_dict(), b.canonical().to_dict()
    diff = {(g, k) for g in da for k in da[g] if da[g][k] != db[g][k]}
    assert diff == {("training", "seed")} and a.seed != b.seed


def test_a_leave_out_beyond_the_training_rows_is_exit_2_before_anything_is_written(tmp_path, capsys):
    from ctgrid.cli import main
    grid = tmp_path / "g.yaml"
    grid.write_text("name: loo\ndata: {name: moons, n_train: 50}\ntraining: {objective: vanilla, leave_out: 50}\n")
    assert main(["run", str(grid), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.leave_out: got 50; allowed: -1 (none) or 0..49" in err[0]
    assert not (tmp_path / "res").exists()
