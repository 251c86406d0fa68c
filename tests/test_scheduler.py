"""In-process grid runs: planning, failure records, retries, dry run, SIGTERM and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctgrid.cli import main
from ctgrid.errors import ConfigError
from ctgrid.grid import parse_grid
from ctgrid.parallel import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, under_mpi_launcher
from ctgrid.parallel.launcher import check_library, check_world, launched, launcher_rank
from ctgrid.parallel.scheduler import exit_code, job_cost, make_plan
from ctgrid.parallel.sharded import shard_bounds
from ctgrid.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items()
       if not k.startswith(("PMI", "PMIX", "OMPI", "MPI_", "SLURM", "HYDRA"))}
ENV["PYTHONPATH"] = str(ROOT) + os.pathsep + ENV.get("PYTHONPATH", "")

SMALL_EVAL = ("evaluation: {lambda_energy: [0.5], n_runs: 1, n_individuals: 4, maxiter: 5, "
              "n_ip_samples: 20, n_energy_samples: 10, mmd_samples: 10}")

#: two good jobs and two that diverge at run time (one stopped early by training.nonfinite_patience)
FAILING = textwrap.dedent(f"""\
    name: sched
    data: {{name: moons, n_train: 80, n_val: 20, n_test: 40}}
    generator: {{name: ecco, maxiter: 5}}
    training: {{nepochs: 2, nce: 10}}
    {SMALL_EVAL}
    subgrids:
      - training: {{objective: [full, vanilla]}}
      - training: {{objective: full, lr: 1.0e+30, nepochs: 6}}
      - training: {{objective: vanilla, lr: 1.0e+30}}
    """)


def write_grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def run_cli(*args: str) -> int:
    return main(["run", *map(str, args)])


def test_mpi_launcher_detection_from_environment():
    assert not under_mpi_launcher({})
    assert not under_mpi_launcher({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"})
    assert under_mpi_launcher({"PMI_RANK": "0", "PMI_SIZE": "1"})     # MPICH hydra, even -n 1
    assert under_mpi_launcher({"OMPI_COMM_WORLD_SIZE": "4"})           # Open MPI
    assert under_mpi_launcher({"PMIX_RANK": "2"})                      # PMIx (srun --mpi=pmix)
    assert under_mpi_launcher({"SLURM_NTASKS": "3"})                   # srun / sbatch -n 3


OPEN_MPI = "Open MPI v5.0.11, package: Open MPI user@localhost Distribution, ident: 5.0.11\n"
MPICH = "MPICH Version:      5.0.2\nMPICH Release date: unreleased development copy\n"


def test_a_launcher_and_an_mpi_library_that_do_not_belong_together_are_refused_before_mpi_init():
    check_library(OPEN_MPI, {"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "0"})
    check_library(MPICH, {"PMI_SIZE": "3", "PMI_RANK": "1"})
    check_library(OPEN_MPI, {"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "3"})       # srun --mpi=pmix
    check_library("Open MPI v4.1.6, package: Debian\n", {"PMI_FD": "5"})         # Open MPI 4 has PMI-2
    check_library(MPICH, {})
    with pytest.raises(ConfigError, match="started by Open MPI's mpirun but mpi4py loaded MPICH Version: 5.0.2:"):
        check_library(MPICH, {"OMPI_COMM_WORLD_SIZE": "3"})
    with pytest.raises(ConfigError, match="PMI-1/2 launcher .* loaded Open MPI v5.0.11, which speaks PMIx only"):
        check_library(OPEN_MPI, {"PMI_RANK": "0", "PMI_SIZE": "2"})


def test_stop_flag_restores_only_the_handlers_it_still_owns():
    """A finished MPI rank ignores SIGUSR1/SIGTERM until it exits; leaving the flag keeps that."""
    from ctgrid.parallel.signals import StopFlag
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    try:
        with StopFlag() as stop:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            assert signal.getsignal(signal.SIGTERM) == stop._handler
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == before[1]
    finally:
        signal.signal(signal.SIGUSR1, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_a_world_of_one_under_a_launcher_of_several_processes_is_refused_after_mpi_init():
    assert launched({"OMPI_COMM_WORLD_SIZE": "3", "SLURM_STEP_NUM_TASKS": "9"}) == (
        "Open MPI's mpirun (OMPI_COMM_WORLD_SIZE=3)", 3)
    assert launched({"PMI_SIZE": "4", "SLURM_STEP_NUM_TASKS": "4"})[0].startswith("srun")   # srun --mpi=pmi2
    assert launched({"PMI_SIZE": "1", "SLURM_STEP_NUM_TASKS": "x"}) is None
    assert [launcher_rank(e) for e in ({}, {"OMPI_COMM_WORLD_RANK": "2"}, {"SLURM_PROCID": "1"})] == [0, 2, 1]
    check_world(3, MPICH, {"PMI_SIZE": "3"})
    check_world(1, MPICH, {"PMI_SIZE": "1"})
    with pytest.raises(ConfigError, match=r"srun \(SLURM_STEP_NUM_TASKS=3\) started 3 processes but MPI sees 1 "
                                          r"\(mpi4py loaded Open MPI v5.0.11\).*'srun --mpi=pmix' for Open MPI"):
        check_world(1, OPEN_MPI, {"SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "0"})


@pytest.mark.parametrize("n,k", [(10, 3), (1000, 2), (2, 3), (0, 2), (7, 7)])
def test_shards_are_contiguous_cover_all_rows_and_differ_by_at_most_one(n, k):
    bounds = [shard_bounds(n, k, r) for r in range(k)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,rates,sizes", [(1000, [1.0, 1.0], [500, 500]), (1000, [3.0, 1.0], [750, 250]),
                                             (10, [1.0, 2.0, 2.0], [2, 4, 4]), (5, [1e9, 1.0, 1.0], [3, 1, 1]),
                                             (2, [1.0, 5.0, 1.0], [0, 1, 1]), (9, [0.0, 1.0], [4, 5])])
def test_weighted_shards_follow_the_rates_contiguously_each_rank_a_row_where_rows_allow(n, rates, sizes):
    from ctgrid.parallel.sharded import weighted_bounds
    bounds = weighted_bounds(n, rates)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert [hi - lo for lo, hi in bounds] == sizes


def test_exit_codes():
    assert exit_code(3, 3, False) == EXIT_OK == 0
    assert exit_code(2, 3, False) == EXIT_FAILED == 1
    assert exit_code(3, 3, True) == exit_code(0, 3, True) == EXIT_INTERRUPTED == 3


def test_plan_skips_done_and_failed_and_orders_longest_expected_first(tmp_path):
    grid = parse_grid(textwrap.dedent("""\
        name: plan
        data: {name: moons}
        training: {objective: [full, vanilla], nepochs: [1, 5, 20], nce: [50, 200]}
        evaluation: {enabled: false}
        """))
    store = ResultStore.for_grid(tmp_path, grid.name)
    store.initialise(grid)
    jobs = grid.jobs()
    ids = list(jobs)
    store.mark_done(ids[0], {})
    store.mark_failed(ids[1], RuntimeError("x"))
    store.job(ids[2]).checkpoint.write_bytes(b"x")
    plan = make_plan(store, jobs, retry_failed=False)
    assert plan.done == [ids[0]] and plan.failed == [ids[1]] and plan.resume == {ids[2]}
    assert set(plan.todo) == set(ids) - {ids[0], ids[1]}
    costs = [job_cost(jobs[j]) for j in plan.todo]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) > 3
    assert ids[1] in make_plan(store, jobs, retry_failed=True).todo


def test_failures_become_records_and_the_other_jobs_finish(tmp_path, capsys):
    grid = write_grid(tmp_path, FAILING)
    results = tmp_path / "results"
    assert run_cli(grid, "--results", results) == EXIT_FAILED
    store = ResultStore(results / "sched")
    st = store.status()
    assert st.counts == {"done": 2, "failed": 2, "started": 0, "pending": 0}
    types = sorted(r["error_type"] for r in st.failed)
    assert types == ["NonFiniteError", "NonFiniteError"]
    assert any("of 6: 3 consecutive epochs without a finite update" in r["message"] for r in st.failed)
    for rec in st.failed:
        assert "Traceback" in rec["traceback"] and Path(rec["log_path"]).exists()
        assert not store.job(rec["job_id"]).done.exists()
    for job_id in store.job_ids():
        paths = store.job(job_id)
        if paths.status == "done":
            for f in (paths.model, paths.history, paths.evaluation, paths.performance, paths.config):
                assert f.exists(), f
            assert not paths.checkpoint.exists()
            rec = json.loads(paths.done.read_text())
            assert rec["seconds"] > 0 and rec["epochs"] == 2 and rec["data_summary"]["n_train"] == 80
            hist = pd.read_parquet(paths.history)
            assert hist["epoch"].tolist() == [1, 2]
    capsys.readouterr()
    # a re-run skips the failed jobs, reports them and still exits 1
    before = {r["job_id"]: r["time"] for r in st.failed}
    assert run_cli(grid, "--results", results) == EXIT_FAILED
    assert "0 to run" not in capsys.readouterr().out
    assert {r["job_id"]: r["time"] for r in store.status().failed} == before
    # --retry-failed runs them again (they fail again, deterministically)
    time.sleep(1.1)
    assert run_cli(grid, "--results", results, "--retry-failed") == EXIT_FAILED
    after = {r["job_id"]: r["time"] for r in store.status().failed}
    assert after.keys() == before.keys() and all(after[j] != before[j] for j in after)


def test_dry_run_lists_the_plan_and_writes_nothing(tmp_path, capsys):
    grid = write_grid(tmp_path, FAILING)
    assert run_cli(grid, "--results", tmp_path / "results", "--dry-run") == EXIT_OK
    out = capsys.readouterr().out
    assert "4 grid points -> 4 jobs: 0 done" in out and "4 to run" in out
    assert not (tmp_path / "results").exists()


def test_bad_grid_is_exit_2_and_writes_nothing(tmp_path, capsys):
    grid = write_grid(tmp_path, FAILING.replace("nepochs: 2", "nepoch: 2"))
    assert run_cli(grid, "--results", tmp_path / "results") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nepoch" in err[0]
    assert not (tmp_path / "results").exists()


def test_cnn_on_tabular_data_is_one_rule_at_every_entry_point(tmp_path, capsys):
    """The grid runner (before writing), the training and the model builder give the same line."""
    from ctgrid.data import DataConfig, load_dataset
    from ctgrid.errors import ConfigError
    from ctgrid.models import ModelConfig, build_model
    from ctgrid.training import TrainingConfig, train
    grid = write_grid(tmp_path, "name: cnngrid\ndata: {name: moons}\nmodel: {kind: cnn}\n"
                                "training: {objective: vanilla}\n")
    assert run_cli(grid, "--results", tmp_path / "results") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.kind: got 'cnn'; allowed only for image data (mnist), not 'moons'" in err[0]
    assert not (tmp_path / "results").exists()
    with pytest.raises(ConfigError, match="allowed only for image data"):
        train(load_dataset(DataConfig(name="moons", n_train=40, n_val=10, n_test=20)),
              ModelConfig(kind="cnn"), None, TrainingConfig(objective="vanilla", nepochs=1))
    with pytest.raises(ConfigError, match="allowed only for image data"):
        build_model(ModelConfig(kind="cnn"), 2, 2)


def test_missing_data_files_are_exit_2_before_anything_is_written(tmp_path, capsys):
    grid = write_grid(tmp_path, "name: adultgrid\ndata: {name: adult}\ntraining: {objective: vanilla}\n")
    empty = tmp_path / "nodata"
    empty.mkdir()
    assert run_cli(grid, "--results", tmp_path / "results", "--data-dir", empty) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adult.csv.gz" in err[0] and str(empty) in err[0]
    assert not (tmp_path / "results").exists()


def test_plain_run_never_imports_mpi4py(tmp_path):
    grid = write_grid(tmp_path, FAILING)
    code = ("import sys\nfrom ctgrid.cli import main\n"
            f"rc = main(['run', {str(grid)!r}, '--results', {str(tmp_path / 'r')!r}, '--dry-run'])\n"
            "assert rc == 0 and 'mpi4py' not in sys.modules, sorted(m for m in sys.modules if 'mpi' in m)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, capture_output=True)


RESUME = textwrap.dedent(f"""\
    name: resume
    data: {{name: moons, n_train: 300, n_val: 50, n_test: 60}}
    generator: {{name: ecco, maxiter: 20}}
    training: {{objective: [full, vanilla], nepochs: 12, nce: 150}}
    {SMALL_EVAL}
    """)


def _comparable(store: ResultStore, job_id: str) -> dict:
    paths = store.job(job_id)
    hist = pd.read_parquet(paths.history)
    return {"history": hist.drop(columns=[c for c in hist if c.startswith("t_")]),
            "evaluation": pd.read_parquet(paths.evaluation),
            "performance": pd.read_parquet(paths.performance),
            "model": torch.load(paths.model, weights_only=True)["state_dict"]}


def assert_same_results(a: ResultStore, b: ResultStore) -> None:
    """Same jobs, same states; done jobs with equal history, metrics and weights."""
    assert a.job_ids() == b.job_ids()
    for job_id in a.job_ids():
        assert a.job(job_id).status == b.job(job_id).status, job_id
        if a.job(job_id).status != "done":
            assert a.job(job_id).error_record()["error_type"] == b.job(job_id).error_record()["error_type"]
            continue
        x, y = _comparable(a, job_id), _comparable(b, job_id)
        epochs = y["history"]["epoch"].tolist()
        assert epochs == list(range(1, len(epochs) + 1)), "no duplicate or missing epochs"
        for kind in ("history", "evaluation", "performance"):
            pd.testing.assert_frame_equal(x[kind], y[kind], check_exact=True, obj=f"{job_id} {kind}")
        assert x["model"].keys() == y["model"].keys()
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), (job_id, k)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the awaited state")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.01)


def test_sigterm_stops_after_an_epoch_and_a_rerun_resumes_to_identical_results(tmp_path):
    grid = write_grid(tmp_path, RESUME)
    assert run_cli(grid, "--results", tmp_path / "ref") == EXIT_OK
    ref = ResultStore(tmp_path / "ref" / "resume")
    store = ResultStore(tmp_path / "results" / "resume")
    cmd = [sys.executable, "-m", "ctgrid", "run", str(grid), "--results", str(tmp_path / "results")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: store.jobs_file.exists()
                 and any(store.job(j).checkpoint.exists() for j in store.job_ids()), proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "SIGTERM received" in err
    st = store.status()
    assert st.counts["started"] >= 1 and st.counts["done"] < 2, st.counts
    assert run_cli(grid, "--results", tmp_path / "results") == EXIT_OK
    assert_same_results(ref, store)
    resumed = [store.job(j).done_record()["resumed_from_epoch"] for j in store.job_ids()]
    assert max(resumed) > 0, "the interrupted job resumed from its checkpoint"


def test_ctgrid_evaluate_on_grid_jobs_reproduces_the_runners_evaluation(tmp_path):
    # a CT job whose training generator differs from the default (constant energy schedule):
    # `ctgrid evaluate` must search exactly as the runner did (never with the training generator)
    grid = write_grid(tmp_path, textwrap.dedent(f"""\
        name: same
        data: {{name: moons, n_train: 80, n_val: 20, n_test: 40}}
        generator: {{name: ecco, maxiter: 5, energy_schedule: constant}}
        training: {{nepochs: 2, nce: 10, objective: [full, vanilla]}}
        {SMALL_EVAL}
        """))
    assert run_cli(grid, "--results", tmp_path / "res") == 0
    jobs = sorted((tmp_path / "res" / "same" / "jobs").iterdir())
    assert len(jobs) == 2
    out = tmp_path / "again"
    assert main(["evaluate", *map(str, jobs), "--out", str(out)]) == 0
    for job in jobs:
        grid_ev = pd.read_parquet(job / "evaluation.parquet")
        again = pd.read_parquet(out / job.name / "evaluation.parquet")
        pd.testing.assert_frame_equal(grid_ev, again)


def test_ctgrid_train_then_evaluate_equals_the_grid_runner(tmp_path):
    """One owner of the model directory and of the seed: `ctgrid train --config <job>/config.yaml`
    writes the grid job's layout with identical weights, and `ctgrid evaluate` on the BL/CT pair
    gives the grid's evaluation."""
    grid = write_grid(tmp_path, textwrap.dedent(f"""\
        name: pair
        data: {{name: moons, n_train: 80, n_val: 20, n_test: 40}}
        generator: {{name: ecco, maxiter: 5}}
        training: {{nepochs: 2, nce: 10, objective: [full, vanilla], seed: 3}}
        {SMALL_EVAL}
        """))
    assert run_cli(grid, "--results", tmp_path / "res") == 0
    jobs = sorted((tmp_path / "res" / "pair" / "jobs").iterdir())
    trained = []
    for job in jobs:
        out = tmp_path / "train" / job.name
        assert main(["train", "--config", str(job / "config.yaml"), "--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "done.json", "history.parquet",
                                                          "model.pt"]
        assert (out / "config.yaml").read_text() == (job / "config.yaml").read_text()
        a = torch.load(job / "model.pt", weights_only=True)
        b = torch.load(out / "model.pt", weights_only=True)
        assert a["job_id"] == b["job_id"] == job.name
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        trained.append(out)
    assert main(["evaluate", *map(str, trained)]) == 0
    for job, out in zip(jobs, trained):
        pd.testing.assert_frame_equal(pd.read_parquet(job / "evaluation.parquet"),
                                      pd.read_parquet(out / "evaluation.parquet"))


def test_ctgrid_evaluate_refuses_models_of_different_data(tmp_path, capsys):
    dirs = []
    for name in ("moons", "circles"):
        out = tmp_path / name
        assert main(["train", "--data", name, "--objective", "vanilla", "--nepochs", "1",
                     "--out", str(out)]) == 0
        dirs.append(str(out))
    capsys.readouterr()
    assert main(["evaluate", *dirs, "--n-runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "trained on other data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "moons" / "evaluation.parquet").exists()
