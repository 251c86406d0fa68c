"""The device-aware paths on a CUDA device (every test marked ``gpu``: skipped without one;
``benchmarks/gpu_check.sh`` runs them on a GPU machine). Their CPU halves run everywhere in
tests/test_device.py with ``device="cpu"`` explicit.

What is asserted: tensors land where they should and files hold CPU tensors; the random draws
(factuals, targets, reference samples, initial weights) are the CPU run's exactly; a GPU run is
repeatable bit for bit (deterministic algorithms, ``CUBLAS_WORKSPACE_CONFIG``); GPU values agree
with the CPU's to float32 accuracy (they are not bit-identical: other kernels, other summation
orders). The training-loop tests need phase 2 (docs/gpu.md) and skip until it lands.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

import ctgrid.device as devmod
from ctgrid.cli import main
from ctgrid.errors import ConfigError
from ctgrid.store import ResultStore

from test_device import GRID as DEVICE_GRID
from test_device import NO_FIGURES
from test_scheduler import ENV

pytestmark = pytest.mark.gpu
#: the device under test. ``CTGRID_GPU_TESTS_DEVICE=cpu`` runs this file on the CPU: a check of
#: the tests' own code on a machine without a GPU (``benchmarks/gpu_check.sh --device cpu``), not
#: of CUDA; the tests about CUDA itself then skip
SPEC = os.environ.get("CTGRID_GPU_TESTS_DEVICE", "cuda")
CUDA = torch.device("cuda:0" if SPEC == "cuda" else "cpu")
cuda_only = pytest.mark.skipif(SPEC != "cuda", reason="about CUDA itself")
needs_phase_2 = pytest.mark.skipif(not devmod.TRAINING_ON_DEVICE,
                                   reason="the training loop is not device-aware yet (docs/gpu.md, phase 2)")

#: test_device's small grid of 3 jobs (full and vanilla on moons), under its own name
GRID = DEVICE_GRID.replace("name: devgrid", "name: gpugrid")
#: float32 work on another device: agreement to this (relative) accuracy, not bit identity
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def _restore_torch_flags():
    """``configure`` is process-wide: give the next test (maybe a CPU one) torch's flags back."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2], flags[3]
    if precision is not None:
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = conv  # type: ignore[attr-defined]


def _moons():
    from ctgrid.data import DataConfig, load_dataset
    return load_dataset(DataConfig(name="moons", n_train=200, n_val=20, n_test=100))


def _trained(objective: str = "full", seed: int = 0):
    from ctgrid.generators import GeneratorConfig
    from ctgrid.models import ModelConfig
    from ctgrid.training import TrainingConfig, train
    cfg = TrainingConfig(objective=objective, nepochs=3, nce=40, seed=seed)
    return train(_moons(), ModelConfig(), GeneratorConfig(maxiter=10), cfg).model


def _eval_config(**kw):
    from ctgrid.evaluation import EvaluationConfig
    base = dict(lambda_energy=(0.5, 1.0), n_runs=3, n_individuals=8, maxiter=40, tau=0.7, n_ip_samples=30,
                n_energy_samples=10, mmd_samples=20, mmd_permutations=20, pgd_eps=(0.05,), pgd_steps=5,
                redundancy=True, save_counterfactuals=True)
    return EvaluationConfig(**{**base, **kw})


@cuda_only
def test_cuda_is_resolved_checked_and_configured_for_determinism():
    assert devmod.resolve_device("cuda") == devmod.resolve_device("auto") == CUDA
    devmod.check_device("cuda:0")
    n = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"sees {n} CUDA device"):
        devmod.check_device(f"cuda:{n}")
    devmod.configure(CUDA)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_a_dataset_moves_once_and_keeps_its_content_identity():
    from ctgrid.evaluation.grid import fingerprint
    from ctgrid.training.checkpoint import fingerprint as train_fingerprint
    ds = _moons()
    on = ds.to(CUDA)
    assert on.device == CUDA and on.to(CUDA) is on
    for f in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        assert getattr(on, f).device == CUDA and torch.equal(getattr(on, f).cpu(), getattr(ds, f))
    assert on.constraints.lower.device == CUDA and on.constraints.step_bounds(on.X_train)[0].device == CUDA
    assert fingerprint(on.X_test, on.y_test) == fingerprint(ds.X_test, ds.y_test)   # the paired draws' seed
    assert train_fingerprint(on) == train_fingerprint(ds)                          # checkpoints resume anywhere
    assert on.leave_one_out(3)[1] == ds.leave_one_out(3)[1]


def test_models_start_from_the_cpu_runs_weights():
    from ctgrid.models import ModelConfig, build_model
    for cfg, shape in ((ModelConfig(), None), (ModelConfig(kind="cnn"), (28, 28))):
        d = 784 if shape else 2
        a = build_model(cfg, d, 10 if shape else 2, image_shape=shape, generator=torch.Generator().manual_seed(1))
        b = build_model(cfg, d, 10 if shape else 2, image_shape=shape, generator=torch.Generator().manual_seed(1),
                        device=CUDA)
        for k, v in a.state_dict().items():
            assert b.state_dict()[k].device == CUDA and torch.equal(b.state_dict()[k].cpu(), v), k


def test_an_evaluation_on_cuda_repeats_bit_for_bit_and_agrees_with_the_cpu():
    from ctgrid.evaluation import evaluate_model
    model, ds, ev = _trained(), _moons(), _eval_config()
    cpu = evaluate_model(model, ds, ev, device="cpu")
    gpu = [evaluate_model(model, ds, ev, device=SPEC) for _ in range(2)]
    assert next(model.parameters()).device.type == "cpu", "the caller's model stays where it was"
    for part in ("evaluation", "performance", "counterfactuals"):
        pd.testing.assert_frame_equal(getattr(gpu[0], part), getattr(gpu[1], part), check_exact=True)
    keys = ["run", "individual", "split", "factual_index", "factual_label", "target", "lambda_energy", "metric"]
    pd.testing.assert_frame_equal(cpu.evaluation[keys], gpu[0].evaluation[keys])   # the same draws
    # a search is a chain of threshold decisions (converged or not at each step): a float32
    # difference can move a row's stop by a step, so rows agree mostly, means closely
    for metric in ("validity", "cost", "ip", "ip_star", "energy_differential"):
        rows = cpu.evaluation["metric"] == metric
        a, b = (e.evaluation.loc[rows, "value"].to_numpy() for e in (cpu, gpu[0]))
        near = abs(a - b) <= 1e-3 + 1e-2 * abs(a)
        assert near.mean() >= 0.9, (metric, near.mean())
        assert abs(b.mean() - a.mean()) <= 0.05 * abs(a.mean()) + 1e-6, metric


def test_the_metrics_mmd_attacks_and_attributions_on_cuda_agree_with_the_cpu():
    from ctgrid.evaluation.metrics import counterfactual_metrics
    from ctgrid.evaluation.mmd import mmd_by_group, mmd_test
    from ctgrid.evaluation.predictive import integrated_gradients
    from ctgrid.evaluation.robustness import robust_accuracy
    model, ds = _trained(), _moons()
    gmodel, gds = __import__("copy").deepcopy(model).to(CUDA), ds.to(CUDA)
    x, xc = ds.X_test[:40], ds.X_test[:40] + 0.3
    t = 1 - ds.y_test[:40]
    gen = lambda: torch.Generator().manual_seed(7)   # noqa: E731 - one fresh CPU stream per side
    a = counterfactual_metrics(model, x, xc, t, reference_X=ds.X_train, reference_y=ds.y_train,
                               generator=gen(), n_samples=50, resettable=True)
    b = counterfactual_metrics(gmodel, x.to(CUDA), xc.to(CUDA), t.to(CUDA), reference_X=gds.X_train,
                               reference_y=gds.y_train, generator=gen(), n_samples=50, resettable=True)
    for k in a:
        assert b[k].device.type == "cpu"
        if k in ("validity", "validity_strict", "share_unchanged", "share_resettable"):   # counts: a row
            assert int((b[k] != a[k]).sum() - (b[k].isnan() & a[k].isnan()).sum()) <= 1, k   # at a boundary may flip
        else:
            torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=ATOL, equal_nan=True, msg=k)
    m_cpu = mmd_test(xc, ds.X_train, n_subsample=30, n_permutations=50, generator=gen(), block_size=16)
    m_gpu = mmd_test(xc.to(CUDA), gds.X_train, n_subsample=30, n_permutations=50, generator=gen(), block_size=16)
    assert abs(m_cpu.mmd2 - m_gpu.mmd2) < 1e-9 and m_cpu.p_value == m_gpu.p_value
    g = mmd_by_group(xc.to(CUDA), t.to(CUDA), gds.X_train, gds.y_train, generator=gen())
    torch.testing.assert_close(g["ip_star"], mmd_by_group(xc, t, ds.X_train, ds.y_train, generator=gen())["ip_star"],
                               rtol=1e-9, atol=1e-12, equal_nan=True)
    for attack in ("fgsm", "pgd"):
        acc = [robust_accuracy(m, X, y, (0.0, 0.05, 0.1), attack=attack, constraints=c, steps=5, generator=gen())
               for m, X, y, c in ((model, ds.X_test, ds.y_test, ds.constraints),
                                  (gmodel, gds.X_test, gds.y_test, gds.constraints))]
        torch.testing.assert_close(acc[1], acc[0], rtol=0, atol=2 / len(ds.y_test))   # a row may flip
    ig = [integrated_gradients(m, xx, tt, generator=gen())
          for m, xx, tt in ((model, x, t), (gmodel, x.to(CUDA), t.to(CUDA)))]
    torch.testing.assert_close(ig[1].cpu(), ig[0], rtol=RTOL, atol=ATOL)


def test_sns_and_the_joint_search_of_a_pack_run_on_cuda():
    from ctgrid.evaluation import evaluate_model
    from ctgrid.evaluation.evaluate import evaluate_models
    models, ds = [_trained(seed=s) for s in range(3)], _moons()
    ev = _eval_config(sns_radius=0.3, sns_steps=5, mmd_permutations=0)
    joint = evaluate_models(models, ds, ev, device=SPEC)
    for model, together in zip(models, joint):
        alone = evaluate_model(model, ds, ev, device=SPEC)
        pd.testing.assert_frame_equal(together.evaluation, alone.evaluation, check_exact=True)


def test_files_written_from_cuda_hold_cpu_tensors_and_load_without_a_gpu(tmp_path):
    from ctgrid._torch import cpu_state
    from ctgrid.training.checkpoint import load_checkpoint, save_checkpoint
    model = _trained().to(CUDA)
    opt = torch.optim.Adam(model.parameters())
    model(torch.zeros(3, 2, device=CUDA)).sum().backward()
    opt.step()
    state = cpu_state(model.state_dict())
    assert all(v.device.type == "cpu" for v in state.values())
    assert state._metadata == model.state_dict()._metadata  # type: ignore[attr-defined]
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt.state_dict(), epoch=1, history=[],
                    fp={"x": 1}, rng={})
    raw = torch.load(tmp_path / "c.pt", weights_only=True)    # no map_location: whatever the file holds
    assert all(v.device.type == "cpu" for v in raw["model"].values())
    assert all(t.device.type == "cpu" for s in raw["optimizer"]["state"].values() for t in s.values())
    assert load_checkpoint(tmp_path / "c.pt", {"x": 1})["epoch"] == 1
    code = (f"import torch; s = torch.load({str(tmp_path / 'c.pt')!r}, weights_only=True); "
            "print(sorted({str(v.device) for v in s['model'].values()}))")
    out = subprocess.run([sys.executable, "-c", code], env={**ENV, "CUDA_VISIBLE_DEVICES": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "['cpu']", out.stderr


def test_train_on_cuda_hands_back_a_model_on_cuda():
    from ctgrid.generators import GeneratorConfig
    from ctgrid.models import ModelConfig
    from ctgrid.training import TrainingConfig, train
    cfg = TrainingConfig(objective="full", nepochs=2, nce=30, seed=2)
    cpu = train(_moons(), ModelConfig(), GeneratorConfig(maxiter=10), cfg, device="cpu")
    gpu = train(_moons(), ModelConfig(), GeneratorConfig(maxiter=10), cfg, device=SPEC)
    assert next(gpu.model.parameters()).device == CUDA
    if not devmod.TRAINING_ON_DEVICE:   # phase 1: it trained on the CPU, so exactly the CPU's weights
        for k, v in cpu.model.state_dict().items():
            assert torch.equal(gpu.model.state_dict()[k].cpu(), v), k


def _run(tmp_path, name: str, *args: str) -> ResultStore:
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    assert main(["run", str(grid), "--results", str(tmp_path / name), *args]) == 0
    return ResultStore(tmp_path / name / "gpugrid")


def test_a_grid_on_cuda_repeats_bit_for_bit_and_agrees_with_the_cpu_run(tmp_path):
    cpu = _run(tmp_path, "cpu")
    gpu = [_run(tmp_path, f"gpu{i}", "--device", SPEC) for i in range(2)]
    assert gpu[0].job_ids() == cpu.job_ids()
    for job_id in cpu.job_ids():
        assert gpu[0].job(job_id).done_record()["device"] == str(CUDA)
        frames = [pd.read_parquet(s.job(job_id).evaluation) for s in (cpu, *gpu)]
        pd.testing.assert_frame_equal(frames[1], frames[2], check_exact=True)
        keys = ["run", "individual", "factual_index", "target", "metric"]
        pd.testing.assert_frame_equal(frames[0][keys], frames[1][keys])
        weights = [torch.load(s.job(job_id).model, weights_only=True)["state_dict"] for s in (cpu, gpu[0])]
        assert all(v.device.type == "cpu" for v in weights[1].values())
        if not devmod.TRAINING_ON_DEVICE:
            assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.mpi
def test_under_mpi_the_workers_take_the_gpus_and_rank_0_none(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        pytest.skip("no mpiexec beside this interpreter")
    proc = subprocess.run([mpiexec, "-n", "3", sys.executable, "-m", "ctgrid", "run", str(grid), "--results",
                           str(tmp_path / "r"), "--device", SPEC, "--pack-size", "1"], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = ResultStore(tmp_path / "r" / "gpugrid")
    n = max(1, torch.cuda.device_count())
    for job_id in store.job_ids():
        rec = store.job(job_id).done_record()
        assert rec["rank"] in (1, 2) and rec["device"] == (f"cuda:{rec['rank'] % n}" if SPEC == "cuda" else "cpu")


def test_aggregate_and_the_ct_classifier_on_cuda(tmp_path):
    store = _run(tmp_path, "r", "--device", SPEC)
    for out, device in (("a-cpu", "cpu"), ("a-gpu", SPEC)):
        assert main(["aggregate", str(store.root), "--out", str(tmp_path / out), "--bootstrap", "50",
                     "--device", device, *NO_FIGURES]) == 0
    assert (tmp_path / "a-gpu" / "summary.md").exists()
    pytest.importorskip("sklearn")
    from ctgrid import CTClassifier
    ds = _moons()
    X, y = ds.X_train.numpy(), ds.y_train.numpy()
    clf = CTClassifier(nepochs=2, nce=30, maxiter=10, device=SPEC).fit(X, y)
    assert next(clf.model_.parameters()).device == CUDA
    assert clf.predict_proba(X[:5]).shape == (5, 2)
    assert len(clf.counterfactuals(X[:4], target=1)) == 4


@needs_phase_2
def test_a_pack_on_cuda_equals_its_members_alone_on_cuda():
    from ctgrid.generators import GeneratorConfig
    from ctgrid.models import ModelConfig
    from ctgrid.training import TrainingConfig
    from ctgrid.training.loop import PackMember, train_pack
    ds = _moons().to(CUDA)
    cfgs = [TrainingConfig(objective="full", nepochs=2, nce=30, seed=s, lambda_reg=r)
            for s, r in ((0, 0.1), (1, 0.5), (2, 0.25))]
    members = [PackMember(ModelConfig(), GeneratorConfig(maxiter=10), c) for c in cfgs]
    packed = train_pack(ds, members)
    for m, p in zip(members, packed):
        (alone,) = train_pack(ds, [m])
        for k, v in alone.model.state_dict().items():
            assert torch.equal(p.model.state_dict()[k], v), k
