"""The researcher's workflow: command-line overrides, `ctgrid config`, `load_results`,
provenance, live status, aggregate on a partial grid, the torch-free CLI, warnings and
one-line errors."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

import ctgrid
from ctgrid.cli import main
from ctgrid.grid import JobConfig, load_grid
from ctgrid.parallel.runner import divergence_warning
from ctgrid.store import ResultStore

from test_scheduler import ENV, SMALL_EVAL, wait_for

GRID = textwrap.dedent(f"""\
    name: wf
    data: {{name: moons, n_train: 120, n_val: 20, n_test: 40}}
    generator: {{name: ecco, maxiter: 10}}
    training: {{objective: [full, vanilla], nepochs: 3, nce: 40}}
    {SMALL_EVAL}
    """)


@pytest.fixture()
def grid_file(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(GRID)
    return path


# ----------------------------------------------------------------------------- overrides

def test_override_sets_a_value_and_a_list_makes_an_axis(grid_file):
    g = load_grid(grid_file, ["training.nepochs=5", "training.lambda_reg=[0.1, 0.5]", "data.name=circles"])
    assert len(g) == 4 and {p.training.nepochs for p in g} == {5} and {p.data.name for p in g} == {"circles"}
    assert sorted({p.training.lambda_reg for p in g}) == [0.1, 0.5]
    assert g.source_text.startswith(f"# {grid_file} with overrides: training.nepochs=5")
    assert load_grid(g.path, ["name=other"]).name == "other"


def test_override_replaces_the_key_in_every_subgrid_block():
    g = load_grid("final", ["training.nce=100"])
    assert {p.training.nce for p in g} == {100} and len(g) == 18


@pytest.mark.parametrize("override, needle", [
    ("training.nepoch=5", "override 'training.nepoch=5': training: unknown key 'nepoch'; did you mean 'nepochs'?"),
    ("trainin.nepochs=5", "did you mean 'training'?"),
    ("nepochs", "expected KEY=VALUE"),
    ("training.nepochs=-1", "training.nepochs: got -1; allowed: >= 1"),
])
def test_bad_override_is_one_line_and_exit_2(grid_file, tmp_path, capsys, override, needle):
    assert main(["run", str(grid_file), override, "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctgrid: error: ") and needle in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_overrides_after_options_and_on_the_default_grid(grid_file, tmp_path, capsys):
    assert main(["expand", str(grid_file), "--format", "json", "training.nepochs=7"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"] == 2
    assert main(["run", "training.nepochs=2", "--results", str(tmp_path), "--dry-run"]) == 0
    assert "quickstart" in capsys.readouterr().out


def test_config_prints_a_job_that_train_accepts(grid_file, tmp_path, capsys):
    g = load_grid(grid_file)
    job_id = next(j for j, c in g.jobs().items() if c.training.objective == "full")
    assert main(["config", str(grid_file), "--job", job_id[:6]]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# grid wf, job {job_id}") and "nepochs: 3  # default: 100" in text
    assert JobConfig.from_dict(yaml.safe_load(text)).job_id == job_id       # round trip
    assert main(["config", str(grid_file)]) == 0
    assert "objective: [full, vanilla]" in capsys.readouterr().out
    assert main(["config", str(grid_file), "--job", "ffff"]) == 2


# ----------------------------------------------------------------------------- results

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    (root / "wf.yaml").write_text(GRID)
    assert main(["run", str(root / "wf.yaml"), "--results", str(root), "training.seed=3"]) == 0
    return root / "wf"


def test_load_results_is_one_wide_table(finished):
    df = ctgrid.load_results(finished)
    assert len(df) == 2 and list(df.columns[:3]) == ["grid", "job_id", "name"]
    for col in ("training.lambda_reg", "data.name", "ip", "cost", "validity", "ip_star", "accuracy",
                "robust_accuracy_fgsm_0.03", "n_counterfactuals", "final_loss", "seconds"):
        assert col in df, col
    assert set(df["training.seed"]) == {3}
    ce = ctgrid.load_results(finished, level="counterfactual")
    raw = pd.read_parquet(next(finished.glob("jobs/*/evaluation.parquet")))
    assert len(ce) == 2 * raw.groupby(["run", "individual", "lambda_energy"]).ngroups
    ip = raw[raw.metric == "ip"]["value"].mean()
    assert df.set_index("job_id").loc[raw["job_id"].iloc[0], "ip"] == pytest.approx(ip)
    assert len(ctgrid.load_results(finished, level="epoch")) == 2 * 3


def test_every_parquet_has_job_id_and_provenance(finished):
    jobs = pq.read_table(finished / "jobs.parquet").to_pandas()
    assert {"job_id", "name", "training.nepochs", "evaluation.n_runs"} <= set(jobs.columns)
    for path in finished.glob("jobs/*/*.parquet"):
        table = pq.read_table(path)
        assert table.column_names[0] == "job_id" and set(table.column("job_id").to_pylist()) == {path.parent.name}
        prov = json.loads(table.schema.metadata[b"ctgrid.provenance"])
        assert {"git_commit", "git_dirty", "versions", "command", "host", "seed"} <= set(prov)
        assert "training.seed=3" in prov["command"] and prov["versions"]["torch"]
    done = json.loads(next(finished.glob("jobs/*/done.json")).read_text())
    assert done["provenance"]["seed"] == ResultStore(finished).read_config(done["job_id"]).seed


def test_aggregate_on_a_partial_grid_lists_what_is_missing(tmp_path, capsys):
    grid = tmp_path / "part.yaml"   # the CT job diverges (fails at run time), its baseline is done
    grid.write_text(GRID.replace("name: wf", "name: part").replace(
        "objective: [full, vanilla], ", "").replace(
        "\nevaluation:", "\nsubgrids: [{training: {objective: vanilla}}, "
        "{training: {objective: full, lr: 1.0e+30}}]\nevaluation:"))
    assert main(["run", str(grid), "--results", str(tmp_path)]) == 1
    assert main(["aggregate", str(tmp_path / "part")]) == 0
    summary = (tmp_path / "part" / "aggregate" / "summary.md").read_text()
    assert "failed (NonFiniteError: every mini-batch loss of epoch 3" in summary and "not in the tables" in summary
    assert "MNIST" not in summary


# ----------------------------------------------------------------------------- status

def test_status_of_a_live_interrupted_and_finished_run(tmp_path, capsys):
    grid = tmp_path / "live.yaml"
    grid.write_text(GRID.replace("name: wf", "name: live").replace("nepochs: 3", "nepochs: 400"))
    store = ResultStore(tmp_path / "live")
    proc = subprocess.Popen([sys.executable, "-m", "ctgrid", "run", str(grid), "--results", str(tmp_path)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any("epoch 2:" in p.read_text() for p in store.root.glob("jobs/*/log.txt")),
                 proc, 120)
        assert main(["status", str(store.root)]) == 0
        out = capsys.readouterr().out
        assert f"live run: pid {proc.pid}" in out and "1 running, 0 interrupted" in out
        assert "epoch" in out and "/400" in out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 3
    finally:
        proc.kill()
    assert main(["status", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "0 running, 1 interrupted" in out and "no live run (last run ended" in out
    assert json.loads((store.root / "run.json").read_text())["finished"]


def test_status_and_help_never_import_torch(finished):
    code = ("import sys, io, contextlib; from ctgrid.cli import main\n"
            "for argv in (['status', sys.argv[1]], ['expand', 'penalties'], ['config', 'quickstart']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()): assert main(argv) == 0\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(finished)], env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_dry_run_plans_without_torch(finished, tmp_path):
    """``run --dry-run`` (what ``ctgrid slurm submit`` checks a grid with) never imports torch."""
    code = ("import sys, io, contextlib; from ctgrid.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['run', sys.argv[1], '--results', sys.argv[2], '--dry-run']) == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(finished / "grid.yaml"), str(finished.parent)],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# ----------------------------------------------------------------------------- warnings and errors

def test_a_diverged_training_is_flagged():
    assert divergence_warning(pd.DataFrame({"loss": [0.7, 0.3, 1e28]})).startswith("loss 1e+28")
    assert divergence_warning(pd.DataFrame({"loss": [0.7, 0.3, 0.31]})) is None
    assert divergence_warning(pd.DataFrame({"loss": [0.7]})) is None


def test_dry_run_refuses_what_the_run_refuses(finished, capsys):
    assert main(["run", str(finished / "grid.yaml"), "--results", str(finished.parent), "training.nepochs=4",
                 "--dry-run"]) == 2
    assert "holds results of a different grid" in capsys.readouterr().err


def test_unwritable_output_is_one_line_exit_4(finished, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["aggregate", str(finished), "--out", str(blocker / "agg")]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctgrid: error: not a directory writing ") and "\n" not in err


def test_figure_sweep_starts_at_the_clean_accuracy(finished):
    from ctgrid.aggregate.load import Results
    from ctgrid.aggregate.sweep import SWEEP_EPS, fgsm_sweep
    results = Results.load([finished])
    sweep = fgsm_sweep(results)
    assert len(sweep) == 2 * len(SWEEP_EPS) and SWEEP_EPS[0] == 0.0 and SWEEP_EPS[-1] == 0.1
    perf = results.performance()
    for job_id, g in sweep.groupby("job_id"):
        clean = perf[(perf.job_id == job_id) & (perf.metric == "accuracy")]["value"].iloc[0]
        stored = perf[(perf.job_id == job_id) & (perf.attack == "fgsm") & (perf.eps == 0.03)]["value"].iloc[0]
        assert g.set_index("eps").loc[0.0, "value"] == pytest.approx(clean)
        assert g.set_index("eps").loc[0.03, "value"] == pytest.approx(stored)   # the runner's own figure


@pytest.mark.parametrize("override, needle", [
    ("training.leave_out=5000", "training.leave_out: got 5000; allowed: -1 (none) or 0..2999"),
    ("data.domain=[[0, 1], [0, 1], [0, 1]]", "data.domain: got 3 [lower, upper] pairs; allowed: 1"),
])
def test_size_checks_refuse_before_anything_is_written(tmp_path, capsys, override, needle):
    for dry in (["--dry-run"], []):
        assert main(["run", "quickstart", override, "--results", str(tmp_path / "r"), *dry]) == 2
        assert needle in capsys.readouterr().err
        assert not (tmp_path / "r").exists()
    assert main(["expand", "quickstart", override]) == 2       # expand checks too (no data, no torch)
    assert needle in capsys.readouterr().err


def test_usage_errors_are_one_line(capsys):
    for argv in (["run", "--bogus"], ["frob"], ["run", "quickstart", "--pack-size", "0"], ["status"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ctgrid: error: ") and "\n" not in err and "usage:" not in err


def test_a_refused_results_directory_gets_no_lock(finished, capsys):
    lock = finished / ".lock"
    lock.unlink(missing_ok=True)
    assert main(["run", str(finished / "grid.yaml"), "--results", str(finished.parent), "training.nepochs=4"]) == 2
    assert "holds results of a different grid" in capsys.readouterr().err and not lock.exists()


def test_a_symlinked_job_log_is_not_followed(tmp_path):
    from ctgrid.parallel.joblog import job_log
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    log = tmp_path / "results" / "jobs" / "0123456789abcdef" / "log.txt"
    log.parent.mkdir(parents=True)
    log.symlink_to(outside)
    with job_log({"0123456789abcdef": log}) as logger:
        logger.info("hello", extra={"job": "0123456789abcdef"})
    assert outside.read_text() == "keep\n"
    assert not log.is_symlink() and "hello" in log.read_text()
