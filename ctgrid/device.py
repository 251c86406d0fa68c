"""Where a process computes: the ``--device`` option (``cpu``, ``cuda``, ``cuda:N``, ``auto``)
of ``ctgrid run``, ``train``, ``evaluate`` and ``aggregate`` and the ``device=`` argument of the
Python API (docs/gpu.md).

The device is a runner setting, never part of a job's identity: a job id, its seeds and its
random draws are the same on every device (the draws come from CPU ``torch.Generator``\\ s and
are moved to the device afterwards), and ``cpu``, the default, computes exactly what ctgrid did
before devices existed. Parsing is torch-free (``ctgrid run --dry-run --device cpu`` imports no
torch); only a CUDA request imports torch, to check that the device is there.

A run that asks for CUDA where there is none (or for ``cuda:N`` beyond the devices this
process sees) stops at once with one ``ctgrid: error:`` line (exit 2) before writing anything
(:func:`check_device`). ``auto`` is CUDA where this process sees a device, else the CPU.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Mapping

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_HELP", "NO_CHECK_VAR", "TRAINING_ON_DEVICE", "check_device", "configure",
           "cuda_count", "device_kind", "pack_kind", "parse_device", "resolve_device", "training_device"]

#: the allowed values, as the one-line errors and ``--help`` name them
DEVICE_HELP = "cpu, cuda, cuda:N (N >= 0) or auto"
_SPEC = re.compile(r"cpu|auto|cuda(?::(\d+))?")
#: set by ``ctgrid slurm submit``'s login-node preflight: plan for the compute nodes' device
#: without having one (the device is checked again by every task of the job)
NO_CHECK_VAR = "CTGRID_NO_DEVICE_CHECK"

#: Whether the training loop (the pack's epochs and its CE search) runs on the device. Phase 1
#: of issue 25 made everything around the training loop device-aware; until the hot path
#: (ctgrid/training/{loop,pack,stack,search,counterfactuals,objectives}.py and
#: ctgrid/generators/engine.py) is, a job trains on the CPU and its model moves to the device
#: for the evaluation. Phase 2 sets this to True (docs/gpu.md, "Phase 2").
TRAINING_ON_DEVICE = False


def parse_device(text: str, option: str = "--device") -> str:
    """The canonical spelling of a device option (``"CUDA:0 "`` -> ``"cuda:0"``); one-line
    :class:`ConfigError` for anything else."""
    spec = str(text).strip().lower()
    if _SPEC.fullmatch(spec) is None:
        raise ConfigError(f"{option}: got {text!r}; allowed: {DEVICE_HELP}")
    return spec


def _index(spec: str) -> int | None:
    m = _SPEC.fullmatch(spec)
    return int(m.group(1)) if m is not None and m.group(1) is not None else None


def cuda_count() -> int:
    """CUDA devices this process sees (0 without CUDA, a CPU-only torch included)."""
    import torch
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def device_kind(spec: str, count: int | None = None) -> str:
    """``"cpu"`` or ``"cuda"``: what ``spec`` computes on (``auto``: CUDA where ``count``, by
    default :func:`cuda_count`, is positive). Pack sizes follow it (:mod:`ctgrid.grid.packs`)."""
    spec = parse_device(spec)
    if spec == "cpu":
        return "cpu"
    if spec == "auto":
        return "cuda" if (cuda_count() if count is None else count) > 0 else "cpu"
    return "cuda"


def pack_kind(spec: str, count: int | None = None) -> str:
    """The device kind a run's packs train on, which sizes them (:mod:`ctgrid.grid.packs`):
    :func:`device_kind` once training runs on the device (:data:`TRAINING_ON_DEVICE`), else
    ``"cpu"``. A function of the option and the machine's device kind, never of timings."""
    return device_kind(spec, count) if TRAINING_ON_DEVICE else "cpu"


def check_device(spec: str, *, count: int | None = None, option: str = "--device",
                 env: Mapping[str, str] = os.environ) -> None:
    """Refuse a CUDA request this process cannot serve (one-line :class:`ConfigError`).

    ``cpu`` and ``auto`` always pass (``cpu`` without importing torch). With ``$CTGRID_NO_DEVICE_CHECK``
    set to 1 (``ctgrid slurm submit``'s login-node preflight) only the spelling is checked.
    """
    spec = parse_device(spec, option)
    if spec in ("cpu", "auto") or env.get(NO_CHECK_VAR) == "1":
        return
    n = cuda_count() if count is None else count
    index = _index(spec)
    if n == 0:
        raise ConfigError(f"{option}: got {spec!r} but this machine has no CUDA device (torch.cuda."
                          f"is_available() is False); allowed here: cpu or auto")
    if index is not None and index >= n:
        raise ConfigError(f"{option}: got {spec!r} but this process sees {n} CUDA device(s); allowed: "
                          f"cuda:0..cuda:{n - 1}, cuda, cpu or auto")


def resolve_device(spec: str, *, count: int | None = None) -> torch.device:
    """The ``torch.device`` of ``spec`` in a process of its own (no MPI rank): ``cuda`` is
    ``cuda:0``, ``auto`` that or the CPU; always with an index, so devices compare equal.
    Under MPI each worker's device comes from :func:`ctgrid.parallel.gpus.rank_device`."""
    import torch
    spec = parse_device(spec)
    if device_kind(spec, count) == "cpu":
        return torch.device("cpu")
    check_device(spec, count=count, env={})
    return torch.device(f"cuda:{_index(spec) or 0}")


def training_device(device: torch.device) -> torch.device:
    """Where the training loop runs for a job computed on ``device`` (see
    :data:`TRAINING_ON_DEVICE`)."""
    import torch
    return device if TRAINING_ON_DEVICE else torch.device("cpu")


def configure(device: torch.device) -> None:
    """Process-wide settings for reproducible CUDA runs; nothing at all for the CPU (whose
    results must stay bit for bit those of earlier releases).

    On CUDA: ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless set; cuBLAS reads it when its first
    handle is made, so this runs before any CUDA work), ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` (an op without a deterministic CUDA kernel warns instead of failing the
    run; docs/gpu.md lists what that leaves), cuDNN deterministic without benchmarking, and no
    TF32 for matmuls and convolutions (torch's default lets cuDNN convolutions use TF32), so that
    a GPU computes in full float32 as the CPU does.
    """
    import torch
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):   # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"  # type: ignore[attr-defined]
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
