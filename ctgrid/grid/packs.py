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
"""
from __future__ import annotations

import json
import math
from typing import Mapping

from .._validate import plain_dict
from ..training.config import weights
from .job import JobConfig

#: the default cap on members per pack (``ctgrid run --pack-size``)
DEFAULT_PACK_SIZE = 16
#: rough bound on the extra memory of one pack's members on a rank (bytes)
PACK_MEMORY = 256 * 2**20

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


def make_packs(jobs: Mapping[str, JobConfig], pack_size: int = DEFAULT_PACK_SIZE) -> list[list[str]]:
    """The grid's jobs as packs (lists of job ids), see the module docstring.

    ``pack_size = 1`` gives one pack per job (each job trains alone).
    """
    if pack_size < 1:
        raise ValueError(f"pack_size must be >= 1, got {pack_size}")
    groups: dict[str, list[str]] = {}
    for job_id, job in jobs.items():
        groups.setdefault(pack_key(job), []).append(job_id)
    packs: list[list[str]] = []
    for key in sorted(groups):
        ids = sorted(groups[key])
        cap = max(1, min(pack_size, PACK_MEMORY // max(1, member_bytes(jobs[ids[0]]))))
        n_packs = math.ceil(len(ids) / cap)
        packs += [ids[(i * len(ids)) // n_packs:((i + 1) * len(ids)) // n_packs] for i in range(n_packs)]
    return packs
