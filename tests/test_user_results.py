"""What a user of their own data needs from the results (issue 22): the three evaluation
results as DataFrames (the saved points' Parquet types unchanged), counterfactuals in the
data's units and categories, the paired BL/CT evaluation in the API, paired CT − baseline
columns from ``load_results``, and a hint when no test-time search converges."""
from __future__ import annotations

import textwrap
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import ctgrid
from ctgrid.cli import main
from ctgrid.data import DataConfig, load_dataset
from ctgrid.evaluation import EvaluationConfig, evaluate_model, evaluate_pair, original_units
from ctgrid.models import ModelConfig, build_model

from test_table import HAND, HAND_DATA

SMALL = {"n_runs": 2, "n_individuals": 10, "lambda_energy": (0.5, 5.0), "ig_rounds": 2, "ig_samples": 20}


@pytest.fixture(scope="module")
def moons():
    return load_dataset(DataConfig(name="moons", n_train=200, n_val=20, n_test=60))


def _constant(d: int, cls: int) -> nn.Module:
    """A linear model that predicts class ``cls`` everywhere (zero weights, one bias)."""
    model = nn.Sequential(nn.Linear(d, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.0, 0.0] if cls == 0 else [0.0, 1.0]))
    return model.eval()


def test_the_three_results_are_data_frames_and_the_points_keep_their_parquet_types(moons, tmp_path):
    model = build_model(ModelConfig(), 2, 2).eval()
    ev = evaluate_model(model, moons, EvaluationConfig(save_counterfactuals=True, **SMALL))
    assert all(isinstance(part, pd.DataFrame) for part in ev)
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndata: {name: moons, n_train: 100, n_val: 10, n_test: 40}\n"
                    "training: {objective: vanilla, nepochs: 1}\n"
                    "evaluation: {save_counterfactuals: true, n_runs: 1, n_individuals: 4, lambda_energy: [1.0]}\n")
    assert main(["run", str(grid), "--results", str(tmp_path / "r")]) == 0
    path = next((tmp_path / "r" / "g" / "jobs").iterdir()) / "counterfactuals.parquet"
    schema = pq.read_schema(path)
    assert schema.field("split").type == pa.string() and schema.field("valid").type == pa.bool_()
    assert schema.field("factual").type == pa.list_(pa.float32(), 2)
    assert schema.field("counterfactual").type == pa.list_(pa.float32(), 2)
    assert b"pandas" not in (schema.metadata or {})
    assert len(pq.read_table(path).to_pandas()) == 4                  # any reader gets it back


def test_counterfactuals_in_the_files_units_and_categories(tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text(HAND)
    data = load_dataset(DataConfig(path=str(path), **HAND_DATA))
    model = build_model(ModelConfig(), data.n_features, 2).eval()
    ev = evaluate_model(model, data, EvaluationConfig(save_counterfactuals=True, test_time=True, **SMALL))
    out = original_units(ev.counterfactuals, data)
    raw = pd.read_csv(path).iloc[data.meta["index"]["test"]].reset_index(drop=True)
    rows = raw.iloc[out["factual_index"].to_numpy()]
    assert np.allclose(out["factual.age"], rows["age"], atol=1e-4)          # years, as in the file
    assert out["factual.colour"].tolist() == rows["colour"].tolist()          # categories, as in the file
    assert set(out["counterfactual.colour"]) <= {"red", "green", "blue"}
    moved = out["counterfactual.age"].sub(out["factual.age"]).abs() > 1e-3
    assert (out["changed"].str.contains("age") == moved).all()


def test_a_model_paired_with_itself_differs_by_nothing(moons):
    model = build_model(ModelConfig(), 2, 2).eval()
    summary = evaluate_pair(model, model, moons, EvaluationConfig(**SMALL)).summary().set_index("quantity")
    assert (summary["difference"].abs() < 1e-12).all()
    assert (summary.loc[["cost", "ip"], "reduction_pct"].abs() < 1e-9).all()


def test_the_pair_leaves_out_individuals_a_model_already_predicts(moons):
    """Models that predict class 1 everywhere already 'explain' every individual whose target
    is 1: exactly those leave the comparison (about half: targets are the other class)."""
    pair = evaluate_pair(_constant(2, 1), _constant(2, 1), moons, EvaluationConfig(**SMALL))
    both = pair.baseline.evaluation[pair.baseline.evaluation.metric == "cost"]
    share = (both.drop_duplicates(["run", "individual"])["target"] == 1).mean()
    assert pair.excluded_share == pytest.approx(share) and 0.3 < share < 0.7
    assert (pair.informative()["target"] == 0).all()


def test_load_results_pairs_each_ct_job_with_its_baseline(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(textwrap.dedent("""\
        name: g
        data: {name: moons, n_train: 150, n_val: 10, n_test: 40}
        generator: {maxiter: 10}
        training: {objective: [vanilla, full], nepochs: 2, nce: 30}
        evaluation: {n_runs: 2, n_individuals: 8, lambda_energy: [1.0], ig_rounds: 2, ig_samples: 20}
        """))
    assert main(["run", str(grid), "--results", str(tmp_path / "r")]) == 0
    root = tmp_path / "r" / "g"
    paired = ctgrid.load_results(root, paired=True)
    jobs = ctgrid.load_results(root).set_index("job_id")
    assert len(paired) == 1
    row = paired.iloc[0]
    ct, bl = row["job_id"], row["baseline_job_id"]
    assert jobs.loc[ct, "training.objective"] == "full" and jobs.loc[bl, "training.objective"] == "vanilla"
    assert row["accuracy_diff"] == pytest.approx(jobs.loc[ct, "accuracy"] - jobs.loc[bl, "accuracy"])
    ce = ctgrid.load_results(root, level="counterfactual")
    keys = ["run", "individual", "lambda_energy"]
    m = ce[ce.job_id == ct].merge(ce[ce.job_id == bl], on=keys, suffixes=("_ct", "_bl"))
    keep = (m["predicted_ct"] != m["target_ct"]) & (m["predicted_bl"] != m["target_bl"])
    assert row["n_excluded"] == int((~keep).sum())
    assert row["cost"] == pytest.approx(m.loc[keep, "cost_ct"].mean())
    assert row["cost_diff"] == pytest.approx(m.loc[keep, "cost_ct"].mean() - m.loc[keep, "cost_bl"].mean())


def test_a_hint_when_no_test_time_search_converges(moons, tmp_path, capsys):
    model = build_model(ModelConfig(), 2, 2).eval()
    with pytest.warns(RuntimeWarning, match="no counterfactual .* reached tau"):
        evaluate_model(model, moons, EvaluationConfig(**{**SMALL, "maxiter": 1, "tau": 0.99}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        evaluate_model(_constant(2, 0), moons, EvaluationConfig(**{**SMALL, "tau": 0.5, "lr": 5.0,
                                                                    "step": "normalized", "maxiter": 200}))
    grid = tmp_path / "g.yaml"    # ctgrid run says it once, after the summary line
    grid.write_text("name: g\ndata: {name: moons, n_train: 100, n_val: 10, n_test: 40}\n"
                    "training: {objective: vanilla, nepochs: 1}\n"
                    "evaluation: {maxiter: 1, tau: 0.99, n_runs: 1, n_individuals: 4, lambda_energy: [1.0]}\n")
    capsys.readouterr()
    assert main(["run", str(grid), "--results", str(tmp_path / "r")]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ctgrid: note:")]
    assert len(notes) == 1 and "reached tau 0.99 within maxiter 1" in notes[0]
