"""Packs in grid runs: the partition, results independent of the pack size and the rank
count, one member failing alone, kill-and-resume of a pack (in-process and under MPI)."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap

import pytest

from ctgrid.grid import parse_grid
from ctgrid.grid.packs import make_packs, pack_key
from ctgrid.parallel import EXIT_FAILED, EXIT_INTERRUPTED
from ctgrid.store import ResultStore

from test_mpi import HAVE_MPI, mpi_run
from test_scheduler import ENV, SMALL_EVAL, assert_same_results, run_cli, wait_for

#: 8 compatible CT jobs (loss weights, learning rate, seed, tau, lambda_energy vary), one of
#: which diverges; 2 vanilla jobs; 1 job with another batch size (its own pack)
PACKGRID = textwrap.dedent(f"""\
    name: packgrid
    data: {{name: moons, n_train: 150, n_val: 30, n_test: 40}}
    generator: {{name: ecco, maxiter: 5}}
    training: {{objective: full, nepochs: 3, nce: 40, batch_size: 30}}
    {SMALL_EVAL}
    subgrids:
      - training: {{lambda_div: [0.2, 0.5], lambda_reg: [0.1, 0.3], seed: [0, 1]}}
        generator: {{tau: 0.7}}
      - training: {{lambda_div: 0.3, lr: [0.002, 1.0e+30]}}
        generator: {{lambda_energy: 2.0}}
      - training: {{objective: vanilla, seed: [0, 1]}}
      - training: {{batch_size: 50}}
    """)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("packgrid") / "grid.yaml"
    path.write_text(PACKGRID)
    return path


@pytest.fixture(scope="module")
def alone(grid):
    """Every job trained alone (--pack-size 1): what any packing must reproduce."""
    results = grid.parent / "alone"
    assert run_cli(grid, "--results", results, "--pack-size", "1") == EXIT_FAILED   # the diverging job
    return ResultStore(results / "packgrid")


def test_partition_is_a_function_of_the_grid_alone():
    jobs = parse_grid(PACKGRID).jobs()
    packs = make_packs(jobs, 4)
    assert sorted(j for p in packs for j in p) == sorted(jobs)
    for pack in packs:
        assert len({pack_key(jobs[j]) for j in pack}) == 1
    assert [len(p) for p in packs if jobs[p[0]].training.objective == "full"
            and jobs[p[0]].training.batch_size == 30] == [3, 3, 4]       # 10 compatible, cap 4
    shuffled = list(jobs.items())
    random.Random(0).shuffle(shuffled)
    assert make_packs(dict(shuffled), 4) == packs                       # no dependence on order
    assert make_packs(jobs, 1) == [[j] for p in make_packs(jobs, 1) for j in p]
    assert all(len(p) == 1 for p in make_packs(jobs, 1))


def test_packed_run_equals_every_job_alone_and_one_member_fails_alone(grid, alone, tmp_path, capsys):
    assert run_cli(grid, "--results", tmp_path, "--pack-size", "3", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "pack 1: 3 jobs trained as one batched network" in out
    assert run_cli(grid, "--results", tmp_path, "--pack-size", "3") == EXIT_FAILED
    store = ResultStore(tmp_path / "packgrid")
    assert store.status().counts == {"done": 12, "failed": 1, "started": 0, "pending": 0}
    failed = [j for j in store.job_ids() if store.job(j).status == "failed"]
    assert store.job(failed[0]).error_record()["error_type"] == "NonFiniteError"
    assert_same_results(alone, store)
    sizes = {store.job(j).done_record()["pack_size"] for j in store.job_ids() if store.job(j).status == "done"}
    assert max(sizes) == 3


def test_an_interrupted_pack_resumes_to_the_same_results(grid, alone, tmp_path):
    store = ResultStore(tmp_path / "packgrid")
    cmd = [sys.executable, "-m", "ctgrid", "run", str(grid), "--results", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: store.jobs_file.exists()
                 and sum(store.job(j).checkpoint.exists() for j in store.job_ids()) >= 2, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert run_cli(grid, "--results", tmp_path) == EXIT_FAILED
    assert_same_results(alone, store)
    resumed = [store.job(j).done_record()["resumed_from_epoch"] for j in store.job_ids()
               if store.job(j).status == "done"]
    assert max(resumed) > 0, "the interrupted pack resumed from its members' checkpoints"


@pytest.mark.mpi
@pytest.mark.skipif(not HAVE_MPI, reason="needs mpiexec and mpi4py (the mpich extra)")
@pytest.mark.parametrize("n", [2, 3])
def test_packs_under_mpi_equal_every_job_alone(grid, alone, tmp_path, n):
    proc = mpi_run(n, grid, tmp_path, "--pack-size", "4")
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert_same_results(alone, ResultStore(tmp_path / "packgrid"))
