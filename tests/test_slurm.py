"""``ctgrid slurm submit``: the batch-script template (golden files), option checks, the
login-node preflight, the exit-code hand-over, array shares and locks, and — on a real
one-node Slurm cluster — a submitted MPI run, a job that requeues itself after the
warning signal, and an array job with its dependent aggregation.

The cluster tests share one cluster (module fixture, ``../shared/slurm/local_slurm.sh``
started from a copy of its directory whose config adds ``AuthInfo=cred_expire=10``:
Slurm holds a requeued job for the credential lifetime, 120 s by default; and scheduler
passes every second rather than every 30-60 s, for the requeued and the dependent job). They are
skipped only where Slurm cannot run (no slurmctld/sbatch, not root, no ../shared).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ctgrid.cli import main
from ctgrid.errors import StoreError
from ctgrid.parallel.array import ArrayLock, ArrayTask, shares
from ctgrid.parallel.monitor import live_holder
from ctgrid.slurm import exitfile
from ctgrid.slurm.options import SubmitOptions
from ctgrid.slurm.template import example_aggregate_script, example_run_script, render_aggregate, render_run
from ctgrid.store import ResultStore

from test_scheduler import ENV, SMALL_EVAL, assert_same_results

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"

#: four jobs of different lengths (the 40-epoch one is long enough to be caught mid-run)
GRID = textwrap.dedent(f"""\
    name: slgrid
    data: {{name: moons, n_train: 200, n_val: 40, n_test: 60}}
    generator: {{name: ecco, maxiter: 10}}
    training: {{nce: 80}}
    {SMALL_EVAL}
    subgrids:
      - training: {{objective: full, nepochs: [4, 40], lambda_reg: 0.25}}
      - training: {{objective: vanilla, nepochs: [4, 8]}}
    """)

# ----------------------------------------------------------------------------- the template

OPTION_SETS = {
    "mpi": SubmitOptions(job_name="penalties", python="/opt/venv/bin/python",
                         run_args=("/home/u/grids/penalties.yaml", "training.nepochs=5", "--results",
                                   "/scratch/u/results", "--shard-size", "2"),
                         state_dir="/scratch/u/results/penalties/slurm", ntasks=33, cpus_per_task=2,
                         time="1-12:00:00", mem_per_cpu="1900M", partition="compute", account="proj42",
                         setup=("module load 2024r1", "module load openmpi"), max_requeues=5),
    "array": SubmitOptions(job_name="final", python="/opt/venv/bin/python",
                           run_args=("final", "--results", "/scratch/u/results"),
                           state_dir="/scratch/u/results/final/slurm", ntasks=1, time="90",
                           array=4, requeue=False),
    # one GPU per task on a GPU partition: each worker computes on its own, rank 0 leaves its idle
    "gpu": SubmitOptions(job_name="tune", python="/opt/venv/bin/python",
                         run_args=("tune", "--results", "/scratch/u/results", "--device", "cuda"),
                         state_dir="/scratch/u/results/tune/slurm", ntasks=5, cpus_per_task=4,
                         time="04:00:00", partition="gpu", device="cuda", gpus_per_task=1),
}


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_rendered_scripts_equal_their_golden_files(name):
    """Golden files: review a diff of tests/golden/ when the template changes on purpose
    (regenerate with CTGRID_REGOLD=1)."""
    opts = OPTION_SETS[name]
    texts = {f"{name}.sbatch": render_run(opts, comment=f"golden: {name}"),
             f"{name}-aggregate.sbatch": render_aggregate(opts, (f"{opts.state_dir[:-6]}",),
                                                          comment=f"golden: {name}")}
    for file, text in texts.items():
        if os.environ.get("CTGRID_REGOLD"):
            (GOLDEN / file).write_text(text)
        assert text == (GOLDEN / file).read_text(), file


def test_checked_in_scripts_are_the_template_rendered():
    assert (ROOT / "slurm" / "run_grid.sbatch").read_text() == example_run_script()
    assert (ROOT / "slurm" / "aggregate.sbatch").read_text() == example_aggregate_script()


def test_the_scripts_are_valid_bash():
    for text in (*(render_run(OPTION_SETS[name], comment="x") for name in sorted(OPTION_SETS)),
                 example_run_script(), example_aggregate_script()):
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_example_script_without_ctgrid_python_stops_with_exit_2_before_launching(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "CTGRID_PYTHON"}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "run_grid.sbatch"), "quickstart"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot import ctgrid; set CTGRID_PYTHON" in proc.stderr
    assert "srun" not in proc.stderr and "mpiexec" not in proc.stderr


@pytest.mark.parametrize("code,restart,requeued,rc", [
    (3, 0, True, 3), (3, 1, True, 3), (3, 2, False, 3),    # interrupted: requeue while below the limit
    (0, 0, False, 0), (1, 0, False, 1), (2, 0, False, 2), (4, 0, False, 4),
    (None, 0, False, 137),                                  # a rank died: srun's status, no file
])
def test_the_script_requeues_only_after_exit_3_and_below_the_limit(tmp_path, code, restart, requeued, rc):
    """The rendered script run by bash with stand-ins for srun (rank 0 writes the code to
    $CTGRID_EXIT_FILE, every rank exits 0) and scontrol."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write = f'echo {code} > "$CTGRID_EXIT_FILE"; exit 0' if code is not None else "exit 137"
    (bin_dir / "srun").write_text(f"#!/bin/sh\n{write}\n")
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    opts = SubmitOptions(job_name="g", python=sys.executable, run_args=("g",), state_dir=str(tmp_path / "st"),
                         max_requeues=2)
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}", "SLURM_JOB_ID": "77",
           "SLURM_RESTART_COUNT": str(restart)}
    proc = subprocess.run(["bash", "-c", render_run(opts, comment="t")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    calls = (tmp_path / "scontrol.log").read_text() if (tmp_path / "scontrol.log").exists() else ""
    assert calls == ("requeue 77\n" if requeued else "")
    assert not (tmp_path / "st" / "exit.77").exists()


# ----------------------------------------------------------------------------- submit's checks

@pytest.fixture()
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """An ``sbatch`` on PATH that records its arguments and answers a job id."""
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\necho 4242\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def submit(grid: Path, results: Path, *extra: str) -> int:
    return main(["slurm", "submit", str(grid), "--results", str(results), *extra])


def test_slurm_time_formats_in_seconds():
    from ctgrid.slurm.options import time_seconds
    assert [time_seconds(t) for t in ("90", "1:30", "02:00:00", "1-2", "1-2:30", "1-0:0:5")] == \
        [5400, 90, 7200, 93600, 95400, 86405]
    assert time_seconds("UNLIMITED") > 10**9


@pytest.mark.parametrize("args,message", [
    (("--time", "2h"), "--time: got '2h'; allowed: MM, MM:SS, HH:MM:SS"),
    (("--time", "1:30"), "--time: got '1:30'; allowed: more than 120 s"),
    (("--mem-per-cpu", "2GB"), "--mem-per-cpu: got '2GB'; allowed: a positive integer with an optional unit"),
    (("--partition", "a b"), "--partition: got 'a b'; allowed: letters"),
    (("--account", "x;rm"), "--account: got 'x;rm'; allowed"),
    (("--ntasks", "1"), "--ntasks: got 1; allowed: an integer >= 2"),
    (("--array", "3", "--ntasks", "4"), "--ntasks: got 4 with --array; allowed: 1"),
    (("--array", "0"), "--array: got 0; allowed: an integer >= 1"),
    (("--array", "99999999"), "--array: got 99999999; allowed: an integer in 1..20000"),
    (("--cpus-per-task", "99999"), "--cpus-per-task: got 99999; allowed: an integer in 1.."),
    (("--array", "2", "--shard-size", "2"), "--shard-size: got 2 with --array; allowed: 1"),
    (("--max-requeues", "-1"), "--max-requeues: got -1; allowed: an integer >= 0"),
    (("--no-requeue", "--max-requeues", "2"), "--max-requeues: given with --no-requeue"),
    (("--setup", " "), "--setup: got ' '; allowed: one non-empty shell line"),
    (("--python", "/nonexistent/python"), "--python: cannot run '/nonexistent/python'"),
])
def test_bad_options_are_one_line_exit_2_and_nothing_is_written_or_submitted(tmp_path, fake_sbatch, capsys,
                                                                             args, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    assert submit(grid, tmp_path / "results", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctgrid: error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "results").exists() and not fake_sbatch.exists()


def test_the_preflight_uses_the_jobs_interpreter_and_the_runs_own_checks(tmp_path, fake_sbatch, capsys,
                                                                           monkeypatch):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    no_ctgrid = tmp_path / "python-without-ctgrid"
    no_ctgrid.write_text(f"#!/bin/sh\nexec {shutil.which('python3', path='/usr/bin:/bin')} -I \"$@\"\n")
    no_ctgrid.chmod(0o755)
    assert submit(grid, tmp_path / "results", "--python", str(no_ctgrid)) == 2
    assert "--python: " + str(no_ctgrid) + " cannot import ctgrid" in capsys.readouterr().err
    monkeypatch.setenv("CTGRID_DATA", str(tmp_path / "nodata"))
    assert main(["slurm", "submit", "final", "--results", str(tmp_path / "results")]) == 2
    assert "refused it: dataset 'adult': missing" in capsys.readouterr().err   # the data, checked by the job's python
    assert not (tmp_path / "results").exists() and not fake_sbatch.exists()


def test_dry_run_prints_both_scripts_and_writes_and_submits_nothing(tmp_path, fake_sbatch, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    assert submit(grid, tmp_path / "results", "--ntasks", "5", "--aggregate", "--dry-run",
                  "--", "--qos=short") == 0
    out = capsys.readouterr()
    assert out.out.count("#!/bin/bash") == 2 and "#SBATCH --ntasks=5" in out.out
    assert f"ctgrid run {grid} --results {tmp_path / 'results'}" in out.out
    assert "#SBATCH --mem-per-cpu" not in out.out      # the cluster's default unless given
    assert "4 grid points -> 4 jobs" in out.err
    assert not (tmp_path / "results").exists() and not fake_sbatch.exists()


def test_the_run_options_reach_the_script(tmp_path, fake_sbatch, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    assert submit(grid, tmp_path / "results", "--pack-size", "4", "--no-tail-split", "--retry-failed",
                  "--dry-run") == 0
    assert (f"ctgrid run {grid} --results {tmp_path / 'results'} --pack-size 4 --retry-failed "
            f"--no-tail-split") in capsys.readouterr().out


def test_submit_writes_the_script_and_submits_it_with_a_dependent_aggregation(tmp_path, fake_sbatch, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    assert submit(grid, tmp_path / "results", "--array", "3", "--aggregate", "--", "--qos=short") == 0
    out = capsys.readouterr().out
    state = tmp_path / "results" / "slgrid" / "slurm"
    (run_script,) = state.glob("run-*.sbatch")
    (agg_script,) = state.glob("aggregate-*.sbatch")
    assert "--array-task \"$SLURM_ARRAY_TASK_ID\" --array-size 3" in run_script.read_text()
    calls = fake_sbatch.read_text().splitlines()
    assert calls == [f"--parsable --qos=short {run_script}",
                     f"--parsable --dependency=afterany:4242 --qos=short {agg_script}"]
    assert "submitted job 4242" in out and f"ctgrid status {tmp_path / 'results' / 'slgrid'}" in out
    assert not (tmp_path / "results" / "slgrid" / "jobs").exists(), "the job, not submit, runs the grid"


def test_slurm_submit_never_imports_torch_or_pandas(tmp_path):
    code = ("import sys, io, contextlib; from ctgrid.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['slurm', 'submit', 'quickstart', '--results', {str(tmp_path)!r}, '--dry-run']) == 0\n"
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- exit code hand-over

def test_the_exit_code_goes_to_the_file_from_rank_0_and_every_rank_exits_0(tmp_path):
    path = tmp_path / "exit"
    for code in (0, 1, 2, 3, 4):
        path.unlink(missing_ok=True)
        assert exitfile.hand_over(code, {"CTGRID_EXIT_FILE": str(path), "PMI_RANK": "1"}) == 0
        assert not path.exists()
        assert exitfile.hand_over(code, {"CTGRID_EXIT_FILE": str(path), "SLURM_PROCID": "0"}) == 0
        assert path.read_text() == f"{code}\n"
    assert exitfile.hand_over(3, {}) == 3                                   # no batch script: as before
    assert exitfile.hand_over(130, {"CTGRID_EXIT_FILE": str(path)}) == 130  # not a run outcome
    # the launcher's rank wins over the batch step's SLURM_PROCID (hydra inside an allocation)
    assert not exitfile.is_rank_zero({"PMI_RANK": "2", "SLURM_PROCID": "0"})


# ----------------------------------------------------------------------------- array mode

def test_array_shares_cover_the_grid_once_longest_first_and_depend_on_the_grid_only():
    from ctgrid.grid import load_grid
    from ctgrid.parallel.scheduler import job_cost
    jobs = load_grid("penalties").jobs()
    parts = shares(jobs, 16, 4)
    ids = [j for part in parts for pack in part for j in pack]
    assert sorted(ids) == sorted(jobs) and len(ids) == len(set(ids))
    load = [sum(job_cost(jobs[j]) for pack in part for j in pack) for part in parts]
    biggest = max(sum(job_cost(jobs[j]) for j in pack) for part in parts for pack in part)
    assert max(load) - min(load) <= biggest          # greedy longest-first bound
    assert shares(dict(reversed(list(jobs.items()))), 16, 4) == parts   # not the order of the grid
    assert [[len(p) for p in part] for part in shares(jobs, 1, 3)] == [[1] * len(part) for part in shares(jobs, 1, 3)]


def test_array_locks_exclude_a_full_run_and_the_same_task_but_not_other_tasks(tmp_path):
    store = ResultStore(tmp_path / "g")
    t0 = ArrayLock(store, ArrayTask(0, 3)).acquire()
    try:
        t1 = ArrayLock(store, ArrayTask(1, 3)).acquire()
        assert "array task 0/3" in live_holder(store) and "array task 1/3" in live_holder(store)
        with pytest.raises(StoreError, match="already running array task 0"):
            ArrayLock(store, ArrayTask(0, 3)).acquire()
        with pytest.raises(StoreError, match="in use by another run"):
            store.lock().acquire()
        t1.release()
    finally:
        t0.release()
    assert live_holder(store) is None
    with store.lock():
        with pytest.raises(StoreError, match="in use by a \\(non-array\\) run"):
            ArrayLock(store, ArrayTask(2, 3)).acquire()


def test_array_tasks_run_in_process_give_the_full_runs_results(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    assert main(["run", str(grid), "--results", str(tmp_path / "full")]) == 0
    for task in (2, 0, 1, 0):     # any order; a rerun of a task takes the same, done, jobs
        assert main(["run", str(grid), "--results", str(tmp_path / "arr"), "--array-task", str(task),
                     "--array-size", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("0 to run") == 0 and "1/1 jobs done" in out.splitlines()[-1]
    assert_same_results(ResultStore(tmp_path / "full" / "slgrid"), ResultStore(tmp_path / "arr" / "slgrid"))
    assert main(["status", str(tmp_path / "arr" / "slgrid")]) == 0
    status = capsys.readouterr().out
    assert "4 jobs: 4 done, 0 failed, 0 running" in status and "no live run (last run ended" in status
    assert main(["run", str(grid), "--array-task", "3", "--array-size", "3"]) == 2
    assert main(["run", str(grid), "--array-task", "1"]) == 2


# ----------------------------------------------------------------------------- a real Slurm cluster

LOCAL_SLURM = ROOT.parent / "shared" / "slurm"
TIMEOUT = 600
needs_slurm = pytest.mark.skipif(
    shutil.which("slurmctld") is None or shutil.which("sbatch") is None or os.geteuid() != 0
    or not (LOCAL_SLURM / "local_slurm.sh").exists(),
    reason="needs Slurm installed (slurmctld, sbatch), root and ../shared/slurm/local_slurm.sh")


def _munged() -> set[str]:
    found = subprocess.run(["pgrep", "-u", "munge", "-x", "munged"], capture_output=True, text=True)
    return set(found.stdout.split())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict[str, str]:
    """A one-node cluster for this module; requeued jobs wait 10 s (cred_expire) instead of 120 s."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 6817)) == 0:
            pytest.skip("a Slurm controller is already running on this machine")
    base = tmp_path_factory.mktemp("slurm")
    scripts = base / "bin"
    scripts.mkdir()
    shutil.copy(LOCAL_SLURM / "local_slurm.sh", scripts)
    conf = (LOCAL_SLURM / "slurm.conf.example").read_text()
    (scripts / "slurm.conf.example").write_text(conf + "AuthInfo=cred_expire=10\n"
                                                "SchedulerParameters=bf_interval=1,sched_interval=1\n")
    munged_before = _munged()
    state = base / "cluster"
    subprocess.run(["bash", str(scripts / "local_slurm.sh"), "start", str(state)], check=True, timeout=120,
                   capture_output=True)
    try:
        yield {**ENV, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(scripts / "local_slurm.sh"), "stop", str(state)], timeout=60)
        for pid in _munged() - munged_before:
            os.kill(int(pid), signal.SIGTERM)


@pytest.fixture(scope="module")
def slgrid(tmp_path_factory) -> tuple[Path, ResultStore]:
    """The grid and its in-process results: what every Slurm run must reproduce."""
    base = tmp_path_factory.mktemp("slgrid")
    grid = base / "grid.yaml"
    grid.write_text(GRID)
    assert main(["run", str(grid), "--results", str(base / "ref")]) == 0
    return grid, ResultStore(base / "ref" / "slgrid")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> ResultStore:
    """The shipped quickstart grid run in this process (README's first command)."""
    base = tmp_path_factory.mktemp("quickstart")
    assert main(["run", "quickstart", "--results", str(base)]) == 0
    return ResultStore(base / "quickstart")


def cli_submit(env: dict[str, str], grid: Path | str, results: Path, *extra: str) -> list[str]:
    """``ctgrid slurm submit`` as a user types it; the job ids it printed (run, then aggregate)."""
    proc = subprocess.run([sys.executable, "-m", "ctgrid", "slurm", "submit", str(grid), "--results",
                           str(results), "--overcommit", "--mem-per-cpu", "100M", "--time", "10:00", *extra],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return [line.split()[3] for line in proc.stdout.splitlines() if line.startswith("ctgrid: submitted job")]


def job_records(env: dict[str, str], job_id: str) -> list[dict[str, str]]:
    """``scontrol show job`` of a job (of each task of an array), as key=value dicts."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in proc.stdout.splitlines()]


def wait_ended(env: dict[str, str], job_id: str) -> list[dict[str, str]]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < TIMEOUT:
        recs = job_records(env, job_id)
        if recs and all(r.get("JobState") not in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING",
                                                   "COMPLETING", "REQUEUE_HOLD") for r in recs):
            return recs
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end in {TIMEOUT} s: {job_records(env, job_id)}")


def logs(store: ResultStore) -> str:
    return "".join(p.read_text() for p in sorted((store.root / "slurm").glob("*.out")))


@pytest.mark.slow
@needs_slurm
def test_submitted_mpi_job_requeues_itself_after_the_warning_signal_and_reproduces_the_run(cluster, slgrid,
                                                                                          tmp_path):
    """`ctgrid slurm submit --ntasks 3` (rank 0 + 2 workers under srun), USR1 mid-run: the job
    requeues itself once, resumes and ends with exit 0 and the in-process run's results."""
    grid, reference = slgrid
    (job,) = cli_submit(cluster, grid, tmp_path, "--ntasks", "3", "--max-requeues", "2")
    store = ResultStore(tmp_path / "slgrid")
    t0 = time.monotonic()
    while not list((store.root / "jobs").glob("*/checkpoint.pt")):   # a job is training
        assert time.monotonic() - t0 < TIMEOUT and job_records(cluster, job)[0]["JobState"] != "COMPLETED"
        time.sleep(0.05)
    # what Slurm sends 120 s before the limit (--signal=USR1@120): every task of the step
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster, check=True)
    (rec,) = wait_ended(cluster, job)
    text = logs(store)
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "1"), text
    assert "requeueing job" in text and text.count("(restart 1, at most 2)") == 1
    assert_same_results(reference, store)     # no job lost, no epoch run twice
    resumed = [store.job(j).done_record()["resumed_from_epoch"] for j in store.job_ids()]
    assert max(resumed) > 0, "the requeued job resumed from a checkpoint"


@pytest.mark.slow
@needs_slurm
def test_submitted_quickstart_equals_the_in_process_run(cluster, quickstart, tmp_path):
    """`ctgrid slurm submit quickstart --ntasks 3`: rank 0 + 2 workers under srun, exit 0, the
    files of `ctgrid run quickstart` bit for bit."""
    (job,) = cli_submit(cluster, "quickstart", tmp_path, "--ntasks", "3")
    (rec,) = wait_ended(cluster, job)
    store = ResultStore(tmp_path / "quickstart")
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "0"), logs(store)
    assert_same_results(quickstart, store)


@pytest.mark.slow
@needs_slurm
def test_array_job_reproduces_the_run_and_its_dependent_aggregation_writes_the_summary(cluster, quickstart,
                                                                                        tmp_path):
    """`--array 3 --aggregate` on the quickstart grid: three single-process tasks (one idle: two
    jobs), the in-process files bit for bit, and the dependent aggregation's summary."""
    job, agg = cli_submit(cluster, "quickstart", tmp_path, "--array", "3", "--aggregate")
    reference = quickstart
    tasks = wait_ended(cluster, job)
    store = ResultStore(tmp_path / "quickstart")
    assert sorted(r["ArrayTaskId"] for r in tasks) == ["0", "1", "2"]
    assert {(r["JobState"], r["ExitCode"], r["Restarts"]) for r in tasks} == {("COMPLETED", "0:0", "0")}, \
        logs(store)                                         # a normal end never requeues
    assert_same_results(reference, store)
    (rec,) = wait_ended(cluster, agg)
    assert (rec["JobState"], rec["ExitCode"]) == ("COMPLETED", "0:0"), logs(store)
    assert (store.root / "aggregate" / "summary.md").exists()
