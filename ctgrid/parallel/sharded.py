"""Sharded jobs: a group of ranks trains one model, splitting each epoch's CE search.

Every rank of the group runs the same training (same seed, same data, same
deterministic updates), so the models stay identical without sending weights.
In every CT epoch the training calls the ``generate`` hook built here: each rank
searches the counterfactuals of its contiguous slice of the epoch's factuals (sized by each
rank's speed in the previous epoch's search: :func:`weighted_bounds`) and
one buffer ``Allgatherv`` on the group's communicator (after a tiny ``allgather`` of
error flags) gives every rank the full :class:`~ctgrid.generators.CounterfactualBatch`,
in the order of the factuals.

Unlike the reference's sequential mode (docs/deviations.md, D14) nothing goes
through the disk or the root, and all ranks of a group resume from the same
checkpoint: the leader reads it and sends its bytes to the others, which train
from a private copy (only the leader writes into the results). Every rank calls
the same collectives in the same order: the hook once per CT epoch, and
:func:`group_stop` once per epoch. A search error on one rank travels through the
allgather, so all ranks of the group fail the job together.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

from ..errors import JobFailedError
from ..generators import CounterfactualBatch, SearchEngine

T = TypeVar("T")


def shard_bounds(n: int, k: int, r: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``r`` of ``k`` among ``n`` rows: contiguous, sizes differ by <= 1."""
    return (r * n) // k, ((r + 1) * n) // k


def weighted_bounds(n: int, rates: list[float]) -> list[tuple[int, int]]:
    """Contiguous rows ``[lo, hi)`` of each rank among ``n``, in proportion to ``rates`` (each
    rank's measured rows per second; equal rates give :func:`shard_bounds`), every rank at
    least one row while ``n`` allows. A function of its arguments only: every rank of a group
    computes the same bounds from the same allgathered rates."""
    k = len(rates)
    if n < k or not all(r > 0 for r in rates) or len(set(rates)) == 1:
        return [shard_bounds(n, k, r) for r in range(k)]
    total = sum(rates)
    cuts, acc = [0], 0.0
    for r in rates[:-1]:
        acc += r
        cuts.append(min(max(int(round(n * acc / total)), cuts[-1] + 1), n - (k - len(cuts))))
    cuts.append(n)
    return list(zip(cuts, cuts[1:]))


class ShardedGenerate:
    """The training's ``generate(model, x, target, **kw)`` hook on ``group``: the search of
    the engine ``build()`` returns, split over the group's ranks.

    Made by ``wrap_search`` (:func:`ctgrid.training.train`), which passes the training's own
    engine builder: the hook knows nothing of jobs, only of the engine and the group.
    """

    def __init__(self, group: Any, build: Callable[[], SearchEngine], *, leader: bool):
        self.group, self.build, self.leader = group, build, leader
        self._engine: SearchEngine | None = None
        #: seconds this rank spent searching its slice, waiting for the group's slowest rank
        #: (the error-flag allgather) and transferring the counterfactuals (Allgatherv)
        self.seconds = {"search": 0.0, "wait": 0.0, "transfer": 0.0}
        #: every rank's rows per second in the last search (allgathered): the next slices'
        #: sizes (a rank on a slower or busier core gets fewer rows); ``None``: equal slices
        self.rates: list[float] | None = None
        self._buffer: torch.Tensor | None = None   # the gathered rows, kept between epochs

    @classmethod
    def wrapper(cls, group: Any, *, leader: bool) -> Callable[[Callable[[], SearchEngine]], ShardedGenerate]:
        """The ``wrap_search`` hook of a training on ``group``."""
        return lambda build: cls(group, build, leader=leader)

    def engine(self) -> SearchEngine:
        """The search engine; built by the leader first, so that the members only read
        REVISE's cached VAE (collective: the first CT epoch of every rank calls it)."""
        if self._engine is None:
            error = None
            if self.leader:
                self._engine, error = _attempt(self.build)
            error = self.group.bcast(error, root=0)
            if error is None:
                if not self.leader:
                    self._engine, error = _attempt(self.build)
                error = next((e for e in self.group.allgather(error) if e is not None), None)
            if error is not None:
                self._engine = None
                raise JobFailedError(f"building the generator failed: {error}")
        assert self._engine is not None
        return self._engine

    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                 **kw: Any) -> CounterfactualBatch:
        engine = self.engine()
        size, rank = self.group.Get_size(), self.group.Get_rank()
        bounds = weighted_bounds(len(x), self.rates or [1.0] * size)
        lo, hi = bounds[rank]
        t0 = time.perf_counter()   # the slice copied: a fresh, aligned tensor, as the whole batch is
        part, error = _attempt(lambda: engine.search(model, x[lo:hi].clone(), target[lo:hi], **kw))
        t1 = time.perf_counter()
        rate = (hi - lo) / (t1 - t0) if hi > lo and t1 > t0 else 0.0
        reports = self.group.allgather((error, rate))
        t2 = time.perf_counter()
        errors = [(r, e) for r, (e, _) in enumerate(reports) if e is not None]
        if errors:
            r, err = errors[0]
            raise JobFailedError(f"counterfactual search failed on group rank {r}: {err}")
        assert part is not None
        new = [rt for _, rt in reports]   # smoothed: one epoch's draw of hard rows is noise
        self.rates = new if self.rates is None else [(a + b) / 2 for a, b in zip(self.rates, new)]
        gathered = self._gather(part, bounds)
        self.seconds["search"] += t1 - t0
        self.seconds["wait"] += t2 - t1
        self.seconds["transfer"] += time.perf_counter() - t2
        d = x.shape[1]
        return CounterfactualBatch(x, target, gathered[:, :d].to(x.dtype), gathered[:, 2 * d] > 0.5,
                                   gathered[:, 2 * d + 1].long(), gathered[:, d:2 * d].to(x.dtype))

    def _gather(self, part: CounterfactualBatch, bounds: list[tuple[int, int]]) -> torch.Tensor:
        """Every rank's rows ``[counterfactual, nascent, converged, steps]`` in the order of the
        factuals, by one in-place ``Allgatherv`` in the points' dtype (float32: flags and step
        counts below 2**24 travel exactly; float64 points travel as float64), on the device of
        the points (the buffers themselves travel through host memory).

        The rows are gathered in a buffer this hook keeps from epoch to epoch (each rank writes
        its slice straight into it) and copied out once: an MNIST epoch's 31 MB received into
        freshly allocated memory took 25-33 ms of page faults inside the MPI copy, into the kept
        buffer ~8 ms (plus ~5 ms for the copy)."""
        from mpi4py import MPI
        d = part.counterfactual.shape[1]
        width = 2 * d + 2
        dtype = torch.float64 if part.counterfactual.dtype == torch.float64 else torch.float32
        n = bounds[-1][1]
        if self._buffer is None or self._buffer.dtype != dtype or self._buffer.numel() < n * width:
            self._buffer = torch.empty(n * width, dtype=dtype)
        rows = self._buffer[:n * width].view(n, width)
        lo, hi = bounds[self.group.Get_rank()]
        mine = rows[lo:hi]
        mine[:, :d] = part.counterfactual
        mine[:, d:2 * d] = part.nascent
        mine[:, 2 * d] = part.converged
        mine[:, 2 * d + 1] = part.steps
        counts = [(b - a) * width for a, b in bounds]
        kind = MPI.DOUBLE if dtype == torch.float64 else MPI.FLOAT
        self.group.Allgatherv(MPI.IN_PLACE, [rows.numpy(), counts, [a * width for a, _ in bounds], kind])
        device = part.counterfactual.device   # the caller keeps its own rows: the buffer is the next epoch's
        return rows.clone() if device.type == "cpu" else rows.to(device)


def _attempt(fn: Callable[[], T]) -> tuple[T | None, str | None]:
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - shipped to the other ranks, re-raised there
        return None, f"{type(exc).__name__}: {exc}"


def group_stop(group: Any, local: Callable[[], bool]) -> Callable[[], bool]:
    """A stop check the whole group agrees on (logical OR over its ranks; collective)."""
    from mpi4py import MPI
    return lambda: bool(group.allreduce(bool(local()), op=MPI.LOR))


def read_checkpoint(path: Path) -> bytes | None:
    """The leader's checkpoint bytes, to send to the members (``None``: start afresh)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@contextmanager
def private_checkpoint(data: bytes | None) -> Iterator[Path]:
    """A member's own checkpoint file, holding the leader's bytes; removed afterwards."""
    tmp = tempfile.mkdtemp(prefix=f"ctgrid-shard-{os.getpid()}-")
    path = Path(tmp) / "checkpoint.pt"
    try:
        if data is not None:
            path.write_bytes(data)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
