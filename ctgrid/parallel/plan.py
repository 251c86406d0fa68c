"""The plan of a grid run: which jobs run now, in which order (longest expected first, pack
by pack), and which are skipped (done; failed unless ``--retry-failed``). Used by the
scheduler (:mod:`.scheduler`) and cut down to one task's share in array mode (:mod:`.array`);
no static chunks, no dummy jobs (docs/deviations.md, D12)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from ..store import ResultStore

if TYPE_CHECKING:
    from ..grid.job import JobConfig


@dataclass
class Plan:
    """Which of the grid's jobs run now, in which order, and which are skipped."""

    todo: list[str]                                       # in run order, pack by pack
    packs: list[list[str]] = field(default_factory=list)  # todo as packs, longest expected first
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)      # skipped (no --retry-failed)
    resume: set[str] = field(default_factory=set)         # in todo, with a checkpoint
    costs: dict[str, float] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)  # in todo: was done, files damaged -> which


def job_cost(job: JobConfig) -> float:
    """``JobConfig.expected_cost`` (the scheduler's longest-first key)."""
    return float(job.expected_cost())


def make_plan(store: ResultStore, jobs: Mapping[str, JobConfig], *, retry_failed: bool,
              pack_size: int = 1, kind: str = "cpu") -> Plan:
    """Skip done (and, unless ``retry_failed``, failed) jobs; the rest as packs of the grid's
    partition (:func:`ctgrid.grid.packs.make_packs` for device kind ``kind``), longest expected
    first. A done job whose files fail the size check (:func:`ctgrid.integrity.check_job`)
    runs again (``damaged``)."""
    from ..grid.packs import make_packs
    from ..integrity import check_job
    plan = Plan(todo=[])
    run: set[str] = set()
    try:   # only jobs with a directory can be anything but pending (one listing, not 3 stats a job)
        existing = set(os.listdir(store.root / "jobs"))
    except OSError:
        existing = set()
    for job_id in jobs:
        if job_id not in existing:
            run.add(job_id)
            continue
        state = store.job(job_id).status
        check = check_job(store.job(job_id), legacy=False) if state == "done" else None
        if check is not None and check.damaged:
            plan.damaged[job_id] = check.describe()
            run.add(job_id)
        elif state == "done":
            plan.done.append(job_id)
        elif state == "failed" and not retry_failed:
            plan.failed.append(job_id)
        else:
            run.add(job_id)
            if store.job(job_id).checkpoint.exists():
                plan.resume.add(job_id)
    plan.costs = {j: job_cost(jobs[j]) for j in run}
    packs = [[j for j in pack if j in run] for pack in make_packs(jobs, pack_size, kind)]
    plan.packs = sorted((p for p in packs if p), key=lambda p: (-sum(plan.costs[j] for j in p), p[0]))
    plan.todo = [j for p in plan.packs for j in p]
    return plan


def packing_line(device: str, kind: str, pack_size: int) -> str:
    """The ``--dry-run`` line saying where a run computes and how its packs are sized."""
    from ..device import TRAINING_ON_DEVICE, device_kind
    from ..grid.packs import device_bounds
    shown = f"auto ({device_kind(device)} here)" if device == "auto" else device
    where = "" if TRAINING_ON_DEVICE or device == "cpu" else \
        " (training on the CPU until the training loop is device-aware, docs/gpu.md)"
    memory = device_bounds(kind).pack_memory / 2**20
    return f"device: {shown}{where}; packs sized for {kind}: at most {pack_size} members and {memory:.0f} MiB each"
