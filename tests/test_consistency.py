"""Consistency under retraining end to end: saved counterfactual points, the invalidation
rate of `ctgrid aggregate` against a hand count (retrained models replaced by constant
classifiers whose answer is known), and the shipped `consistency` grid under real MPI."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from ctgrid import _atomic
from ctgrid.aggregate.consistency import FACTUAL, consistency_records, iv_table, r_squared
from ctgrid.aggregate.contrasts import contrast_table
from ctgrid.aggregate.load import Results
from ctgrid.cli import main
from ctgrid.data import DataConfig, load_dataset
from ctgrid.evaluation import EvaluationConfig, evaluate_model
from ctgrid.evaluation.evaluate import POINT_COLUMNS
from ctgrid.grid import load_grid
from ctgrid.models import ModelConfig, build_model

from test_mpi import HAVE_MPI, MPIEXEC
from test_scheduler import ENV

REPO = Path(__file__).resolve().parents[1]
#: 2 generators x {plain, +sns, +ctrl}; 50 balanced factuals of a 40-row test split (20 per
#: class): repeated factuals, each to be counted once
EVAL = ("{enabled: true, save_counterfactuals: true, generator: [generic, ecco], sns_radius: [0.0, 0.2], "
        "sns_control: [false, true], sns_steps: 10, lambda_energy: [1.0], tau: 0.5, maxiter: 20, n_runs: 1, "
        "n_individuals: 50, n_ip_samples: 20, n_energy_samples: 10, mmd_samples: 10, test_time: true}")
GRID = textwrap.dedent(f"""\
    name: tinycons
    data: {{name: moons, n_train: 120, n_val: 20, n_test: 40}}
    generator: {{name: ecco, maxiter: 10, tau: 0.5}}
    training: {{objective: [full, vanilla], nepochs: 3, nce: 40, batch_size: 30}}
    evaluation: {{enabled: false}}
    subgrids:
      - evaluation: {EVAL}
      - training: {{init_seed: {{range: [1, 4]}}}}
      - training: {{leave_out: {{range: [0, 2]}}}}
    """)


def test_saved_points_are_the_evaluated_counterfactuals():
    moons = load_dataset(DataConfig(name="moons", n_train=120, n_val=20, n_test=40))
    torch.manual_seed(0)
    model = build_model(ModelConfig(), moons.n_features, moons.n_classes).eval()
    cfg = EvaluationConfig(save_counterfactuals=True, lambda_energy=(0.5, 5.0), n_runs=2, n_individuals=6,
                           maxiter=10, n_ip_samples=20, n_energy_samples=10, mmd_samples=10, test_time=True)
    ev, _, points = evaluate_model(model, moons, cfg)
    assert points is not None and list(points.columns) == list(POINT_COLUMNS)
    pts = points
    assert len(pts) == 2 * 6 * 2
    validity = ev[ev.metric == "validity"].reset_index(drop=True)
    keys = ["run", "individual", "factual_index", "target", "lambda_energy"]
    pd.testing.assert_frame_equal(pts[keys], validity[keys], check_dtype=False)
    assert (pts["valid"].to_numpy() == validity["value"].to_numpy().astype(bool)).all()
    x = torch.tensor(np.stack(pts["factual"].to_numpy()))
    x_cf = torch.tensor(np.stack(pts["counterfactual"].to_numpy()))
    assert torch.equal(x, moons.X_test[torch.tensor(pts["factual_index"].to_numpy())])
    with torch.no_grad():  # the stored float32 points reproduce the stored validity exactly
        assert (model(x_cf).argmax(1).numpy() == pts["target"].to_numpy()).tolist() == pts["valid"].tolist()
    cost = ev[ev.metric == "cost"]["value"].to_numpy()
    assert np.allclose((x_cf - x).abs().sum(1).double().numpy(), cost)
    assert evaluate_model(model, moons, EvaluationConfig(**{**cfg.__dict__, "save_counterfactuals": False}))[2] is None


def _constant(model_pt: Path, cls: int) -> None:
    """Make a stored MLP predict ``cls`` everywhere: zero weights, a bias on one output."""
    blob = torch.load(model_pt, weights_only=True)
    state = {k: torch.zeros_like(v) for k, v in blob["state_dict"].items()}
    last = sorted(k for k in state if k.endswith(".bias"))[-1]
    state[last][cls] = 1.0
    blob["state_dict"] = state
    done = model_pt.parent / "done.json"   # a deliberate edit: recorded, so not taken for damage
    record = json.loads(done.read_text())
    record["files"]["model.pt"] = _atomic.save_torch(model_pt, blob).record()
    done.write_text(json.dumps(record))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cons")
    grid = root / "tinycons.yaml"
    grid.write_text(GRID)
    assert main(["run", str(grid), "--results", str(root)]) == 0
    return root / "tinycons"


def test_invalidation_rate_equals_a_hand_count(tiny):
    results = Results.load([tiny])
    jobs = results.jobs
    # retrained models of the CT base: RS init seeds 1, 2, 3 predict 0, 1, 1 everywhere
    rs = jobs[(jobs["training.objective"] == "full") & (jobs["training.init_seed"] > 0)]
    rs = rs.sort_values("training.init_seed")
    assert rs["training.init_seed"].tolist() == [1, 2, 3] and set(rs["training.seed"]) == {0}
    for (_, row), cls in zip(rs.iterrows(), (0, 1, 1)):
        _constant(results.model_path(row.source, row.job_id), cls)
    records = consistency_records(Results.load([tiny]))
    assert set(records["variation"]) == {"RS", "LOO"}       # no base job counts as a retrained model
    ct = records[(records["objective"] == "full") & (records["variation"] == "RS") & records["informative"]]
    assert set(ct["n_models"]) == {3}
    assert set(ct["method"]) == {f"{g}{t}" for g in ("generic", "ecco") for t in ("", "+sns", "+ctrl")}
    valid = ct[ct["valid"]]
    expected = np.where(valid["target"] == 1, 1 / 3, 2 / 3)          # models disagreeing with the target
    assert np.allclose(valid["iv"].to_numpy(), expected)
    assert ct[~ct["valid"]]["iv"].isna().all() and (ct[~ct["valid"]]["fail"] == 1).all()
    # LOO: two models, the base seed; IV by an explicit forward pass of each model
    loo = records[(records["objective"] == "vanilla") & (records["variation"] == "LOO")
                  & (records["method"] == "generic")]
    base_job = loo["base_job"].iloc[0]
    pts = pq.read_table(results.model_path(0, base_job).parent / "counterfactuals.parquet").to_pandas()
    assert len(pts) == 50 and len(loo) == len(pts.drop_duplicates(FACTUAL)) < 50   # each factual once
    pts = pts.drop_duplicates(FACTUAL)
    assert (loo["informative"].to_numpy() == (pts["predicted"] != pts["target"]).to_numpy()).all()
    x_cf = torch.tensor(np.stack(pts["counterfactual"].to_numpy()))
    others = jobs[(jobs["training.objective"] == "vanilla") & (jobs["training.leave_out"] >= 0)]
    assert len(others) == 2
    wrong = np.zeros(len(pts))
    for _, row in others.iterrows():
        state = torch.load(results.model_path(row.source, row.job_id), weights_only=True)["state_dict"]
        h = torch.relu(x_cf @ state["0.weight"].T + state["0.bias"])
        wrong += ((h @ state["2.weight"].T + state["2.bias"]).argmax(1).numpy() != pts["target"].to_numpy())
    ok = pts["valid"].to_numpy()
    assert np.allclose(loo["iv"].to_numpy()[ok], wrong[ok] / 2)
    # tables: the mean IV of a row is the mean of its valid informative counterfactuals' IV (one base model)
    table = iv_table(records, n_boot=50, confidence=0.9)
    row = table.data[(table.data["objective"] == "full") & (table.data["variation"] == "RS")
                     & (table.data["method"] == "generic")].iloc[0]
    gen = valid[valid["method"] == "generic"]
    assert row["iv_mean"] == pytest.approx(gen["iv"].mean()) and row["n_bases"] == 1
    assert row["validity"] == pytest.approx(ct[ct["method"] == "generic"]["valid"].mean())
    assert row["n_valid"] == len(gen) and row["n_models"] == "3"
    if len(gen) > 1:   # how many are valid depends on the tiny models' weights
        assert row["iv_lo"] <= row["iv_mean"] <= row["iv_hi"]
    else:              # no interval over a single counterfactual
        assert np.isnan(row["iv_lo"]) and np.isnan(row["iv_hi"])
    contrasts = contrast_table(records, n_boot=50, confidence=0.9).data
    assert {"full − vanilla", "+sns − generic", "+ctrl − generic", "+sns − +ctrl (generic)",
            "+sns − ecco"} <= set(contrasts["comparison"])
    # CT − BL: per factual, over the factuals neither base model predicts as the target
    row = contrasts[(contrasts["comparison"] == "full − vanilla") & (contrasts["within"] == "generic")
                    & (contrasts["variation"] == "RS")].iloc[0]
    rs_generic = records[(records["method"] == "generic") & (records["variation"] == "RS")]
    full = rs_generic[rs_generic["objective"] == "full"]
    van = rs_generic[rs_generic["objective"] == "vanilla"]
    common = full.merge(van, on=FACTUAL, suffixes=("_ct", "_bl"))
    common = common[common["informative_ct"] & common["informative_bl"]]
    both = common[common["valid_ct"] & common["valid_bl"]]
    assert row["n_common"] == len(common) and row["n_both_valid"] == len(both) > 0
    assert row["d_iv"] == pytest.approx((both["iv_ct"] - both["iv_bl"]).mean())
    assert row["d_fail"] == pytest.approx((common["fail_ct"] - common["fail_bl"]).mean())
    # the control moved every counterfactual as far as SNS did (same model, same factuals)
    rs_full = records[(records["variation"] == "RS") & (records["objective"] == "full")]
    sns, ctrl, plain = (rs_full[rs_full["method"] == m] for m in ("generic+sns", "generic+ctrl", "generic"))
    assert len(sns) == len(ctrl) == len(plain) and (plain["moved"] == 0).all()
    both = sns.merge(ctrl, on=FACTUAL, suffixes=("_sns", "_ctrl"))
    assert (both["moved_sns"] <= 0.2 + 1e-5).all() and (both["moved_sns"] > 0).any()
    # equal length: the control moves as far as SNS (the projection onto the domain can only shorten it)
    assert (both["moved_ctrl"] <= both["moved_sns"] + 1e-5).all()
    # most are exactly as long (how many the domain shortens depends on the trained weights)
    assert np.isclose(both["moved_ctrl"], both["moved_sns"], atol=1e-5).mean() > 0.8


def test_base_jobs_of_one_model_share_their_weights(tiny):
    """The four test-time methods of a base model are four jobs; they train the same model
    (the training seed ignores the evaluation), so their IVs describe one model."""
    results = Results.load([tiny])
    jobs = results.jobs
    base = jobs[(jobs["evaluation.enabled"]) & (jobs["training.objective"] == "full")]
    assert len(base) == 6
    states = [torch.load(results.model_path(r.source, r.job_id), weights_only=True)["state_dict"]
              for _, r in base.iterrows()]
    assert all(torch.equal(s[k], states[0][k]) for s in states[1:] for k in s)


def test_r_squared_of_a_line_and_of_noise():
    x = np.arange(10.0)
    assert r_squared(x, 2 * x + 1) == pytest.approx(1.0)
    assert np.isnan(r_squared(x, np.zeros(10)))       # constant IV: no regression
    assert r_squared(np.array([0.0, 1, 2, 3]), np.array([1.0, 0, 0, 1])) == pytest.approx(0.0)


def _small_consistency_grid(path: Path) -> Path:
    """The shipped grid with a small N (2 base seeds, 2 init seeds, 2 left-out rows), 2 epochs,
    the generic search only."""
    text = (REPO / "grids" / "consistency.yaml").read_text()
    for old, new in (("range: [1, 101]", "range: [1, 3]"), ("range: [0, 100]", "range: [0, 2]"),
                     ("nepochs: 100", "nepochs: 2"), ("nce: 500", "nce: 100"),
                     ("seed: [0, 1, 2]", "seed: [0, 1]"), ("generator: [generic, ecco]", "generator: [generic]")):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.mark.mpi
@pytest.mark.skipif(not HAVE_MPI, reason="needs mpiexec and mpi4py (the mpich extra)")
def test_consistency_grid_under_mpi_and_its_table(tmp_path, data_dir):
    grid = _small_consistency_grid(tmp_path / "consistency.yaml")
    g = load_grid(grid)     # 4 base points per seed: radius 0 with and without the control flag are one job
    assert len(g) == 2 * 2 * 2 * (4 + 2 + 2) and len(set(g.job_ids)) == 2 * 2 * 2 * (3 + 2 + 2)
    env = {**ENV, "CTGRID_DATA": str(data_dir)}
    run = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "-m", "ctgrid", "run", str(grid),
                          "--results", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    agg = subprocess.run([sys.executable, "-m", "ctgrid", "aggregate", str(tmp_path / "consistency")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert agg.returncode == 0, agg.stderr[-3000:]
    assert "invalidation rate (IV)" in agg.stdout
    rows = [line for line in agg.stdout.splitlines() if re.match(r"\| (german|credit) \|", line)]
    # 2 datasets x 2 objectives x 3 methods x {RS, LOO} IV rows, then the contrasts
    assert sum(" RS |" in r or " LOO |" in r for r in rows) >= 24
    table = pd.read_csv(tmp_path / "consistency" / "aggregate" / "consistency.csv")
    assert len(table) == 24 and set(table["n_models"]) == {2} and set(table["n_bases"]) == {2}
    assert set(table["method"]) == {"generic", "generic+sns", "generic+ctrl"}
    assert ((table["iv_mean"] >= 0) & (table["iv_mean"] <= 1)).all()
    german = pd.read_csv(tmp_path / "consistency" / "aggregate" / "consistency.csv").query("dataset == 'german'")
    assert (german["n"] <= 2 * 100).all()        # two base models x at most the 100 validation rows
    contrasts = pd.read_csv(tmp_path / "consistency" / "aggregate" / "consistency_contrasts.csv")
    assert set(contrasts["n_pairs"]) == {2}
    assert (tmp_path / "consistency" / "aggregate" / "figures" / "consistency_iv_cost.png").is_file()


def test_rs_by_init_seed_varies_only_the_initialisation(monkeypatch):
    """``training.init_seed``: other initial weights; the batch-order and CE-draw streams are
    the seed's (every other generator seeded from the same parts), and ``init_seed`` equal to
    the replicate's seed is the run without it, bit for bit."""
    import ctgrid.training.loop as loop
    import ctgrid.training.pack as pack
    import ctgrid.training.search as search
    from ctgrid.generators import GeneratorConfig
    from ctgrid.grid.job import JobConfig
    from ctgrid.seeding import torch_generator
    from ctgrid.training import TrainingConfig, train
    moons = load_dataset(DataConfig(name="moons", n_train=90, n_val=20, n_test=20))
    calls: list[tuple] = []

    def recording(*parts):
        calls.append(parts)
        return torch_generator(*parts)
    for mod in (loop, pack, search):
        monkeypatch.setattr(mod, "torch_generator", recording)

    def run(**kw):
        calls.clear()
        cfg = TrainingConfig(objective="full", nepochs=2, nce=20, batch_size=30, seed=7, **kw)
        return train(moons, ModelConfig(), GeneratorConfig(maxiter=3), cfg), list(calls)
    base, base_calls = run()
    rs, rs_calls = run(init_seed=11)
    same, _ = run(init_seed=7)
    init = [c for c in base_calls if c[-1] == "init"]
    assert init == [(7, "init")] and [c for c in rs_calls if c[-1] == "init"] == [(11, "init")]
    rest = [c for c in base_calls if c[-1] != "init"]
    assert rest == [c for c in rs_calls if c[-1] != "init"]
    assert {c[1] for c in rest} == {"shuffle", "counterfactuals"} and len(rest) == 4   # 2 epochs each
    w0 = build_model(ModelConfig(), 2, 2, generator=torch_generator(7, "init")).state_dict()
    w1 = build_model(ModelConfig(), 2, 2, generator=torch_generator(11, "init")).state_dict()
    assert not torch.equal(w0["0.weight"], w1["0.weight"])               # weights differ at init
    assert all(torch.equal(a, b) for a, b in zip(base.model.state_dict().values(),
                                                 same.model.state_dict().values()))
    assert not torch.equal(base.model.state_dict()["0.weight"], rs.model.state_dict()["0.weight"])
    # in a grid: the same derived replicate seed, another derived initialisation seed
    a = JobConfig.from_dict({"training": {"seed": 2}})
    b = JobConfig.from_dict({"training": {"seed": 2, "init_seed": 1}})
    assert a.run_training.seed == b.run_training.seed and a.run_training.init_seed == -1
    assert b.run_training.init_seed >= 0 and a.job_id != b.job_id
