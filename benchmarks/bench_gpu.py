"""ctgrid on a GPU: throughput, the grids, and what is bit-reproducible (docs/gpu.md).

Sections (``--sections``, default all; each prints ``BENCH <name> <value> <unit>`` lines and
``# ...`` notes, and a failing section is reported and does not stop the others):

``env``      the card, torch and CUDA versions.
``eval``     the test-time evaluation of a moons pair and an MNIST pair on the device vs the CPU
             (same run): seconds, speed-up, run-to-run bit identity on the device, the largest
             relative difference to the CPU's values, and the warnings of deterministic mode.
``packs``    fused packs of 45 / 135 / 1000 moons CT models (paper settings) on the device:
             milliseconds per model and epoch, vs one model alone on the device and vs the CPU
             pack of the same size (1000: vs the CPU's 135); a member's weights vs the member
             alone (bit identity across pack sizes) and vs the CPU.
``mnist``    one MNIST CT epoch, MLP and CNN, on the device (and the MLP on the CPU).
``grid``     ``ctgrid run penalties data.name=moons name=... --device DEVICE``: wall time.
``final``    the final grid's synthetic datasets on the CPU and on the device, both aggregated:
             how many key results of the device run lie inside the CPU run's bootstrap intervals.

``packs`` and ``mnist`` train on the device, which needs the device-aware training loop (phase 2
of docs/gpu.md); before it lands they print why they did not run and a probe of the first error.
``--device cpu --quick`` runs everything small on the CPU: a check of this script on a machine
without a GPU. Files (grids' key results, logs, ``bench_gpu.json``) go to ``--out``.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--quick] [--out DIR] [--sections eval,packs]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import pandas as pd
import torch

from ctgrid import device as devmod
from ctgrid.data import DataConfig, load_dataset
from ctgrid.evaluation import EvaluationConfig
from ctgrid.evaluation.evaluate import evaluate_models
from ctgrid.generators import GeneratorConfig
from ctgrid.models import ModelConfig
from ctgrid.training import TrainingConfig
from ctgrid.training.loop import PackMember, train_pack

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SECTIONS = ("env", "eval", "packs", "mnist", "final", "grid")
FIGURES: dict[str, float] = {}


def bench(name: str, value: float, unit: str) -> None:
    FIGURES[name] = float(value)
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(on: torch.device, fn, *args, **kwargs):
    """``(seconds, fn(*args, **kwargs))``, the device synchronised on both sides."""
    sync(on)
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(on)
    return time.perf_counter() - t, out


def max_rel(a: pd.Series, b: pd.Series) -> float:
    a, b = a.to_numpy(float), b.to_numpy(float)
    ok = ~(pd.isna(a) | pd.isna(b))
    return float((abs(a[ok] - b[ok]) / (abs(b[ok]) + 1e-12)).max()) if ok.any() else 0.0


# ----------------------------------------------------------------------------- sections

def s_env(args, device: torch.device) -> None:
    note(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
         f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        note(f"device {device}: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
             f"{props.multi_processor_count} SMs; {torch.cuda.device_count()} visible")
    bench("gpu_count", torch.cuda.device_count() if torch.cuda.is_available() else 0, "count")
    note(f"training on the device: {devmod.TRAINING_ON_DEVICE} (docs/gpu.md, phase 2)")


def _pair(data: DataConfig, data_dir: str, nepochs: int):
    """A baseline and a CT model of ``data``, trained on the CPU (the same weights for both devices)."""
    ds = load_dataset(data, data_dir)
    gen = GeneratorConfig(maxiter=30, tau=0.9)
    nce = min(1000, len(ds.y_train))
    members = [PackMember(ModelConfig(), gen, TrainingConfig(objective=o, nepochs=nepochs, nce=nce, lambda_reg=0.25))
               for o in ("vanilla", "full")]
    return ds, [r.model for r in (train_pack(ds, [m])[0] for m in members)]


def s_eval(args, device: torch.device) -> None:
    cases = [("moons", DataConfig(name="moons"), 250, 100), ("mnist", DataConfig(name="mnist"), 25, 10)]
    for name, data, n_ind, runs in cases:
        if args.quick:
            n_ind, runs = min(n_ind, 20), 2
        ds, models = _pair(data, args.data_dir, 2 if args.quick else 5)
        ev = EvaluationConfig(lambda_energy=(0.1, 0.5, 1.0, 5.0, 10.0), n_runs=runs, n_individuals=n_ind,
                              test_time=True, redundancy=True)
        cpu_s, cpu = timed(torch.device("cpu"), evaluate_models, models, ds, ev, device="cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dev_s, dev = timed(device, evaluate_models, models, ds, ev, device=device)
            dev2 = evaluate_models(models, ds, ev, device=device)
        bench(f"eval_cpu_s_{name}_pair", cpu_s, "s")
        bench(f"eval_device_s_{name}_pair", dev_s, "s")
        bench(f"eval_speedup_{name}_pair", cpu_s / dev_s, "x")
        same = all(a.evaluation.equals(b.evaluation) and a.performance.equals(b.performance)
                   for a, b in zip(dev, dev2))
        bench(f"eval_device_run_to_run_identical_{name}", int(same), "bool")
        keys = ["run", "individual", "factual_index", "target", "metric"]
        bench(f"eval_same_draws_as_cpu_{name}", int(all(a.evaluation[keys].equals(b.evaluation[keys])
                                                         for a, b in zip(cpu, dev))), "bool")
        for metric in ("cost", "ip", "ip_star", "validity"):
            rel = max(max_rel(*(e.evaluation.loc[e.evaluation["metric"] == metric, "value"] for e in (d, c)))
                      for c, d in zip(cpu, dev))
            bench(f"eval_device_vs_cpu_max_rel_diff_{name}_{metric}", rel, "fraction")
        nondet = sorted({str(w.message).split(" does not have a deterministic")[0][:80] for w in caught
                         if "deterministic" in str(w.message)})
        note(f"{name}: ops without a deterministic CUDA kernel (warned): {nondet or 'none'}")


def _members(k: int, epochs: int, nce: int = 1000, model: ModelConfig | None = None, **kw) -> list[PackMember]:
    """``k`` CT members of the penalties grid's weights (paper settings), seeds by 27."""
    model = model or ModelConfig()
    gen = GeneratorConfig(name="ecco", maxiter=30, tau=0.9)
    lams = [(d, r, a) for d in (0.1, 0.5, 1.0) for r in (0.1, 0.25, 0.5) for a in (0.1, 0.25, 0.5)]
    return [PackMember(model, gen, TrainingConfig(objective="full", nepochs=epochs, nce=nce, seed=i // 27,
                                                  lambda_div=lams[i % 27][0], lambda_reg=lams[i % 27][1],
                                                  lambda_adv=lams[i % 27][2], **kw)) for i in range(k)]


def _needs_training_on(device: torch.device, what: str) -> bool:
    """Whether ``what`` can run: training on ``device`` needs phase 2 (a probe says what fails)."""
    if device.type == "cpu" or devmod.TRAINING_ON_DEVICE:
        return True
    note(f"{what}: not run: the training loop is not device-aware yet (docs/gpu.md, phase 2)")
    try:
        ds = load_dataset(DataConfig(name="moons", n_train=200, n_val=20, n_test=20)).to(device)
        train_pack(ds, _members(1, 1, nce=50))
        note("probe: a CT pack trained on the device without error: set TRAINING_ON_DEVICE?")
    except Exception as exc:  # noqa: BLE001 - the probe reports the first failure for phase 2
        note(f"probe: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return False


def s_packs(args, device: torch.device) -> None:
    if not _needs_training_on(device, "packs"):
        return
    cpu = torch.device("cpu")
    moons = load_dataset(DataConfig(name="moons"))
    on = moons.to(device)
    epochs = 1 if args.quick else 2
    sizes = (8, 45) if args.quick else (45, 135, 1000)
    train_pack(on, _members(2, 1))                                      # first-call costs
    solo_s, (solo,) = timed(device, train_pack, on, _members(1, epochs))
    bench("pack_device_model_epoch_ms_1", 1000 * solo_s / epochs, "ms")
    cpu_ms: dict[int, float] = {}
    for k in sizes:
        fused_s, packed = timed(device, train_pack, on, _members(k, epochs))
        ms = 1000 * fused_s / (k * epochs)
        bench(f"pack_device_model_epoch_ms_{k}", ms, "ms")
        bench(f"pack_device_speedup_vs_alone_{k}", 1000 * solo_s / epochs / ms, "x")
        if k <= 135:
            cpu_s, _ = timed(cpu, train_pack, moons, _members(k, 1))
            cpu_ms[k] = 1000 * cpu_s / k
            bench(f"pack_cpu_model_epoch_ms_{k}", cpu_ms[k], "ms")
        ref = cpu_ms.get(k, cpu_ms.get(max(cpu_ms)) if cpu_ms else float("nan"))
        bench(f"pack_device_speedup_vs_cpu_pack_{k}", ref / ms, "x")
        same = all(torch.equal(packed[0].model.state_dict()[n], solo.model.state_dict()[n])
                   for n in solo.model.state_dict())
        bench(f"pack_device_member_bit_identical_to_alone_{k}", int(same), "bool")
        if device.type == "cuda" and devmod.TRAINING_ON_DEVICE:
            (cpu_solo,) = train_pack(moons, _members(1, epochs))
            diff = max(float((packed[0].model.state_dict()[n].cpu() - v).abs().max())
                       for n, v in cpu_solo.model.state_dict().items())
            bench(f"pack_device_vs_cpu_max_abs_weight_diff_{k}", diff, "abs")
        del packed
        if device.type == "cuda":
            bench(f"pack_device_peak_gib_{k}", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")
            torch.cuda.reset_peak_memory_stats(device)


def s_mnist(args, device: torch.device) -> None:
    if not _needs_training_on(device, "mnist"):
        return
    data = DataConfig(name="mnist", n_train=2000) if args.quick else DataConfig(name="mnist")
    ds = load_dataset(data, args.data_dir)
    for kind in ("mlp", "cnn"):
        if kind == "cnn" and args.quick and device.type == "cpu":
            continue
        members = _members(1, 1, nce=1000, model=ModelConfig(kind=kind), batch_size=128)
        places = [device] + ([torch.device("cpu")] if kind == "mlp" and device.type != "cpu" else [])
        for where in places:
            seconds, _ = timed(where, train_pack, ds.to(where), members)
            bench(f"mnist_ct_epoch_s_{kind}_{'device' if where == device else 'cpu'}", seconds, "s")


def _ctgrid(args, argv: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """``ctgrid ARGV`` in a fresh process (under mpiexec with ``--workers`` when there is one)."""
    cmd = [sys.executable, "-m", "ctgrid", *argv]
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
    if argv[0] == "run" and args.workers > 0 and os.path.exists(mpiexec):
        cmd = [mpiexec, "-n", str(args.workers + 1), *cmd]
    timeout = max(1.0, min(timeout, args.deadline - time.monotonic() - 5))
    t = time.perf_counter()
    rc = _logged(cmd, log, timeout)
    if rc == 2 and cmd[0] == mpiexec and "launcher must belong" in log.read_text():
        note(f"{mpiexec} does not belong to mpi4py's MPI: running in one process instead")
        t = time.perf_counter()
        rc = _logged(cmd[3:], log, timeout)
    return rc, time.perf_counter() - t


def _logged(cmd: list[str], log: Path, timeout: float) -> int:
    with open(log, "w") as f:
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


def s_grid(args, device: torch.device) -> None:
    over = ["training.nepochs=2", "training.lambda_div=0.5", "training.lambda_adv=0.25"] if args.quick else []
    argv = ["run", "penalties", "data.name=moons", f"name=penalties_{device.type}", *over,
            "--results", str(args.work / "results"), "--device", args.device]
    rc, seconds = _ctgrid(args, argv, args.out / "grid_penalties.log", args.grid_timeout)
    bench(f"grid_penalties_moons_s_{device.type}", seconds, "s")
    bench(f"grid_penalties_moons_rc_{device.type}", rc, "code")
    note(f"penalties on moons ({'quick: 2 epochs, 9 settings' if args.quick else '136 jobs'}), "
         f"{args.workers} worker(s): CPU reference (README, 2 cores, 2 workers): 232 s")


def _final_grid(path: Path, quick: bool) -> None:
    import yaml
    grid = yaml.safe_load((ROOT / "grids" / "final.yaml").read_text())
    keep = ("moons",) if quick else ("lin_sep", "over", "circles", "moons")
    grid["subgrids"] = [s for s in grid["subgrids"] if s["data"]["name"] in keep]
    grid["name"] = "final_synthetic"
    if quick:
        grid["training"]["nepochs"], grid["evaluation"]["n_runs"] = 3, 10
    path.write_text(yaml.safe_dump(grid, sort_keys=False))


def s_final(args, device: torch.device) -> None:
    grid = args.work / "final_synthetic.yaml"
    _final_grid(grid, args.quick)
    tables = {}
    for label, where in (("cpu", "cpu"), ("device", args.device)):
        res = args.work / f"final-{label}"
        rc, seconds = _ctgrid(args, ["run", str(grid), "--results", str(res), "--device", where],
                              args.out / f"final_{label}.log", args.grid_timeout)
        bench(f"final_synthetic_run_s_{label}", seconds, "s")
        if rc != 0:
            raise RuntimeError(f"ctgrid run {grid.name} --device {where}: exit {rc} (see final_{label}.log)")
        out = args.out / f"final-{label}-aggregate"
        rc, _ = _ctgrid(args, ["aggregate", str(res / "final_synthetic"), "--out", str(out), "--no-figures",
                               "--device", where], args.out / f"aggregate_{label}.log", args.grid_timeout)
        if rc != 0:
            raise RuntimeError(f"ctgrid aggregate --device {where}: exit {rc} (see aggregate_{label}.log)")
        tables[label] = pd.read_csv(out / "key_results.csv")
    _compare_key_results(args, tables["cpu"], tables["device"])


def _compare_key_results(args, cpu: pd.DataFrame, dev: pd.DataFrame) -> None:
    """The device run's key results against the CPU run's bootstrap intervals (rows without an
    interval: validity, accuracies, the excluded share, compared as values)."""
    both = cpu.merge(dev, on=["dataset", "setting", "quantity"], suffixes=("_cpu", "_dev"), how="outer")
    both.to_csv(args.out / "final_key_results_cpu_vs_device.csv", index=False)
    ranged = both[both["lo_cpu"].notna()]
    inside = (ranged["value_dev"] >= ranged["lo_cpu"]) & (ranged["value_dev"] <= ranged["hi_cpu"])
    inside_diff = (ranged["diff_dev"] >= ranged["diff_lo_cpu"]) & (ranged["diff_dev"] <= ranged["diff_hi_cpu"])
    bench("final_key_results_with_interval", len(ranged), "count")
    bench("final_key_results_inside_cpu_interval", int(inside.sum()), "count")
    bench("final_key_differences_inside_cpu_interval", int(inside_diff.sum()), "count")
    bench("final_key_results_bit_equal_to_cpu", int((both["value_dev"] == both["value_cpu"]).sum()), "count")
    points = both[both["lo_cpu"].isna()]
    bench("final_point_values_max_abs_diff", float((points["value_dev"] - points["value_cpu"]).abs().max()), "abs")
    for _, row in ranged[~(inside & inside_diff)].iterrows():
        note(f"outside: {row['dataset']} {row['quantity']}: device {row['value_dev']:.4g} "
             f"(diff {row['diff_dev']:.4g}), CPU [{row['lo_cpu']:.4g}, {row['hi_cpu']:.4g}] "
             f"(diff [{row['diff_lo_cpu']:.4g}, {row['diff_hi_cpu']:.4g}])")


# ----------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (a check of the script)")
    ap.add_argument("--quick", action="store_true", help="everything small (seconds per section)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_gpu_out")))
    ap.add_argument("--data-dir", default=os.environ.get("CTGRID_DATA", str(DEFAULT_DATA)))
    ap.add_argument("--workers", type=int, default=max(0, min(8, (os.cpu_count() or 2) - 2)),
                    help="MPI workers of the grid runs (0: one process; used only where mpiexec exists)")
    ap.add_argument("--grid-timeout", type=float, default=240.0, help="seconds per grid run at most")
    ap.add_argument("--budget", type=float, default=3600.0,
                    help="seconds for all sections: a section starts only with 20 s left, grid runs "
                         "stop at the deadline")
    args = ap.parse_args()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    if any(s not in SECTIONS for s in wanted):
        ap.error(f"--sections: allowed {', '.join(SECTIONS)}")
    devmod.check_device(args.device)
    device = devmod.resolve_device(args.device)
    devmod.configure(device)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="evaluation: no counterfactual")   # short trainings
    os.environ.setdefault("CTGRID_DATA", args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as work:
        args.work = Path(work)
        args.deadline = time.monotonic() + args.budget
        for name in wanted:
            if args.deadline - time.monotonic() < 20:
                note(f"--- {name}: not run (the budget of {args.budget:.0f} s is spent)")
                failed.append(f"{name} (no time)")
                continue
            t = time.perf_counter()
            note(f"--- {name}")
            try:
                globals()[f"s_{name}"](args, device)
            except Exception as exc:  # noqa: BLE001 - one section's failure must not stop the others
                failed.append(name)
                note(f"FAILED {name}: {type(exc).__name__}: {exc}")
                traceback.print_exc(file=sys.stdout)
            bench(f"section_s_{name}", time.perf_counter() - t, "s")
    (args.out / "bench_gpu.json").write_text(json.dumps({"device": str(device), "quick": args.quick,
                                                         "failed": failed, "figures": FIGURES}, indent=1))
    note(f"failed sections: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
