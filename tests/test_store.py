"""The results directory: layout, validation of names, lock, grid changes, status."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from ctgrid.cli import main
from ctgrid.errors import ConfigError, StoreError
from ctgrid.grid import JobConfig, parse_grid
from ctgrid.store import JobPaths, ResultStore, check_grid_name, find_stores

ROOT = Path(__file__).resolve().parents[1]

GRID = textwrap.dedent("""\
    name: storetest
    data: {name: moons, n_train: 60, n_val: 10, n_test: 20}
    generator: {name: ecco, maxiter: 5}
    training:
      objective: [full, vanilla]
      lambda_reg: [0.1, 0.5]
      nepochs: 1
      nce: 10
    evaluation: {enabled: false}
    """)


def make_store(tmp_path: Path, text: str = GRID) -> tuple[ResultStore, object]:
    grid = parse_grid(text, "g")
    store = ResultStore.for_grid(tmp_path / "results", grid.name)
    return store, grid


@pytest.mark.parametrize("bad", ["../../etc", "0123456789abcde", "0123456789ABCDEF",
                                 "0123456789abcdef/..", "", "0123456789abcdeg"])
def test_job_ids_that_could_escape_or_are_malformed_are_rejected(tmp_path, bad):
    with pytest.raises(StoreError, match="16 hex digits"):
        JobPaths(tmp_path, bad)
    with pytest.raises(StoreError):
        ResultStore(tmp_path).job(bad)


def test_job_paths_stay_inside_the_grid_directory(tmp_path):
    paths = ResultStore(tmp_path / "g").job("0123456789abcdef")
    for p in (paths.config, paths.model, paths.checkpoint, paths.done, paths.error, paths.log,
              paths.history, paths.evaluation, paths.performance):
        assert p.resolve().is_relative_to((tmp_path / "g" / "jobs" / "0123456789abcdef").resolve())


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "../x", "", ".hidden", "x" * 200])
def test_grid_names_that_are_not_one_safe_directory_are_config_errors(bad):
    with pytest.raises(ConfigError, match="grid name"):
        check_grid_name(bad)


def test_initialise_writes_grid_copy_point_table_and_resolvable_configs(tmp_path):
    store, grid = make_store(tmp_path)
    with store.lock():
        store.initialise(grid)
    assert store.grid_file.read_text() == GRID
    table = pd.read_parquet(store.jobs_file)
    assert table["point"].tolist() == [0, 1, 2, 3]
    assert table["job_id"].tolist() == list(grid.job_ids)
    # the two vanilla points share one canonical job: 4 points -> 3 jobs
    assert len(set(table["job_id"])) == 3 == len(store.job_ids())
    for job_id, job in grid.jobs().items():
        back = store.read_config(job_id)
        assert isinstance(back, JobConfig) and back.job_id == job_id and back == job.canonical()
    assert not list(store.root.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_a_different_grid_is_refused_unless_forced_and_cosmetic_edits_pass(tmp_path):
    store, grid = make_store(tmp_path)
    with store.lock():
        store.initialise(grid)
    # a comment changes the text, not the points: accepted and grid.yaml updated
    commented = "# a comment\n" + GRID
    with store.lock():
        store.initialise(parse_grid(commented, "g"))
    assert store.grid_file.read_text() == commented
    other = GRID.replace("lambda_reg: [0.1, 0.5]", "lambda_reg: [0.1, 0.25]")
    with store.lock(), pytest.raises(StoreError, match="different grid"):
        store.initialise(parse_grid(other, "g"))
    assert store.grid_file.read_text() == commented, "nothing changed by the refused run"
    with store.lock():
        store.initialise(parse_grid(other, "g"), force=True)
    assert store.grid_file.read_text() == other
    assert len(list(store.root.glob("grid.*.yaml"))) == 1 and len(list(store.root.glob("jobs.*.parquet"))) == 1
    # the job the grids share keeps its directory; the dropped one is "other"
    assert store.status().n_other == 1


def test_lock_is_exclusive_and_released_when_the_holder_is_killed(tmp_path):
    store, _ = make_store(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ctgrid.store import ResultStore\n"
         f"lock = ResultStore({str(store.root)!r}).lock().acquire()\nprint('locked', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=f"in use by another run \\(pid {holder.pid}"):
            store.lock().acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with store.lock():   # the kernel dropped the dead holder's flock: no stale lock
        pass


def test_locked_results_directory_makes_run_exit_2_with_one_line(tmp_path, capsys):
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(GRID)
    store, _ = make_store(tmp_path)
    with store.lock():
        code = main(["run", str(grid_file), "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("ctgrid: error: results directory") and "in use" in err[0]
    assert not (store.root / "jobs").exists(), "nothing written while locked"


def _fake_states(store: ResultStore, ids: list[str]) -> None:
    done, failed, running = ids[0], ids[1], ids[2]
    store.mark_done(done, {"seconds": 1.0})
    store.mark_failed(failed, ValueError("boom\nsecond line"), {"rank": 1})
    store.job(running).checkpoint.write_bytes(b"x")


def test_status_counts_states_and_lists_failures(tmp_path, capsys):
    store, grid = make_store(tmp_path)
    with store.lock():
        store.initialise(grid)
    ids = store.job_ids()
    _fake_states(store, ids)
    st = store.status()
    assert st.counts == {"done": 1, "failed": 1, "started": 1, "pending": 0}
    assert st.n_points == 4 and st.n_jobs == 3
    rec = st.failed[0]
    assert rec["error_type"] == "ValueError" and rec["message"] == "boom" and "Traceback" not in rec["message"]
    assert rec["log_path"] == str(store.job(ids[1]).log.absolute()) and rec["status"] == "failed"
    assert main(["status", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "4 grid points, 3 jobs: 1 done, 1 failed, 0 running, 1 interrupted, 0 pending" in out
    assert "no live run" in out
    assert f"failed {ids[1]}: ValueError: boom" in out
    # the results root lists every grid in it
    assert [s.root for s in find_stores(tmp_path / "results")] == [store.root]


def test_done_marker_wins_and_clears_error_and_checkpoint(tmp_path):
    store, grid = make_store(tmp_path)
    with store.lock():
        store.initialise(grid)
    job_id = store.job_ids()[0]
    paths = store.job(job_id)
    store.mark_failed(job_id, RuntimeError("x"))
    paths.checkpoint.write_bytes(b"x")
    assert paths.status == "failed"
    leftover = paths.dir / ".model.pt.x1y2.tmp"   # what a SIGKILL during a write leaves
    leftover.write_bytes(b"partial")
    store.begin(job_id)
    assert paths.status == "started" and not leftover.exists()
    store.mark_done(job_id, {"seconds": 2.5})
    assert paths.status == "done" and not paths.error.exists() and not paths.checkpoint.exists()
    assert json.loads(paths.done.read_text())["seconds"] == 2.5


def test_status_of_a_directory_without_results_is_exit_2(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "no ctgrid results" in capsys.readouterr().err
