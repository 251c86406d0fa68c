"""The device option on a machine without a GPU: its parsing and checks (one line, exit 2,
nothing written), the rank -> GPU mapping of every launcher, packs sized per device kind, the
SLURM lines, and every device-aware path run with ``device="cpu"`` explicit giving exactly
what it gives without the option (the CPU results of earlier releases). The same paths on
CUDA: tests/test_gpu.py (skipped here)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import ctgrid.device as devmod
from ctgrid.cli import main
from ctgrid.device import check_device, device_kind, pack_kind, parse_device, resolve_device
from ctgrid.errors import ConfigError
from ctgrid.parallel.gpus import gpu_index, local_rank, process_device, rank_device
from ctgrid.parallel.settings import RunSettings
from ctgrid.store import ResultStore

from test_scheduler import ENV, SMALL_EVAL, assert_same_results, run_cli, write_grid

#: tests about a machine without CUDA (this one; a GPU machine runs tests/test_gpu.py)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="about a machine without CUDA")

#: the figures need matplotlib (not on every GPU machine); without it the tables still aggregate
NO_FIGURES = [] if importlib.util.find_spec("matplotlib") else ["--no-figures"]

GRID = textwrap.dedent(f"""\
    name: devgrid
    data: {{name: moons, n_train: 80, n_val: 20, n_test: 40}}
    generator: {{name: ecco, maxiter: 5}}
    training: {{nepochs: 2, nce: 10, objective: [full, vanilla], lambda_reg: [0.1, 0.5]}}
    {SMALL_EVAL}
    """)

# ----------------------------------------------------------------------------- the option


@pytest.mark.parametrize("text,spec", [("cpu", "cpu"), (" CUDA ", "cuda"), ("cuda:0", "cuda:0"),
                                       ("cuda:12", "cuda:12"), ("Auto", "auto")])
def test_device_values_are_parsed_to_one_spelling(text, spec):
    assert parse_device(text) == spec


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:-1", "cuda:x", "mps", "", "cuda0"])
def test_other_device_values_are_one_line_errors(text):
    with pytest.raises(ConfigError, match=r"^--device: got .*; allowed: cpu, cuda, cuda:N \(N >= 0\) or auto$"):
        parse_device(text)


def test_cuda_is_checked_against_the_devices_this_process_sees():
    for spec in ("cpu", "auto"):
        check_device(spec, count=0)
    check_device("cuda", count=1)
    check_device("cuda:1", count=2)
    with pytest.raises(ConfigError, match="got 'cuda' but this machine has no CUDA device"):
        check_device("cuda", count=0)
    with pytest.raises(ConfigError, match=r"got 'cuda:2' but this process sees 2 CUDA device\(s\); "
                                          r"allowed: cuda:0..cuda:1"):
        check_device("cuda:2", count=2)
    check_device("cuda:5", count=0, env={devmod.NO_CHECK_VAR: "1"})   # slurm submit's login node
    assert device_kind("auto", 0) == "cpu" and device_kind("auto", 3) == "cuda"
    assert device_kind("cuda:1", 0) == "cuda" and device_kind("cpu", 8) == "cpu"


@no_cuda
def test_this_machine_resolves_cpu_and_auto_to_the_cpu_and_refuses_cuda():
    assert resolve_device("cpu") == resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        process_device("cuda:0", rank=1, size=3)
    assert process_device("cuda", rank=0, size=3) == "cpu"    # the scheduler never checks out a GPU


def test_configure_changes_nothing_for_the_cpu(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    devmod.configure(torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled() == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in __import__("os").environ


# ----------------------------------------------------------------------------- ranks and GPUs

#: node-local environments as each launcher sets them (rank 5 of 9, local rank 2 of its node)
LAUNCHERS = {
    "srun": {"SLURM_PROCID": "5", "SLURM_LOCALID": "2", "SLURM_NTASKS": "9"},
    "mpirun (Open MPI) inside an allocation": {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "9",
                                               "OMPI_COMM_WORLD_LOCAL_RANK": "2", "SLURM_LOCALID": "0"},
    "mpiexec (MPICH Hydra) inside an allocation": {"PMI_RANK": "5", "PMI_SIZE": "9", "MPI_LOCALRANKID": "2",
                                                   "MPI_LOCALNRANKS": "4", "SLURM_LOCALID": "0"},
    "PMI_LOCAL_RANK (Intel MPI)": {"PMI_RANK": "5", "PMI_SIZE": "9", "PMI_LOCAL_RANK": "2"},
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_worker_takes_the_gpu_of_its_node_local_rank(launcher):
    env = LAUNCHERS[launcher]
    assert local_rank(env) == 2
    assert rank_device("cuda", rank=5, size=9, count=4, env=env) == "cuda:2"
    assert rank_device("cuda", rank=5, size=9, count=2, env=env) == "cuda:0"    # local rank mod devices
    assert rank_device("cuda", rank=5, size=9, count=1, env=env) == "cuda:0"    # --gpus-per-task=1
    assert rank_device("auto", rank=5, size=9, count=4, env=env) == "cuda:2"
    assert rank_device("auto", rank=5, size=9, count=0, env=env) == "cpu"
    assert rank_device("cuda:3", rank=5, size=9, count=4, env=env) == "cuda:3"  # pinned
    assert rank_device("cpu", rank=5, size=9, count=4, env=env) == "cpu"


def test_rank_0_never_takes_a_gpu_and_a_single_process_takes_the_first():
    for env in (*LAUNCHERS.values(), {}):
        for spec in ("cuda", "cuda:1", "auto"):
            assert rank_device(spec, rank=0, size=9, count=4, env=env) == "cpu"
    assert rank_device("cuda", rank=0, size=1, count=4, env={}) == "cuda:0"
    assert rank_device("cuda:2", rank=0, size=1, count=4, env={}) == "cuda:2"


def test_without_a_local_rank_the_launchers_visible_devices_or_the_global_rank_decide():
    assert gpu_index({"CUDA_VISIBLE_DEVICES": "3"}, rank=5, count=1) == 0
    assert gpu_index({"CUDA_VISIBLE_DEVICES": "2,3"}, rank=5, count=2) == 0
    assert gpu_index({}, rank=5, count=4) == 1
    assert gpu_index({"SLURM_LOCALID": "x"}, rank=6, count=4) == 2      # not a number: ignored
    with pytest.raises(ValueError):
        gpu_index({}, rank=1, count=0)


def test_the_workers_of_one_node_spread_over_its_gpus():
    """srun -n 5 on a node with 4 GPUs: rank 0 schedules, the 4 workers get one GPU each."""
    taken = [rank_device("cuda", rank=r, size=5, count=4, env={"SLURM_LOCALID": str(r)}) for r in range(5)]
    assert taken[0] == "cpu" and sorted(taken[1:]) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


# ----------------------------------------------------------------------------- packs per device kind

def test_packs_are_sized_by_the_device_kind_alone(monkeypatch):
    from ctgrid.grid import load_grid
    from ctgrid.grid.packs import DEFAULT_PACK_SIZE, PACK_MEMORY, default_pack_size, device_bounds, make_packs
    jobs = load_grid("penalties", ["data.name=moons"]).jobs()
    cpu = make_packs(jobs)
    assert make_packs(jobs, default_pack_size("cpu"), "cpu") == cpu      # the releases' partition
    assert (default_pack_size("cpu"), device_bounds("cpu").pack_memory) == (DEFAULT_PACK_SIZE, PACK_MEMORY)
    cuda = make_packs(jobs, default_pack_size("cuda"), "cuda")
    assert sorted(j for p in cuda for j in p) == sorted(jobs)
    assert len(cuda) < len(cpu) and max(map(len, cuda)) > DEFAULT_PACK_SIZE
    assert make_packs(jobs, default_pack_size("cuda"), "cuda") == cuda   # no timing, no free memory
    assert make_packs(jobs, 16, "cuda") == cpu   # moons members are far below either memory bound
    with pytest.raises(ValueError, match="device kind: got 'tpu'"):
        default_pack_size("tpu")
    assert RunSettings(Path("r")).pack_cap("cpu") == 16 and RunSettings(Path("r")).pack_cap("cuda") == 256
    assert RunSettings(Path("r"), pack_size=3).pack_cap("cuda") == 3
    assert RunSettings(Path("r"), shard_size=2).pack_cap("cuda") == 1
    assert pack_kind("cuda") == "cpu", "until the training loop is device-aware (docs/gpu.md)"
    monkeypatch.setattr(devmod, "TRAINING_ON_DEVICE", True)
    assert pack_kind("cuda") == "cuda" and pack_kind("cpu") == "cpu" and pack_kind("auto", 0) == "cpu"


def test_the_dry_run_shows_the_device_and_its_pack_bounds(tmp_path, capsys, monkeypatch):
    grid = write_grid(tmp_path, GRID)
    assert run_cli(grid, "--results", tmp_path / "r", "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("4 grid points -> 3 jobs")           # the summary slurm submit reads
    assert lines[2] == "device: cpu; packs sized for cpu: at most 16 members and 256 MiB each"
    monkeypatch.setattr(devmod, "TRAINING_ON_DEVICE", True)          # what phase 2 turns on
    monkeypatch.setattr(devmod, "cuda_count", lambda: 2)             # a machine with two GPUs
    assert run_cli(grid, "--results", tmp_path / "r", "--dry-run", "--device", "cuda:1") == 0
    assert "device: cuda:1; packs sized for cuda: at most 256 members and 8192 MiB each" in capsys.readouterr().out
    assert run_cli(grid, "--results", tmp_path / "r", "--dry-run", "--device", "auto", "--pack-size", "2") == 0
    assert "device: auto (cuda here); packs sized for cuda: at most 2 members" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- CUDA asked for, none here

def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ctgrid: error: "), err
    return err[0]


@no_cuda
def test_every_command_refuses_cuda_here_with_one_line_and_writes_nothing(tmp_path, capsys, data_dir):
    grid = write_grid(tmp_path, GRID)
    out = tmp_path / "out"
    for argv in (["run", str(grid), "--results", str(out), "--device", "cuda"],
                 ["run", str(grid), "--results", str(out), "--device", "cuda:0", "--dry-run"],
                 ["run", str(grid), "--results", str(out), "--device", "gpu"],
                 ["train", "--data", "moons", "--nepochs", "1", "--out", str(out / "m"), "--device", "cuda"],
                 ["evaluate", str(out / "m"), "--device", "cuda"],
                 ["aggregate", str(out), "--device", "cuda"]):
        assert main(argv) == 2, argv
        line = _one_error(capsys)
        assert "--device: got " in line and ("no CUDA device" in line or "allowed: cpu, cuda" in line), line
        assert not out.exists(), argv


@no_cuda
def test_a_cuda_run_stops_before_importing_anything_else_in_a_fresh_process(tmp_path):
    grid = write_grid(tmp_path, GRID)
    proc = subprocess.run([sys.executable, "-m", "ctgrid", "run", str(grid), "--results", str(tmp_path / "r"),
                           "--device", "cuda"], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "ctgrid: error: --device: got 'cuda' but this machine has no CUDA device (torch.cuda.is_available() "
        "is False); allowed here: cpu or auto"]
    assert not (tmp_path / "r").exists()


def test_the_default_dry_run_stays_torch_free(tmp_path):
    code = ("import sys, io, contextlib; from ctgrid.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['run', 'quickstart', '--results', {str(tmp_path)!r}, '--dry-run',"
            " '--device', 'cpu']) == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# ----------------------------------------------------------------------------- device="cpu" explicit

def test_a_grid_run_with_device_cpu_explicit_equals_the_default_run(tmp_path, capsys):
    grid = write_grid(tmp_path, GRID)
    assert run_cli(grid, "--results", tmp_path / "a") == 0
    assert run_cli(grid, "--results", tmp_path / "b", "--device", "cpu") == 0
    assert run_cli(grid, "--results", tmp_path / "c", "--device", "auto", "--pack-size", "1") == 0
    a, b, c = (ResultStore(tmp_path / x / "devgrid") for x in "abc")
    assert_same_results(a, b)
    assert_same_results(a, c)
    assert {b.job(j).done_record()["device"] for j in b.job_ids()} == {"cpu"}
    # the model-based figures (here the FGSM sweep over the saved models) with --device cpu explicit
    for out, device in (("agg-default", []), ("agg-cpu", ["--device", "cpu"])):
        assert main(["aggregate", str(a.root), "--out", str(tmp_path / out), "--bootstrap", "50", *device,
                     *NO_FIGURES]) == 0
    files = sorted(p.relative_to(tmp_path / "agg-default") for p in (tmp_path / "agg-default").rglob("*.csv"))
    assert files and files == sorted(p.relative_to(tmp_path / "agg-cpu") for p in (tmp_path / "agg-cpu").rglob("*.csv"))
    for f in files:
        assert (tmp_path / "agg-default" / f).read_bytes() == (tmp_path / "agg-cpu" / f).read_bytes(), f


def _moons():
    from ctgrid.data import DataConfig, load_dataset
    return load_dataset(DataConfig(name="moons", n_train=120, n_val=20, n_test=60))


def test_dataset_constraints_and_models_on_the_cpu_are_the_very_objects():
    from ctgrid.models import ModelConfig, build_model
    ds = _moons()
    assert ds.to("cpu") is ds and ds.device == torch.device("cpu")
    assert ds.constraints.to(torch.device("cpu")) is ds.constraints
    a = build_model(ModelConfig(), 2, 2, generator=torch.Generator().manual_seed(3))
    b = build_model(ModelConfig(), 2, 2, generator=torch.Generator().manual_seed(3), device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    from ctgrid._torch import cpu_state
    state = a.state_dict()
    assert cpu_state(state) is state    # model.pt and checkpoints: the bytes of earlier releases
    nested = {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1}]}
    assert cpu_state(nested) is nested


def test_train_and_evaluate_with_device_cpu_explicit_equal_the_calls_without():
    from ctgrid.evaluation import EvaluationConfig, evaluate_model, evaluate_pair
    from ctgrid.generators import GeneratorConfig
    from ctgrid.models import ModelConfig
    from ctgrid.training import TrainingConfig, train
    from ctgrid.training.loop import train as loop_train
    ds = _moons()
    cfg = TrainingConfig(objective="full", nepochs=2, nce=20, seed=4)
    gen = GeneratorConfig(maxiter=5)
    plain = loop_train(ds, ModelConfig(), gen, cfg)
    on_cpu = train(ds, ModelConfig(), gen, cfg, device="cpu")
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, on_cpu.model.state_dict()[k]), k
    pd.testing.assert_frame_equal(plain.history.drop(columns=["t_ce", "t_update"]),
                                  on_cpu.history.drop(columns=["t_ce", "t_update"]))
    ev = EvaluationConfig(lambda_energy=(0.5,), n_runs=2, n_individuals=6, maxiter=40, tau=0.6, n_ip_samples=20,
                          n_energy_samples=10, mmd_samples=10, pgd_eps=(0.05,), pgd_steps=3, redundancy=True,
                          save_counterfactuals=True)
    a = evaluate_model(plain.model, ds, ev)
    b = evaluate_model(plain.model, ds, ev, device="cpu")
    c = evaluate_model(plain.model, ds, ev, device="auto")
    for x, y in ((a, b), (a, c)):
        for part in ("evaluation", "performance", "counterfactuals"):
            pd.testing.assert_frame_equal(getattr(x, part), getattr(y, part), check_exact=True)
    paired = evaluate_pair(plain.model, on_cpu.model, ds, ev, device="cpu")
    pd.testing.assert_frame_equal(paired.baseline.evaluation, a.evaluation, check_exact=True)


def test_the_cli_train_and_evaluate_with_device_cpu_equal_the_default(tmp_path, capsys, data_dir):
    def train_evaluate(out: Path, *device: str) -> tuple[dict, pd.DataFrame]:
        assert main(["train", "--data", "moons", "--objective", "full", "--nepochs", "2", "--nce", "20",
                     "--maxiter", "5", "training.batch_size=40", "data.n_train=80", "--out", str(out),
                     *device]) == 0
        assert main(["evaluate", str(out), "--n-runs", "1", "--n-individuals", "4", "--maxiter", "40", "--tau", "0.6",
                     "--lambda-energy", "0.5", *device]) == 0
        return (torch.load(out / "model.pt", weights_only=True)["state_dict"],
                pd.read_parquet(out / "evaluation.parquet"))
    (w1, e1), (w2, e2) = train_evaluate(tmp_path / "a"), train_evaluate(tmp_path / "b", "--device", "cpu")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    pd.testing.assert_frame_equal(e1, e2, check_exact=True)


def test_ct_classifier_with_device_cpu_equals_the_default():
    pytest.importorskip("sklearn")
    import numpy as np
    from ctgrid import CTClassifier
    ds = _moons()
    X, y = ds.X_train.numpy(), ds.y_train.numpy()
    a = CTClassifier(nepochs=2, nce=20, maxiter=5).fit(X, y)
    b = CTClassifier(nepochs=2, nce=20, maxiter=5, device="cpu").fit(X, y)
    assert b.get_params()["device"] == "cpu"
    np.testing.assert_array_equal(a.predict_proba(X[:10]), b.predict_proba(X[:10]))
    pd.testing.assert_frame_equal(a.counterfactuals(X[:3], target=1), b.counterfactuals(X[:3], target=1))


# ----------------------------------------------------------------------------- SLURM

def _submit(tmp_path: Path, *args: str) -> int:
    grid = write_grid(tmp_path, GRID)
    return main(["slurm", "submit", str(grid), "--results", str(tmp_path / "results"), *args])


def test_slurm_submit_renders_gpus_per_task_and_checks_on_a_login_node_without_a_gpu(tmp_path, capsys):
    assert _submit(tmp_path, "--device", "cuda", "--gpus-per-task", "1", "--ntasks", "5", "--dry-run") == 0
    out = capsys.readouterr()
    assert "#SBATCH --gpus-per-task=1\n" in out.out and "#SBATCH --ntasks=5\n" in out.out
    assert "--device cuda" in out.out
    assert "# preflight" in out.err and "3 jobs" in out.err      # the dry run passed here, without CUDA
    assert _submit(tmp_path, "--device", "cuda:0", "--array", "2", "--dry-run", "--", "--gres=gpu:1") == 0
    text = capsys.readouterr().out
    assert "--gpus-per-task" not in text and "--device cuda:0" in text
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args,message", [
    (("--device", "cuda"), "--device: got 'cuda' without GPUs in the allocation; allowed: --gpus-per-task N"),
    (("--gpus-per-task", "1"), "--gpus-per-task: got 1 with --device cpu; allowed: --device cuda"),
    (("--device", "cuda:1", "--gpus-per-task", "1"), "--device: got 'cuda:1' but each task sees 1 GPU(s)"),
    (("--device", "cuda", "--gpus-per-task", "0"), "--gpus-per-task: got 0; allowed: an integer >= 1"),
    (("--device", "tpu"), "--device: got 'tpu'; allowed: cpu, cuda"),
])
def test_slurm_submit_refuses_a_device_the_allocation_cannot_serve(tmp_path, capsys, args, message):
    assert _submit(tmp_path, *args, "--dry-run") == 2
    assert message in _one_error(capsys)
    assert not (tmp_path / "results").exists()
