"""Packs: the grid's jobs partitioned into groups that train as one batched network.

Jobs are *compatible* when everything that shapes the batched computation is equal:
the data (and its parameters), the architecture, the mini-batch grid (batch size,
epochs, burn-in, ``nce``, shuffling, handling of non-converged counterfactuals), the
optimiser kind, the loss terms in use, and the search's kind and budget (generator
name, step size and rule, ``maxiter``, categorical handling, REVISE's VAE). Scalars
may differ inside a pack: the loss weights, learning rate, replicate (seed), the
initialisation seed, the adversarial radius and label, and the search's ``tau``, ``lambda_cost`` and
``lambda_energy``.

The partition is a function of the grid alone: groups in the order of their key,
members sorted by job id, each group cut into the fewest chunks of at most the pack
size (and of the memory bound), chunk sizes differing by at most one. A user's model
(``model.kind: module``) is a pack of its own. It never
depends on the number of ranks or on which jobs are done; a run executes, of each
pack, the members it still has to run.

Both bounds come from the *kind* of device the packs train on (:data:`DEVICE_BOUNDS`; a GPU
takes much larger packs than a core), never from timings or the memory free at run time, so
the partition is a function of the grid, the device kind and the stated bounds alone
(docs/gpu.md). The CPU's bounds are those of every release before devices existed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from .._validate import plain_dict
from ..training.config import weights
from .job import JobConfig

#: the default cap on members per pack on a CPU (``ctgrid run --pack-size``)
DEFAULT_PACK_SIZE = 16
#: rough bound on the extra memory of one pack's members on a CPU rank (bytes)
PACK_MEMORY = 256 * 2**20


@dataclass(frozen=True)
class DeviceBounds:
    """The pack bounds of one device kind: the default cap on members (``--pack-size`` not
    given), the rough bound on one pack's member memory (:func:`member_bytes`, summed) and
    the most values (members x rows x features) one joint evaluation search may hold
    (:func:`ctgrid.parallel.runner.evaluate_jointly`)."""

    pack_size: int
    pack_memory: int
    joint_evaluation: int


#: per device kind (docs/gpu.md, "Packs"): a GPU's memory holds far more members and its
#: kernels only fill up with many of them (HFTA); 8 GiB leaves a 16 GiB card room for the
#: evaluation and a second rank. Unmeasured until a GPU run (bench_gpu.py prints the
#: throughput at 45, 135 and 1000 members).
DEVICE_BOUNDS = {"cpu": DeviceBounds(DEFAULT_PACK_SIZE, PACK_MEMORY, 2**21),
                 "cuda": DeviceBounds(256, 8 * 2**30, 2**25)}


def device_bounds(kind: str) -> DeviceBounds:
    """The :class:`DeviceBounds` of device kind ``kind`` (``"cpu"`` or ``"cuda"``)."""
    try:
        return DEVICE_BOUNDS[kind]
    except KeyError:
        raise ValueError(f"device kind: got {kind!r}; allowed: {', '.join(DEVICE_BOUNDS)}") from None


def default_pack_size(kind: str = "cpu") -> int:
    """The default cap on members per pack on device kind ``kind``."""
    return device_bounds(kind).pack_size

#: fields that may differ between the members of one pack
VARYING = {"training": {"lambda_clf", "lambda_div", "lambda_reg", "lambda_adv", "lr", "seed",
                        "init_seed", "adv_eps", "adv_label"},
           "generator": {"tau", "lambda_cost", "lambda_energy"}}


def pack_key(job: JobConfig) -> str:
    """What must be equal for ``job`` to share a pack (a canonical JSON text)."""
    c = job.canonical()
    key: dict[str, object] = {"data": c.data.identity(), "model": plain_dict(c.model)}
    for group in ("training", "generator"):
        values = plain_dict(getattr(c, group))
        key[group] = {k: v for k, v in values.items() if k not in VARYING[group]}
    key["terms"] = list(weights(c.training))
    if c.model.kind == "module":    # a user's model trains alone (ctgrid.models.custom)
        key["alone"] = job.job_id
    return json.dumps(key, sort_keys=True)


def member_bytes(job: JobConfig) -> int:
    """A rough per-member memory estimate: its CE tuples (stacked for the updates) and the
    search's per-row state, row orders, weights and their optimiser moments."""
    from ..data.loaders import data_spec
    spec = data_spec(job.data)
    d = spec.n_features
    n_train = job.data.n_train or spec.n_train
    nce = job.training.nce if job.training.needs_counterfactuals else 0
    hidden = sum(job.model.widths)
    return 4 * nce * (12 * d + 4 * hidden) + 8 * n_train + 4 * (d + 1) * hidden * 4


#: what each member of a fused pack costs of the training a solo run of it costs (the rest of
#: a solo run's time, the per-step overhead, is shared by the pack): by the search a member's
#: training runs (``plain``: none). Calibrated on this project's CPU with the penalties grid on
#: moons, packs of 9 and 12 against its ``--pack-size 1`` run (README, "Measured performance"):
#: a member of 12 trained in 0.19 of its solo time with ECCo or Generic, 0.26 with REVISE.
PACK_MARGINAL = {"plain": 0.07, "search": 0.12, "revise": 0.2}


def member_costs(pack: Sequence[JobConfig]) -> list[float]:
    """Each member's expected share of its pack's cost, in the units of
    :meth:`JobConfig.expected_cost` (the scheduler's cost model: its order, ETA and the tail's
    split, :func:`ctgrid.parallel.plan.balance`): the training part times ``f + (1 - f) / K``
    for a pack of ``K`` (``f``: :data:`PACK_MARGINAL`), plus the evaluation part, which every
    member runs for itself. A pack of one costs its job's :meth:`~JobConfig.expected_cost`."""
    k = len(pack)
    out = []
    for job in pack:
        train, evaluation = job.expected_cost_parts()
        f = PACK_MARGINAL.get(job.generator.name, PACK_MARGINAL["search"]) \
            if job.training.needs_counterfactuals else PACK_MARGINAL["plain"]
        out.append(train * (f + (1.0 - f) / k) + evaluation)
    return out


def make_packs(jobs: Mapping[str, JobConfig], pack_size: int = DEFAULT_PACK_SIZE,
               kind: str = "cpu") -> list[list[str]]:
    """The grid's jobs as packs (lists of job ids), see the module docstring; ``kind`` is the
    device kind whose memory bound applies (:data:`DEVICE_BOUNDS`).

    ``pack_size = 1`` gives one pack per job (each job trains alone).
    """
    if pack_size < 1:
        raise ValueError(f"pack_size must be >= 1, got {pack_size}")
    memory = device_bounds(kind).pack_memory
    groups: dict[str, list[str]] = {}
    for job_id, job in jobs.items():
        groups.setdefault(pack_key(job), []).append(job_id)
    packs: list[list[str]] = []
    for key in sorted(groups):
        ids = sorted(groups[key])
        cap = max(1, min(pack_size, memory // max(1, member_bytes(jobs[ids[0]]))))
        n_packs = math.ceil(len(ids) / cap)
        packs += [ids[(i * len(ids)) // n_packs:((i + 1) * len(ids)) // n_packs] for i in range(n_packs)]
    return packs
