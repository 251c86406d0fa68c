"""The appendix outputs of ``ctgrid aggregate`` on a small hand-made grid search.

The grid: generator {ecco, generic} x generator.lambda_energy {1, 5} x training.lambda_reg
{0.1, 0.5} x objective {full, vanilla} on moons, 16 points. Generic ignores lambda_energy and
vanilla every CT parameter, so the points are 7 jobs: 4 ECCo, 2 Generic, 1 baseline. Every
job is evaluated in 3 runs of 2 individuals at one test-time lambda; the baseline's IP is 10
and cost 2 everywhere, and each CT job's IP is 10 x the ratio of :data:`RATIOS` in run
0, 1, 2 (both individuals alike), its cost 1 (ECCo) or 2 (Generic). So each setting's %
reduction of IP, 100 (1 - mean_run ratio), is:

    ecco,  le 1, lr 0.1: 50     ecco, le 5, lr 0.1: 10 (runs .8/.9/1.0: the only one that varies)
    ecco,  le 1, lr 0.5: 60     ecco, le 5, lr 0.5: 20
    generic,     lr 0.1: -20    generic,    lr 0.5:  0

and the per-parameter table follows by hand (see the tests).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml

from ctgrid.aggregate import AggregateOptions, Results, build_tables
from ctgrid.aggregate.figures import key_results_figure, maturity_data
from ctgrid.cli import main
from ctgrid.data import DATASETS
from ctgrid.evaluation.config import EvaluationConfig
from ctgrid.generators.config import GeneratorConfig
from ctgrid.grid import load_grid, shipped_grids
from ctgrid.grid.job import JobConfig
from ctgrid.training.config import TrainingConfig

RATIOS = {("ecco", 1.0, 0.1): (0.5, 0.5, 0.5), ("ecco", 1.0, 0.5): (0.4, 0.4, 0.4),
          ("ecco", 5.0, 0.1): (0.8, 0.9, 1.0), ("ecco", 5.0, 0.5): (0.8, 0.8, 0.8),
          ("generic", None, 0.1): (1.2, 1.2, 1.2), ("generic", None, 0.5): (1.0, 1.0, 1.0)}
#: each CT job's logged share of converged counterfactuals in epochs 1-3 (epoch 1: no CE phase)
SHARES = {("ecco", 1.0, 0.1): 0.2, ("ecco", 1.0, 0.5): 0.3, ("ecco", 5.0, 0.1): 0.6,
          ("ecco", 5.0, 0.5): 0.5, ("generic", None, 0.1): 1.0, ("generic", None, 0.5): 0.9}


def config(objective: str, gen: str, le: float, lr: float) -> JobConfig:
    return JobConfig(generator=GeneratorConfig(name=gen, lambda_energy=le),
                     training=TrainingConfig(objective=objective, lambda_reg=lr, nepochs=3),
                     evaluation=EvaluationConfig(lambda_energy=(0.5,), n_runs=3, n_individuals=2))


def write_job(root: Path, cfg: JobConfig, ratios: tuple[float, ...] | None, cost: float,
              share: float | None) -> str:
    d = root / "jobs" / cfg.job_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg.canonical().to_dict(), sort_keys=False))
    rows = []
    for run in range(3):
        ip = 10.0 * (ratios[run] if ratios else 1.0)
        for ind in (0, 1):
            for metric, value in {"validity": 1.0, "ip": ip, "cost": cost, "ip_star": 0.1}.items():
                rows.append({"run": run, "individual": ind, "split": "train", "factual_index": 10 * run + ind,
                             "target": 1, "predicted": 0, "generator": "ecco", "lambda_energy": 0.5,
                             "metric": metric, "value": value})
    pd.DataFrame(rows).to_parquet(d / "evaluation.parquet", index=False)
    pd.DataFrame({"metric": ["accuracy", "macro_f1"], "attack": ["none", "none"], "eps": [0.0, 0.0],
                  "value": [0.9, 0.9]}).to_parquet(d / "performance.parquet", index=False)
    converged = [np.nan, share, share + 0.1] if share is not None else [np.nan] * 3
    pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.9, 0.8], "converged": converged}).to_parquet(
        d / "history.parquet", index=False)
    (d / "done.json").write_text(json.dumps({"status": "done", "job_id": cfg.job_id}))
    return cfg.job_id


@pytest.fixture()
def search_dir(tmp_path: Path) -> Path:
    root = tmp_path / "results" / "search"
    points = []
    for gen in ("ecco", "generic"):
        for le in (1.0, 5.0):
            for lr in (0.1, 0.5):
                for objective in ("full", "vanilla"):
                    cfg = config(objective, gen, le, lr)
                    key = (gen, le if gen == "ecco" else None, lr)
                    ct = objective == "full"
                    jid = write_job(root, cfg, RATIOS[key] if ct else None, (1.0 if gen == "ecco" else 2.0)
                                    if ct else 2.0, SHARES[key] if ct else None)
                    points.append({"point": len(points), "job_id": jid, "generator.name": gen,
                                   "generator.lambda_energy": le, "training.lambda_reg": lr,
                                   "training.objective": objective})
    pd.DataFrame(points).to_parquet(root / "jobs.parquet", index=False)
    (root / "grid.yaml").write_text("name: search\ndescription: a search on {data.name}\n"
                                    "generator: {name: [ecco, generic], lambda_energy: [1.0, 5.0]}\n"
                                    "training: {objective: [full, vanilla], lambda_reg: [0.1, 0.5]}\n")
    return root


def effects(root: Path, **kw) -> pd.DataFrame:
    tables, _ = build_tables(Results.load([root]), AggregateOptions(figures=False, **kw))
    (t,) = [t for t in tables if t.name.startswith("effects_")]
    return t.data.set_index(["parameter", "value", "metric"])


def test_jobs_that_ignore_an_axis_belong_to_none_of_its_values(search_dir):
    results = Results.load([search_dir])
    values = results.axis_values(0)
    assert len(values) == 7
    generic = [j for j in values.index if values.loc[j, "generator.name"] == "generic"]
    assert len(generic) == 2 and values.loc[generic, "generator.lambda_energy"].isna().all()
    vanilla = values["training.objective"] == "vanilla"
    assert vanilla.sum() == 1 and values[vanilla].drop(columns="training.objective").isna().all(axis=None)


def test_per_parameter_table_equals_the_hand_computation(search_dir):
    e = effects(search_dir, bootstrap=500)
    hand = {("all", "all settings"): (50 + 60 + 10 + 20 - 20 + 0) / 6, ("generator", "ecco"): 35.0,
            ("generator", "generic"): -10.0, ("lambda_energy", "1"): 55.0, ("lambda_energy", "5"): 15.0,
            ("lambda_reg", "0.1"): (50 + 10 - 20) / 3, ("lambda_reg", "0.5"): (60 + 20 + 0) / 3}
    assert set(e.xs("ip", level="metric").index) == set(hand)
    for (param, value), mean in hand.items():
        assert e.loc[(param, value, "ip"), "mean"] == pytest.approx(mean), (param, value)
    n = e.xs("ip", level="metric")["n_settings"].to_dict()
    assert n[("all", "all settings")] == 6 and n[("lambda_energy", "1")] == 2   # Generic left out
    assert n[("lambda_reg", "0.1")] == 3
    assert e.loc[("all", "all settings", "ip"), "n_lower"] == 4      # -20 and 0 are not lower
    assert e.loc[("all", "all settings", "ip"), "sd"] == pytest.approx(np.std([50, 60, 10, 20, -20, 0], ddof=1))
    assert e.loc[("generator", "generic", "cost"), "mean"] == pytest.approx(0.0)
    assert e.loc[("generator", "ecco", "cost"), "mean"] == pytest.approx(50.0)
    # intervals: settings whose runs agree give a point interval; le 5 averages 20 with a setting
    # whose resampled values lie in [0, 20], so its interval lies in [10, 20] around 15
    le1 = e.loc[("lambda_energy", "1", "ip")]
    assert le1["lo"] == pytest.approx(55.0) and le1["hi"] == pytest.approx(55.0)
    le5 = e.loc[("lambda_energy", "5", "ip")]
    assert 10.0 - 1e-9 <= le5["lo"] < 15.0 < le5["hi"] <= 20.0 + 1e-9
    assert np.isnan(effects(search_dir, bootstrap=0).loc[("lambda_energy", "5", "ip"), "lo"])  # no interval


def test_maturity_data_equals_the_histories(search_dir):
    results = Results.load([search_dir])
    data = maturity_data(results)
    # by hand from the files: lines generator x lambda_reg (tau absent; lambda_energy pooled)
    expected = []
    for gen, le, lr in SHARES:
        cfg = config("full", gen, le if le is not None else 1.0, lr)
        h = pd.read_parquet(search_dir / "jobs" / cfg.job_id / "history.parquet")
        expected += [{"colour": gen, "style": lr, "epoch": e, "share": s}
                     for e, s in zip(h["epoch"], h["converged"]) if np.isfinite(s)]
    hand = pd.DataFrame(expected).groupby(["colour", "style", "epoch"])["share"].agg(["mean", "std", "size"])
    got = data.set_index(["colour", "style", "epoch"]).sort_index()
    assert list(got.index) == list(hand.index)
    np.testing.assert_allclose(got["mean"], hand["mean"])
    np.testing.assert_allclose(got["sd"].fillna(-1), hand["std"].fillna(-1))
    assert list(got["n"]) == list(hand["size"])
    assert got.loc[("ecco", 0.1, 2), "mean"] == pytest.approx((0.2 + 0.6) / 2)   # le 1 and 5 pooled
    assert 1 not in set(data["epoch"])                                             # no CE phase: left out


def test_aggregate_draws_one_outcome_figure_per_dataset_for_a_grid_search(search_dir, tmp_path):
    out = tmp_path / "agg"
    assert main(["aggregate", str(search_dir), "--out", str(out), "--bootstrap", "100",
                 "--format", "md,csv"]) == 0
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"outcomes_ip_moons.png", "outcomes_cost_moons.png", "maturity.png", "key_results.png"} <= figs
    assert "outcomes_ip.png" not in figs
    summary = (out / "summary.md").read_text()
    assert "effects_search.md" in summary and "| a search on moons |" in summary
    csv = pd.read_csv(out / "effects_search.csv")
    assert {"dataset", "parameter", "value", "metric", "mean", "lo", "hi", "sd", "n_settings"} <= set(csv.columns)


def test_a_two_axis_grid_gets_heat_maps(search_dir, tmp_path):
    """Without the Generic jobs the grid varies two axes: one heat-map figure per measure."""
    points = pd.read_parquet(search_dir / "jobs.parquet")
    points = points[points["generator.name"] == "ecco"].drop(columns="generator.name")
    points.to_parquet(search_dir / "jobs.parquet", index=False)
    out = tmp_path / "agg"
    assert main(["aggregate", str(search_dir), "--out", str(out), "--bootstrap", "0", "--format", "md"]) == 0
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"outcomes_ip.png", "outcomes_cost.png"} <= figs and "outcomes_ip_moons.png" not in figs


def test_key_results_figure_stays_readable_for_a_large_grid(tmp_path):
    """135 settings per dataset (the penalties grid): one row per dataset, the height bounded,
    and one wild value does not set the axis."""
    rng = np.random.default_rng(0)
    rows = [{"dataset": d, "setting": f"s{i}", "quantity": q, "value": v, "lo": v - 1, "hi": v + 1}
            for d in ("lin_sep", "over", "circles", "moons") for i in range(135)
            for q, v in (("ip", rng.normal(20, 5)), ("ip_star", -5000.0 if i == 0 else rng.normal(30, 10)),
                         ("cost", rng.normal(10, 5)))]
    (png, _) = key_results_figure(pd.DataFrame(rows), 0.99, tmp_path)
    height, width = mpimg.imread(png).shape[:2]
    assert height < 1000 and width < 2500


def test_shipped_descriptions_follow_a_data_name_override():
    for name in shipped_grids():
        grid = load_grid(name)
        names = {p.data.name for p in grid}
        one = sorted(names)[0]
        text = load_grid(name, [f"data.name={one}"]).description
        assert not [d for d in DATASETS if d != one and d in text.split()], (name, text)
    assert load_grid("penalties").description.endswith("on lin_sep, over, circles, moons")


def test_maturity_never_pools_runs_of_different_lengths(tmp_path):
    """A 3- and a 4-epoch run are never averaged into one line (their burn-in boundaries and
    epoch ranges differ): nepochs is a line axis here, else it splits the panels."""
    root = tmp_path / "results" / "epochs"
    points = []
    for nepochs, share in ((3, 0.2), (4, 0.6)):
        for objective in ("full", "vanilla"):
            cfg = JobConfig(training=TrainingConfig(objective=objective, nepochs=nepochs),
                            evaluation=EvaluationConfig(lambda_energy=(0.5,), n_runs=3, n_individuals=2))
            ct = objective == "full"
            jid = write_job(root, cfg, (0.5, 0.5, 0.5) if ct else None, 2.0, share if ct else None)
            points.append({"point": len(points), "job_id": jid, "training.nepochs": nepochs,
                           "training.objective": objective})
    pd.DataFrame(points).to_parquet(root / "jobs.parquet", index=False)
    (root / "grid.yaml").write_text("name: epochs\ntraining: {objective: [full, vanilla], nepochs: [3, 4]}\n")
    data = maturity_data(Results.load([root]))
    assert set(data["colour"]) == {3, 4}                       # the line axis (the grid's only one)
    by = data.set_index(["colour", "epoch"])["mean"]
    assert by[(3, 2)] == pytest.approx(0.2) and by[(4, 2)] == pytest.approx(0.6)   # not 0.4


def test_maturity_splits_panels_by_nepochs_when_two_other_axes_take_the_lines(tmp_path):
    root = tmp_path / "results" / "epochs3"
    points, share = [], {}
    for k, (tau, lam, nepochs) in enumerate((t, lr, n) for t in (0.5, 0.9) for lr in (0.1, 0.5) for n in (3, 4)):
        for objective in ("full", "vanilla"):
            cfg = JobConfig(generator=GeneratorConfig(tau=tau),
                            training=TrainingConfig(objective=objective, nepochs=nepochs, lambda_reg=lam),
                            evaluation=EvaluationConfig(lambda_energy=(0.5,), n_runs=3, n_individuals=2))
            ct = objective == "full"
            share[(tau, lam, nepochs)] = 0.05 * k
            jid = write_job(root, cfg, (0.5, 0.5, 0.5) if ct else None, 2.0, 0.05 * k if ct else None)
            points.append({"point": len(points), "job_id": jid, "generator.tau": tau, "training.lambda_reg": lam,
                           "training.nepochs": nepochs, "training.objective": objective})
    pd.DataFrame(points).to_parquet(root / "jobs.parquet", index=False)
    (root / "grid.yaml").write_text("name: epochs3\n")
    data = maturity_data(Results.load([root])).set_index(["facet", "colour", "style", "epoch"])
    assert len(data) == 8 * 2 and (data["n"] == 1).all()      # every job its own line, epochs 2 and 3
    for (tau, lam, nepochs), s in share.items():
        assert data.loc[(nepochs, tau, lam, 2), "mean"] == pytest.approx(s)


def test_per_parameter_table_averages_and_resamples_the_seeds_of_a_setting(tmp_path):
    """Two training seeds per setting (``repeats``): a setting's value is the mean of its seeds',
    and its interval resamples the seeds first (runs within a seed agree here, so the interval
    spans exactly the seeds' values)."""
    root = tmp_path / "results" / "seeds"
    ratios = {(0.1, 0): 0.5, (0.1, 1): 0.7, (0.5, 0): 0.9, (0.5, 1): 0.9}   # % reduction 50, 30, 10, 10
    points = []
    for (lam, seed), ratio in ratios.items():
        for objective in ("full", "vanilla"):
            cfg = JobConfig(training=TrainingConfig(objective=objective, lambda_reg=lam, nepochs=3, seed=seed),
                            evaluation=EvaluationConfig(lambda_energy=(0.5,), n_runs=3, n_individuals=2))
            ct = objective == "full"
            jid = write_job(root, cfg, (ratio,) * 3 if ct else None, 2.0, 0.5 if ct else None)
            points.append({"point": len(points), "job_id": jid, "training.lambda_reg": lam,
                           "training.seed": seed, "training.objective": objective})
    pd.DataFrame(points).to_parquet(root / "jobs.parquet", index=False)
    (root / "grid.yaml").write_text("name: seeds\n")
    e = effects(root, bootstrap=400)
    low = e.loc[("lambda_reg", "0.1", "ip")]
    assert low["mean"] == pytest.approx(40.0) and low["n_settings"] == 1
    assert low["lo"] == pytest.approx(30.0) and low["hi"] == pytest.approx(50.0)
    high = e.loc[("lambda_reg", "0.5", "ip")]
    assert high["lo"] == pytest.approx(10.0) and high["hi"] == pytest.approx(10.0)
    assert e.loc[("all", "all settings", "ip"), "mean"] == pytest.approx(25.0)


def test_parameters_that_change_only_with_the_dataset_are_no_outcome_axes(tmp_path):
    """A final grid (one setting per dataset, its τ, λ_reg and λ_energy set per dataset) gets one
    box per dataset, not per-dataset figures whose panels each hold one box."""
    from ctgrid.data import DataConfig
    root = tmp_path / "results" / "final"
    per_data = {"moons": (0.9, 0.25, 1.0), "circles": (0.5, 0.5, 5.0)}
    points = []
    for name, (tau, lr, le) in per_data.items():
        for objective in ("full", "vanilla"):
            cfg = JobConfig(data=DataConfig(name=name),
                            generator=GeneratorConfig(name="ecco", tau=tau, lambda_energy=le),
                            training=TrainingConfig(objective=objective, lambda_reg=lr, nepochs=3),
                            evaluation=EvaluationConfig(lambda_energy=(0.5,), n_runs=3, n_individuals=2))
            ct = objective == "full"
            jid = write_job(root, cfg, (0.5, 0.6, 0.7) if ct else None, 1.0 if ct else 2.0, 0.5 if ct else None)
            points.append({"point": len(points), "job_id": jid, "data.name": name, "generator.tau": tau,
                           "generator.lambda_energy": le, "training.lambda_reg": lr,
                           "training.objective": objective})
    pd.DataFrame(points).to_parquet(root / "jobs.parquet", index=False)
    (root / "grid.yaml").write_text("name: final\ntraining: {objective: [full, vanilla]}\n")
    out = tmp_path / "agg"
    assert main(["aggregate", str(root), "--out", str(out), "--bootstrap", "0", "--format", "md"]) == 0
    figs = {p.name for p in (out / "figures").glob("outcomes_*.png")}
    assert figs == {"outcomes_ip.png", "outcomes_cost.png"}
