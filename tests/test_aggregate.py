"""ctgrid aggregate on a small hand-made results directory.

The directory holds the jobs of a grid ``objective: [full, vanilla]`` x
``lambda_reg: [0.1, 0.5]`` on moons (the two vanilla points are one job), evaluated
with 3 runs x 2 individuals x lambda_energy {0.1, 1}. Every metric value is chosen
by hand so the expected table entries follow from the literals:

- baseline (BL): IP 9 / 11 for individuals 0 / 1 (mean 10), cost 2, IP* 0.4, all valid;
- CT ``lambda_reg = 0.1``: IP 4 / 6 at lambda 0.1 (mean 5) and 2 / 3 at lambda 1 (mean
  2.5), individual 1 invalid at lambda 0.1, cost 1.5, IP* 0.1;
- CT ``lambda_reg = 0.5``: IP mean 8, 12, 10 in runs 0, 1, 2 (both lambdas), cost 2,
  IP* 0.6 at lambda 0.1 and -0.1 at lambda 1 (clipped to 0 as the reference).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml

from ctgrid.aggregate import AggregateOptions, Results, Table, build_tables, pair_jobs
from ctgrid.cli import main
from ctgrid.data import DataConfig
from ctgrid.evaluation.config import EvaluationConfig
from ctgrid.grid.job import JobConfig
from ctgrid.training.config import TrainingConfig

GOLDEN = Path(__file__).parent / "golden"
RUNS, LAMBDAS = (0, 1, 2), (0.1, 1.0)


def job(objective: str, lambda_reg: float) -> JobConfig:
    return JobConfig(training=TrainingConfig(objective=objective, lambda_reg=lambda_reg, nepochs=4,
                                             burnin=0.25),
                     evaluation=EvaluationConfig(lambda_energy=LAMBDAS, n_runs=3, n_individuals=2))


CT1, CT2, BL = job("full", 0.1), job("full", 0.5), job("vanilla", 0.1)


def ip_values(name: str, run: int, lam: float) -> tuple[float, float]:
    if name == "bl":
        return 9.0, 11.0
    if name == "ct1":
        return (4.0, 6.0) if lam == 0.1 else (2.0, 3.0)
    mean = {0: 8.0, 1: 12.0, 2: 10.0}[run]
    return mean - 1, mean + 1


def eval_frame(name: str, cost: float | None = None) -> pd.DataFrame:
    rows = []
    for run in RUNS:
        for lam in LAMBDAS:
            ips = ip_values(name, run, lam)
            star = {"bl": 0.4, "ct1": 0.1, "ct2": 0.6 if lam == 0.1 else -0.1}[name]
            for ind in (0, 1):
                valid = 0.0 if (name == "ct1" and lam == 0.1 and ind == 1) else 1.0
                metrics = {"validity": valid, "ip": ips[ind], "ip_star": star,
                           "cost": cost if cost is not None else 1.5 if name == "ct1" else 2.0}
                for metric, value in metrics.items():
                    rows.append({"run": run, "individual": ind, "split": "train",
                                 "factual_index": 10 * run + ind, "factual_label": 0, "target": 1,
                                 "generator": "ecco", "lambda_energy": lam, "metric": metric,
                                 "value": value})
    return pd.DataFrame(rows)


def perf_frame(acc: float, f1: float, robust: float) -> pd.DataFrame:
    return pd.DataFrame({"metric": ["accuracy", "macro_f1", "robust_accuracy", "robust_accuracy"],
                         "attack": ["none", "none", "fgsm", "fgsm"], "eps": [0.0, 0.0, 0.03, 0.06],
                         "value": [acc, f1, robust, robust / 2]})


def history_frame(ct: bool) -> pd.DataFrame:
    share = [np.nan, 0.2, 0.5, 0.8] if ct else [np.nan] * 4
    return pd.DataFrame({"epoch": [1, 2, 3, 4], "loss": [1.0, 0.8, 0.7, 0.6], "converged": share,
                         "acc_train": [0.5, 0.7, 0.8, 0.9]})


def write_job(root: Path, cfg: JobConfig, name: str, perf: pd.DataFrame, extra: bool = False,
              cost: float | None = None) -> str:
    d = root / "jobs" / cfg.job_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg.canonical().to_dict(), sort_keys=False))
    ev = eval_frame(name, cost)
    if extra:  # only this job's file has the column: a merged schema must keep it
        ev["extra_col"] = 7.0
    ev.to_parquet(d / "evaluation.parquet", index=False)
    perf.to_parquet(d / "performance.parquet", index=False)
    history_frame(name != "bl").to_parquet(d / "history.parquet", index=False)
    (d / "done.json").write_text(json.dumps({"status": "done", "job_id": cfg.job_id,
                                             "data_summary": {"n_train": 3000, "n_val": 600,
                                                              "n_test": 900}}))
    return cfg.job_id


@pytest.fixture()
def results_dir(tmp_path: Path) -> Path:
    root = tmp_path / "results" / "toy"
    ids = {"ct1": write_job(root, CT1, "ct1", perf_frame(0.86, 0.84, 0.70), extra=True),
           "ct2": write_job(root, CT2, "ct2", perf_frame(0.80, 0.78, 0.60)),
           "bl": write_job(root, BL, "bl", perf_frame(0.90, 0.88, 0.50))}
    points = pd.DataFrame({"point": [0, 1, 2, 3],
                           "job_id": [ids["ct1"], ids["ct2"], ids["bl"], ids["bl"]],
                           "training.objective": ["full", "full", "vanilla", "vanilla"],
                           "training.lambda_reg": [0.1, 0.5, 0.1, 0.5]})
    points.to_parquet(root / "jobs.parquet", index=False)
    (root / "grid.yaml").write_text("name: toy\ntraining:\n  objective: [full, vanilla]\n"
                                    "  lambda_reg: [0.1, 0.5]\n")
    return root


def opts(**kw) -> AggregateOptions:
    return AggregateOptions(**{"bootstrap": 1000, "figures": False, **kw})


def key_rows(results_dir: Path, **kw) -> tuple[dict[str, dict[str, str]], Table]:
    tables, _ = build_tables(Results.load([results_dir]), opts(**kw))
    t = tables[0]
    return {row[1]: dict(zip(t.header, row)) for row in t.rows}, t


def test_pairing_uses_the_vanilla_job_of_the_same_schedule(results_dir):
    pairs = pair_jobs(Results.load([results_dir])).set_index("ct_job")
    assert set(pairs.index) == {CT1.job_id, CT2.job_id}
    bl_id = JobConfig(training=replace(CT1.training, objective="vanilla"),
                      evaluation=CT1.evaluation).canonical().job_id
    assert bl_id == BL.job_id == JobConfig(training=TrainingConfig(
        objective="vanilla", nepochs=4, burnin=0.25), evaluation=CT1.evaluation).job_id
    assert (pairs["bl_job"] == BL.job_id).all()
    assert pairs.loc[CT1.job_id, "setting"] == "lambda_reg=0.1"
    assert pairs.loc[CT2.job_id, "setting"] == "lambda_reg=0.5"


def test_key_results_all_counterfactuals(results_dir):
    rows, table = key_rows(results_dir)
    a, b = rows["lambda_reg=0.1"], rows["lambda_reg=0.5"]
    # CT1: IP 5 vs 10 at lambda 0.1 -> 50 %, 2.5 vs 10 at lambda 1 -> 75 %, mean 3.75 -> 62.5 %;
    # every run gives the same ratio, so the interval collapses and the difference (< 0) is starred
    assert a["IP λ=0.1"] == "50.0* [50.0, 50.0]"
    assert a["IP λ=1"] == "75.0* [75.0, 75.0]"
    assert a["IP"] == "62.5* [62.5, 62.5]"
    assert a["IP*"] == "75.0* [75.0, 75.0]"               # 1 - 0.1 / 0.4
    assert a["Cost"] == "25.0* [25.0, 25.0] (same runs)"  # 1 - 1.5 / 2
    assert (a["Val. BL"], a["Val. CT"]) == ("100.0", "75.0")
    assert (a["Acc BL"], a["Acc CT"], a["Acc* BL"], a["Acc* CT"]) == ("90.0", "86.0", "50.0", "70.0")
    assert a["Units"] == "3"
    # CT2: ratios 0.8, 1.2, 1.0 -> 0 %; differences -2, 2, 0: interval holds 0, no star;
    # resamples of three 1.2s (prob. 1/27 > 0.5 %) put the 99 % bounds at -20 and 20
    assert b["IP"] == "0.0 [-20.0, 20.0]"
    assert b["IP λ=0.1"] == "0.0 [-20.0, 20.0]"
    assert b["Cost"] == "0.0 [0.0, 0.0] (same runs)"      # equal cost: zero difference, no star
    assert b["IP*"] == "25.0* [25.0, 25.0]"               # mean(0.6, max(-0.1, 0)) = 0.3 vs 0.4
    assert (b["Val. CT"], b["Acc CT"], b["Acc* CT"]) == ("100.0", "80.0", "60.0")
    assert any("all, valid or not" in n for n in table.notes)
    assert any("Same factuals for CT and BL in 12 of 12" in n for n in table.notes)
    data = table.data.set_index(["setting", "quantity"])
    assert data.loc[("lambda_reg=0.1", "ip"), "value"] == pytest.approx(62.5)
    assert bool(data.loc[("lambda_reg=0.1", "ip"), "star"]) and not bool(data.loc[("lambda_reg=0.5", "ip"), "star"])
    assert data.loc[("lambda_reg=0.5", "ip"), "sd"] == pytest.approx(20.0)  # 100 * std(0.8, 1.2, 1.0)


def test_key_results_valid_only(results_dir):
    rows, table = key_rows(results_dir, valid_only=True)
    a = rows["lambda_reg=0.1"]
    # CT1 at lambda 0.1 keeps only individual 0 (IP 4): 1 - 4/10 = 60 %; over lambdas (4 + 2.5)/2
    assert a["IP λ=0.1"].startswith("60.0*")
    assert a["IP λ=1"].startswith("75.0*")
    assert a["IP"].startswith("67.5*")
    assert a["Val. CT"] == "75.0"  # validity itself is always over all counterfactuals
    assert any("valid ones only" in n for n in table.notes)


def test_individuals_whose_target_a_model_predicts_are_excluded(results_dir):
    # the baseline already predicts the target (1) for individual 1 in every run and lambda:
    # only individual 0 is compared. CT1: IP 4 vs 9 at lambda 0.1, 2 vs 9 at lambda 1.
    path = results_dir / "jobs" / BL.job_id / "evaluation.parquet"
    ev = pd.read_parquet(path)
    ev["predicted"] = np.where(ev["individual"] == 1, 1, 0)
    ev.to_parquet(path, index=False)
    for job in (CT1, CT2):
        p = results_dir / "jobs" / job.job_id / "evaluation.parquet"
        e = pd.read_parquet(p)
        e["predicted"] = 0
        e.to_parquet(p, index=False)
    rows, table = key_rows(results_dir)
    a = rows["lambda_reg=0.1"]
    assert a["IP λ=0.1"].startswith(f"{100 * (1 - 4 / 9):.1f}*")
    assert a["IP λ=1"].startswith(f"{100 * (1 - 2 / 9):.1f}*")
    assert a["Val. CT"] == "100.0"        # CT1's only invalid counterfactual was individual 1's
    assert a["Excl."] == "50.0" and rows["lambda_reg=0.5"]["Excl."] == "50.0"
    assert any(n.startswith("Excl.: % of (run, individual) units left out") for n in table.notes)
    kept, table = key_rows(results_dir, exclude_predicted=False)
    assert kept["lambda_reg=0.1"]["IP"] == "62.5* [62.5, 62.5]"   # the old numbers
    assert kept["lambda_reg=0.1"]["Excl."] == "50.0"
    assert any("counted here (--keep-predicted), not excluded" in n for n in table.notes)


def test_runs_interval_is_the_spread_of_single_runs(results_dir):
    rows, _ = key_rows(results_dir, interval="runs")
    # per-run reductions 20, -20, 0 -> 0.5 % / 99.5 % quantiles (linear) = -19.8 / 19.8
    assert rows["lambda_reg=0.5"]["IP"] == "0.0 [-19.8, 19.8]"


def test_predictive_and_hyperparameter_tables(results_dir):
    tables, _ = build_tables(Results.load([results_dir]), opts())
    named = {t.name: t for t in tables}
    hp, pred = named["final_hyperparameters"], named["predictive_toy"]
    rows = {r[1]: r for r in pred.rows}
    # full: accuracy 86 and 80 -> mean 83, sample sd sqrt((3^2 + 3^2) / 1) = 4.24; F1 84, 78
    assert rows["full"] == ["moons", "full", "83.00", "4.24", "81.00", "4.24", "2"]
    assert rows["vanilla"] == ["moons", "vanilla", "90.00", "—", "88.00", "—", "1"]
    hp_rows = [dict(zip(hp.header, r)) for r in hp.rows]
    assert [r["λ_reg"] for r in hp_rows] == ["0.1", "0.5"]
    assert all(r["Train"] == "3000" and r["Val"] == "600" and r["Test"] == "900" for r in hp_rows)
    assert all(r["τ"] == "0.75" and r["Batch"] == "30" and r["Epochs"] == "4" for r in hp_rows)


def test_cost_from_a_mutability_grid_among_the_inputs(results_dir, tmp_path):
    # a second grid trains and evaluates BL and CT with the paper's immutable feature:
    # cost 4 (BL) vs 1 (CT) -> 75 % for every row of the dataset, labelled (mut.)
    root = tmp_path / "results" / "mut"
    ct, bl = (replace(j, data=DataConfig(mutability="paper")) for j in (CT1, BL))
    ids = [write_job(root, ct, "ct1", perf_frame(0.8, 0.8, 0.5), cost=1.0),
           write_job(root, bl, "bl", perf_frame(0.8, 0.8, 0.5), cost=4.0)]
    pd.DataFrame({"point": [0, 1], "job_id": ids, "training.objective": ["full", "vanilla"]}).to_parquet(
        root / "jobs.parquet", index=False)
    tables, _ = build_tables(Results.load([results_dir, root]), opts())
    key = tables[0]
    rows = {r[1]: dict(zip(key.header, r)) for r in key.rows}
    assert set(rows) == {"lambda_reg=0.1", "lambda_reg=0.5"}  # no row of its own
    assert all(r["Cost"] == "75.0* [75.0, 75.0] (mut.)" for r in rows.values())
    assert rows["lambda_reg=0.1"]["IP"] == "62.5* [62.5, 62.5]"  # IP still from the main grid
    assert [t.name for t in tables if t.name.startswith("predictive")] == ["predictive_toy", "predictive_mut"]
    named = {t.name: t for t in tables}
    assert len(named["final_hyperparameters"].rows) == 2  # Table 2 lists the unconstrained configurations


def test_different_factuals_are_reported(results_dir):
    path = results_dir / "jobs" / BL.job_id / "evaluation.parquet"
    ev = pd.read_parquet(path)
    ev.loc[(ev["run"] == 2) & (ev["lambda_energy"] == 1.0) & (ev["individual"] == 0), "factual_index"] = 99
    ev.to_parquet(path, index=False)
    _, table = key_rows(results_dir)
    assert any("Same factuals for CT and BL in 10 of 12" in n for n in table.notes)


def test_sizes_are_computed_when_the_runner_stored_none(results_dir, monkeypatch):
    for done in (results_dir / "jobs").glob("*/done.json"):
        done.write_text(json.dumps({"status": "done"}))
    tables, _ = build_tables(Results.load([results_dir]), opts())
    hp = next(t for t in tables if t.name == "final_hyperparameters")
    # moons is generated in-package: 3000 train / 600 validation / 900 test (docs/deviations.md, M7)
    assert all(r[-3:] == ["3000", "600", "900"] for r in hp.rows)
    assert any("from loading the dataset" in n for n in hp.notes)
    # a real dataset without a data directory: '—' and a note saying why
    monkeypatch.delenv("CTGRID_DATA", raising=False)
    cfg = yaml.safe_load((results_dir / "jobs" / CT1.job_id / "config.yaml").read_text())
    cfg["data"]["name"] = "adult"
    (results_dir / "jobs" / CT1.job_id / "config.yaml").write_text(yaml.safe_dump(cfg))
    hp = build_tables(Results.load([results_dir]), opts())[0][1]
    adult = [r for r in hp.rows if r[0] == "adult"]
    assert adult and adult[0][-3:] == ["—", "—", "—"]
    assert any(n.startswith("Sizes of adult unavailable") for n in hp.notes)


def test_missing_baseline_is_reported_not_paired(results_dir):
    (results_dir / "jobs" / BL.job_id / "done.json").unlink()
    rows, table = key_rows(results_dir)
    assert rows == {}
    assert any("0 paired, 2 without a finished baseline" in n for n in table.notes)


def test_merged_schema_keeps_columns_of_some_files(results_dir):
    ev = Results.load([results_dir]).evaluation()
    assert "extra_col" in ev.columns
    by_job = ev.groupby("job_id")["extra_col"].apply(lambda s: s.notna().all())
    assert by_job[CT1.job_id] and not ev.loc[ev["job_id"] == BL.job_id, "extra_col"].notna().any()
    assert len(ev) == 3 * 3 * 2 * 2 * 4  # jobs x runs x lambdas x individuals x metrics


def _check_golden(path: Path, text: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.read_text() == text, (
        f"{path.name} differs from the rendered table; delete the golden file to regenerate if "
        f"the change is intended")


@pytest.mark.parametrize("fmt", ["md", "tex"])
def test_golden_layout(results_dir, fmt):
    tables, _ = build_tables(Results.load([results_dir]), opts())
    for t in tables:
        _check_golden(GOLDEN / f"{t.name}.{fmt}", t.markdown() if fmt == "md" else t.latex())


def test_cli_writes_tables_figures_and_summary(results_dir, tmp_path):
    out = tmp_path / "agg"
    assert main(["aggregate", str(results_dir), "--out", str(out), "--bootstrap", "200"]) == 0
    for stem in ("key_results", "final_hyperparameters", "predictive_toy"):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
    figs = {"key_results", "outcomes_ip", "outcomes_cost", "maturity", "robust_accuracy"}
    for stem in figs:
        assert (out / "figures" / f"{stem}.pdf").stat().st_size > 0
        img = mpimg.imread(out / "figures" / f"{stem}.png")
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    summary = (out / "summary.md").read_text()
    assert "key_results.md" in summary and "figures/maturity.png" in summary
    assert "ctgrid 0.2.0" in summary and "torch" in summary and "grid.yaml" in summary
    assert "MNIST" not in summary        # no noise about what a grid does not contain
    csv = pd.read_csv(out / "key_results.csv")
    assert {"dataset", "setting", "quantity", "value", "lo", "hi", "star"} <= set(csv.columns)


def test_cli_default_out_and_bad_input(results_dir, tmp_path, capsys):
    assert main(["aggregate", str(results_dir), "--no-figures", "--format", "md"]) == 0
    assert (results_dir / "aggregate" / "key_results.md").exists()
    assert not (results_dir / "aggregate" / "key_results.tex").exists()
    out = tmp_path / "bad"
    assert main(["aggregate", str(results_dir), "--out", str(out), "--format", "md,xls"]) == 2
    assert "aggregate.formats" in capsys.readouterr().err and not out.exists()
    assert main(["aggregate", str(results_dir), "--out", str(out), "--confidence", "1.5"]) == 2
    assert main(["aggregate", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert not out.exists()


def test_pairing_survives_a_changed_default(results_dir):
    """Stored configs spell every field out: results written when a default was different
    (here evaluation.categorical 'final', ctgrid 0.2's first default) re-hash to other ids than
    their directories. Pairing goes through the stored configs, so the baseline is still found."""
    for job in (CT1, CT2, BL):
        path = results_dir / "jobs" / job.job_id / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["evaluation"]["categorical"] = "final"
        path.write_text(yaml.safe_dump(cfg))
    pairs = pair_jobs(Results.load([results_dir])).set_index("ct_job")
    assert (pairs["bl_job"] == BL.job_id).all()
    rows, _ = key_rows(results_dir)
    assert rows["lambda_reg=0.1"]["IP"] == "62.5* [62.5, 62.5]"
