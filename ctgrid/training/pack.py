"""The epochs of a pack: one or more compatible training runs as one batched network.

A job alone is a pack of one; there is no second training loop. Per epoch:

1. every member's CE phase, from its own seed streams, with its own search (its
   generator settings) on its own model as it is at the start of the epoch;
2. the members are grouped by the layout of their mini-batches (term names, number of
   CE tuples): in a pack planned from a grid, one group;
3. one optimiser step per mini-batch: per group ONE batched forward over every
   member's rows ``[x_b; x'; x+; nascent]`` (each member its own shuffle order and
   CE tuples), the terms as :func:`objectives.apply_terms`, the members' losses summed
   (each member's gradient is its own), and an update of exactly the members whose
   loss is finite (the others skip, counted in ``skipped``).

Timings in the history (``t_ce``, ``t_update``) are the pack's time divided by its
size: the member's share.

A member that training gave up on (:meth:`PackEpochs.stop`, a diverged run) is *stopped*:
from then on it has no CE phase and takes no step, so its weights and optimiser state stay
those of the epoch at which it would have stopped alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .._torch import eval_mode
from ..data import Dataset
from ..seeding import derive_seed, torch_generator
from . import objectives as obj
from .config import TrainingConfig
from .counterfactuals import CETuples, ClassPools, group_bounds
from .search import PackSearch
from .stack import ModelStack, StackOptimizer

NAN = float("nan")


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return NAN
    with eval_mode(model), torch.no_grad():
        return float((model(X).argmax(dim=1) == y).float().mean())


@dataclass(frozen=True, eq=False)
class Batch:
    """One member's mini-batch: rows ``[x_b; x'; x+; nascent]`` (CE parts only where used).

    ``index`` holds each row's class of interest (true label for ``x_b`` and the
    nascent points, target for ``x'`` and ``x+``); ``names``/``matrix``/``weights``
    give the terms as ``apply_terms(matrix, row_statistics)`` and their weights.
    """

    inputs: torch.Tensor
    index: torch.Tensor
    names: tuple[str, ...]
    matrix: torch.Tensor
    weights: torch.Tensor


@dataclass(frozen=True, eq=False)
class _Group:
    """Members whose mini-batches have one layout this epoch, with their data stacked."""

    members: list[int]
    select: torch.Tensor | None      # member indices, None = the whole pack in order
    perms: torch.Tensor              # (G, N) row order of each member
    ce: tuple[torch.Tensor, ...]     # stacked CE rows and classes (empty without CE)
    bounds: list[tuple[int, int]] | None


class PackEpochs:
    """Runs the epochs of a pack; holds what stays fixed across epochs."""

    def __init__(self, dataset: Dataset, stack: ModelStack, optimizer: StackOptimizer,
                 configs: Sequence[TrainingConfig], search: PackSearch | None = None):
        self.ds, self.stack, self.opt, self.cfgs = dataset, stack, optimizer, list(configs)
        self.search = search
        self.lams = [obj.weights(c) for c in self.cfgs]
        n, bs = len(dataset.y_train), self.cfgs[0].batch_size or dataset.batch_size
        self.batch_bounds = [(s, min(s + bs, n)) for s in range(0, n, bs)]
        needs = any(c.needs_counterfactuals for c in self.cfgs)
        self.pools = ClassPools(dataset.y_train, dataset.n_classes) if needs else None
        self._terms: dict[tuple[tuple[str, ...], int, int], torch.Tensor] = {}
        self._weights: dict[tuple[tuple[int, ...], tuple[str, ...]], torch.Tensor] = {}
        self.stopped: set[int] = set()

    def stop(self, k: int) -> None:
        """Member ``k`` trains no more (no CE phase, no step); its rows are no longer meaningful."""
        self.stopped.add(k)

    def __len__(self) -> int:
        return len(self.cfgs)

    def seeds(self, k: int, epoch: int) -> dict[str, int]:
        return {p: derive_seed(self.cfgs[k].seed, p, epoch) for p in ("shuffle", "counterfactuals")}

    def names(self, k: int, m: int) -> tuple[str, ...]:
        """Member ``k``'s terms in a batch with ``m`` CE tuples (``clf`` alone without tuples)."""
        return tuple(self.lams[k]) if m and len(self.lams[k]) > 1 else ("clf",)

    def matrix(self, names: tuple[str, ...], n: int, m: int) -> torch.Tensor:
        key = (names, n, m)
        if key not in self._terms:
            self._terms[key] = obj.term_matrix(names, n, m)
        return self._terms[key]

    # ------------------------------------------------------------------ one epoch
    def run(self, epoch: int) -> list[dict[str, Any]]:
        """Train every member for epoch ``epoch``; one history row per member."""
        t0 = time.perf_counter()
        self.stack.sync()
        ces = self._ce_phases(epoch)
        t1 = time.perf_counter()
        sums, skipped = self._updates(self._groups(epoch, ces))
        t2 = time.perf_counter()
        self.stack.sync()
        K, ds = len(self), self.ds
        return [{"epoch": epoch, **sums[k],
                 "converged": ce.converged if ce is not None else NAN,
                 "search_steps": ce.steps if ce is not None else NAN,
                 "n_ce": len(ce) if ce is not None else 0,
                 "acc_train": accuracy(self.stack.models[k], ds.X_train, ds.y_train),
                 "acc_val": accuracy(self.stack.models[k], ds.X_val, ds.y_val),
                 "t_ce": (t1 - t0) / K, "t_update": (t2 - t1) / K, "skipped": skipped[k]}
                for k, ce in enumerate(ces)]

    def _ce_phases(self, epoch: int) -> list[CETuples | None]:
        """Every member's CE tuples of ``epoch`` (``None``: no CE phase in this epoch)."""
        members = [k for k, c in enumerate(self.cfgs)
                   if c.needs_counterfactuals and epoch > c.burnin_epochs and k not in self.stopped]
        if not members or self.pools is None:
            return [None] * len(self)
        if self.search is None:
            raise ValueError("a CT pack needs a PackSearch")
        found = self.search.phases(self.stack.models, members, self.cfgs, epoch, self.pools)
        return [found.get(k) for k in range(len(self))]

    def _order(self, k: int, epoch: int) -> torch.Tensor:
        n = len(self.ds.y_train)
        if not self.cfgs[k].shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch_generator(self.cfgs[k].seed, "shuffle", epoch))

    def _groups(self, epoch: int, ces: list[CETuples | None]) -> list[_Group]:
        """Members by mini-batch layout (term names, number of CE tuples), data stacked."""
        keys: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for k, ce in enumerate(ces):
            m = len(ce) if ce is not None and len(self.lams[k]) > 1 else 0
            keys.setdefault((self.names(k, m), m), []).append(k)
        groups = []
        for (_, m), ks in keys.items():
            ce_rows: tuple[torch.Tensor, ...] = ()
            if m:
                parts = [[getattr(ces[k], f) for k in ks]
                         for f in ("counterfactual", "plus", "nascent", "target", "label")]
                ce_rows = tuple(torch.stack(p) for p in parts)
            whole = len(ks) == len(self) and ks == list(range(len(self)))
            groups.append(_Group(ks, None if whole else torch.tensor(ks),
                                 torch.stack([self._order(k, epoch) for k in ks]), ce_rows,
                                 group_bounds(m, len(self.batch_bounds)) if m else None))
        return groups

    def batch(self, g: _Group, i: int) -> Batch:
        """Mini-batch ``i`` of the members of ``g``, stacked: ``inputs`` ``(G, rows, d)``."""
        s, e = self.batch_bounds[i]
        rows = g.perms[:, s:e]
        g0, g1 = g.bounds[i] if g.bounds is not None else (0, 0)
        ce = tuple(t[:, g0:g1] for t in g.ce) if g1 > g0 else ()
        return self.assemble(g.members, self.ds.X_train[rows], self.ds.y_train[rows], ce)

    def assemble(self, members: list[int], x: torch.Tensor, y: torch.Tensor,
                 ce: tuple[torch.Tensor, ...] = ()) -> Batch:
        """The stacked batch of ``members`` from their rows ``x`` ``(G, n, d)``, labels ``y`` and
        CE tuples ``ce`` = (counterfactual, plus, nascent, target, label), each ``(G, m, ...)``."""
        n, m = x.shape[1], (ce[0].shape[1] if ce else 0)
        names = self.names(members[0], m)
        rows, index = [x], [y]
        if m:
            cf, plus, nascent, target, label = ce
            n_e, n_a = obj.layout(names, n, m)
            if n_e:
                rows += [cf, plus]
                index += [target, target]
            if n_a:
                rows.append(nascent)
                index.append(label)
        key = (tuple(members), names)
        if key not in self._weights:
            self._weights[key] = torch.tensor([[self.lams[k][t] for t in names] for k in members])
        return Batch(torch.cat(rows, dim=1) if len(rows) > 1 else x,
                     torch.cat(index, dim=1) if len(index) > 1 else y,
                     names, self.matrix(names, n, m), self._weights[key])

    def evaluate(self, b: Batch, select: torch.Tensor | None = None) -> torch.Tensor:
        """The terms ``(G, T)`` of a stacked batch from ONE batched forward pass."""
        logits = self.stack.forward(b.inputs, select)
        stats = obj.row_statistics(logits, b.index, squares="reg" in b.names)
        return obj.apply_terms(b.matrix, stats)

    def _updates(self, groups: list[_Group]) -> tuple[list[dict[str, float]], list[int]]:
        """One optimiser step per mini-batch; non-finite losses skip the member's step (counted)."""
        self.stack.train()
        log = StepLog(len(self))
        for i in range(len(self.batch_bounds)):
            self.step([(g.members, g.select, self.batch(g, i)) for g in groups], log)
        return log.means(), log.skipped

    def step(self, parts: list[tuple[list[int], torch.Tensor | None, Batch]], log: StepLog) -> None:
        """One update from stacked batches ``(members, select, batch)``: the members whose
        loss is finite are stepped, the others skip."""
        total, stepped = None, []
        for members, select, b in parts:
            terms = self.evaluate(b, select)
            loss = obj.weighted_loss(terms, b.weights)
            finite = torch.isfinite(loss).tolist()
            record = torch.cat([loss[:, None], terms], dim=1).detach()
            for j, k in enumerate(members):
                if k in self.stopped:
                    finite[j] = False      # a stopped member takes no step (and logs none)
                elif finite[j]:
                    stepped.append(k)
                    log.rows[k].setdefault(b.names, []).append(record[j])
                else:
                    log.skipped[k] += 1
            part = loss.sum() if all(finite) else loss[torch.tensor(finite)].sum()
            total = part if total is None else total + part
        if not stepped or total is None:
            return
        self.stack.zero_grad()
        total.backward()
        self.opt.step(sorted(stepped))


class StepLog:
    """Per member: the loss and terms of every step it took, and how many it skipped."""

    def __init__(self, n: int):
        self.rows: list[dict[tuple[str, ...], list[torch.Tensor]]] = [{} for _ in range(n)]
        self.skipped = [0] * n

    def means(self) -> list[dict[str, float]]:
        return [_epoch_means(r) for r in self.rows]


def _epoch_means(logged: dict[tuple[str, ...], list[torch.Tensor]]) -> dict[str, float]:
    """Mean of the loss and of each term over the steps that computed it (NaN if none)."""
    sums = {k: 0.0 for k in ("loss", *obj.TERMS)}
    counts = dict.fromkeys(sums, 0)
    for names, rows in logged.items():
        if not rows:
            continue
        total = torch.stack(rows).double().sum(0).tolist()
        for k, v in zip(("loss", *names), total):
            sums[k] += v
            counts[k] += len(rows)
    return {k: sums[k] / counts[k] if counts[k] else NAN for k in sums}
