"""The plan of a grid run: which jobs run now, in which order (longest expected first, pack
by pack), and which are skipped (done; failed unless ``--retry-failed``). Used by the
scheduler (:mod:`.scheduler`) and cut down to one task's share in array mode (:mod:`.array`);
no static chunks, no dummy jobs (docs/deviations.md, D12).

The order and the ETA come from a cost model that knows packs
(:func:`ctgrid.grid.packs.member_costs`: a member of a pack of K costs less than the job
alone). With several workers, :func:`balance` splits the packs that would run at the end
of the grid while other workers idle, so that the workers finish together: a split
changes where and with whom a job trains, never its results (a pack member's results are
bit-identical to its solo run's whatever the pack size, docs/DEVELOPING.md; ``--no-tail-split``
keeps the partition's packs whole).
"""
from __future__ import annotations

import heapq
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
    splits: int = 0                                       # packs split in halves for the tail (balance)


def job_cost(job: JobConfig) -> float:
    """``JobConfig.expected_cost``: the job's cost alone."""
    return float(job.expected_cost())


def pack_costs(jobs: Mapping[str, JobConfig], packs: list[list[str]]) -> dict[str, float]:
    """Each job's share of its pack's expected cost (:func:`ctgrid.grid.packs.member_costs`)."""
    from ..grid.packs import member_costs
    return {j: c for pack in packs for j, c in zip(pack, member_costs([jobs[j] for j in pack]))}


def longest_first(packs: list[list[str]], costs: Mapping[str, float]) -> list[list[str]]:
    """``packs`` by expected cost, longest first (ties: by first job id)."""
    return sorted(packs, key=lambda p: (-sum(costs[j] for j in p), p[0]))


def schedule(packs: list[list[str]], costs: Mapping[str, float], workers: int) -> list[tuple[float, float]]:
    """``(start, end)`` of each pack when ``workers`` take ``packs`` in order, each the next one
    as soon as it is free (what the MPI scheduler does), by the expected costs."""
    free = [(0.0, w) for w in range(workers)]
    out = []
    for pack in packs:
        t, w = heapq.heappop(free)
        end = t + sum(costs[j] for j in pack)
        heapq.heappush(free, (end, w))
        out.append((t, end))
    return out


def balance(plan: Plan, jobs: Mapping[str, JobConfig], workers: int, gain: float = 0.002) -> Plan:
    """``plan`` with its tail split for ``workers`` workers. By the cost model (a split costs
    the shared part of a pack twice; :func:`schedule`): the packs still running after the time
    at which the workers would finish if the work were spread evenly are the tail; repeatedly
    split the largest of them that has two or more members (halves by job id) and re-order,
    at most ``4 x workers`` times, and keep the plan with the earliest end — a split plan only
    where it ends the run earlier than the unsplit one by more than ``gain`` of its makespan.
    A function of the plan, the jobs and ``workers`` alone; ``workers`` 1 changes nothing."""
    if workers < 2 or not plan.packs:
        return plan
    packs, costs = [list(p) for p in plan.packs], dict(plan.costs)
    times = schedule(packs, costs, workers)
    best = (max(end for _, end in times), packs, costs, 0)
    for n in range(1, 4 * workers + 1):
        even = sum(costs[j] for p in packs for j in p) / workers
        tail = [i for i, (_, end) in enumerate(times) if end > even and len(packs[i]) > 1]
        if not tail:
            break
        i = max(tail, key=lambda i: (times[i][1] - times[i][0], -i))
        whole = packs[i]
        halves = [whole[:(len(whole) + 1) // 2], whole[(len(whole) + 1) // 2:]]
        costs = {**costs, **pack_costs(jobs, halves)}
        packs = longest_first(packs[:i] + halves + packs[i + 1:], costs)
        times = schedule(packs, costs, workers)
        span = max(end for _, end in times)
        if span < best[0] * (1.0 - gain):
            best = (span, packs, costs, n)
    _, packs, costs, splits = best
    return Plan(todo=[j for p in packs for j in p], packs=packs, done=plan.done, failed=plan.failed,
                resume=plan.resume, costs=costs, damaged=plan.damaged, splits=splits)


def make_plan(store: ResultStore, jobs: Mapping[str, JobConfig], *, retry_failed: bool,
              pack_size: int = 1, kind: str = "cpu") -> Plan:
    """Skip done (and, unless ``retry_failed``, failed) jobs; the rest as packs of the grid's
    partition (:func:`ctgrid.grid.packs.make_packs` for device kind ``kind``), longest expected
    first by the pack-aware cost model (:func:`pack_costs`). A done job whose files fail the
    size check (:func:`ctgrid.integrity.check_job`) runs again (``damaged``)."""
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
    packs = [p for p in ([j for j in pack if j in run] for pack in make_packs(jobs, pack_size, kind)) if p]
    plan.costs = pack_costs(jobs, packs)
    plan.packs = longest_first(packs, plan.costs)
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
