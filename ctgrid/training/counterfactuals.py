"""The counterfactual phase of a CT epoch (docs/deviations.md, M3, R2).

Once per epoch, with the model as it is at the start of the epoch: draw ``nce``
factuals without replacement, draw each a target uniformly among the classes
other than the model's prediction, run ONE batched search, draw one training
sample ``x+`` of the target class per counterfactual, handle non-converged
counterfactuals, protect constrained features of ``x+``. All draws come from the
one ``torch.Generator`` passed in, in a fixed order that does not depend on the
search outcome.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..constraints import Constraints
from ..errors import ConfigError
from ..generators import CounterfactualBatch

Generate = Callable[..., CounterfactualBatch]


@dataclass(frozen=True, eq=False)
class CETuples:
    """The counterfactual tuples of one epoch (one row each) and search statistics.

    ``counterfactual``, ``plus``, ``nascent``: ``(m, d)``; ``target`` (``t_j``) and
    ``label`` (the adversarial loss's label: the factual's true class, or with
    ``adv_label = "predicted"`` the model's prediction at the factual) ``(m,)``. ``converged`` and ``steps`` are
    the share of converged searches and the mean step count over all ``n_drawn``.
    """

    counterfactual: torch.Tensor
    plus: torch.Tensor
    nascent: torch.Tensor
    target: torch.Tensor
    label: torch.Tensor
    n_drawn: int
    converged: float
    steps: float

    def __len__(self) -> int:
        return self.target.numel()


class ClassPools:
    """Training-row indices grouped by class, to draw uniform samples of a given class."""

    def __init__(self, y: torch.Tensor, n_classes: int):
        counts = torch.bincount(y, minlength=n_classes)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            raise ConfigError(f"training data has no sample of class {int(empty[0])}; "
                              f"CT needs x+ samples of every class")
        self.order = torch.argsort(y, stable=True)
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts

    def draw(self, classes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One uniformly drawn training index of class ``classes[j]`` for every ``j``."""
        u = torch.rand(classes.shape, generator=gen, dtype=torch.float64)
        count = self.counts[classes]
        pos = torch.minimum((u * count).long(), count - 1)
        return self.order[self.offsets[classes] + pos]


def draw_targets(pred: torch.Tensor, n_classes: int, gen: torch.Generator) -> torch.Tensor:
    """A class drawn uniformly among the ``n_classes - 1`` classes other than ``pred``."""
    shift = torch.randint(1, n_classes, pred.shape, generator=gen)
    return (pred + shift) % n_classes


@dataclass(frozen=True, eq=False)
class CEDraws:
    """The random part of a CE phase: factual rows, the model's predictions, targets, ``x+``."""

    idx: torch.Tensor
    x: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    plus: torch.Tensor


def draw_factuals(model: nn.Module, X: torch.Tensor, pools: ClassPools, *, nce: int, n_classes: int,
                  gen: torch.Generator) -> CEDraws:
    """``nce`` factuals without replacement, a target per factual among the classes other than
    the model's prediction, one ``x+`` of the target class each (all from ``gen``, in this order)."""
    idx = torch.randperm(X.shape[0], generator=gen)[:nce]
    x = X[idx]
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    target = draw_targets(pred, n_classes, gen)
    return CEDraws(idx, x, pred, target, X[pools.draw(target, gen)])


def ce_tuples(draws: CEDraws, result: CounterfactualBatch, y: torch.Tensor, *, nonconverged: str,
              constraints: Constraints, adv_label: str = "true") -> CETuples:
    """Replace or drop non-converged rows of a search result; protect constrained features of ``x+``."""
    nce = len(draws.idx)
    if len(result) != nce:
        raise RuntimeError(f"generate returned {len(result)} counterfactuals for {nce} factuals")
    conv = result.converged.bool()
    cf, nascent = result.counterfactual.detach(), result.nascent.detach()
    plus, target = draws.plus, draws.target
    label = draws.pred.to(y.device) if adv_label == "predicted" else y[draws.idx]
    if nonconverged == "replace":
        cf = torch.where(conv[:, None], cf, plus)
    else:
        cf, plus, nascent, target, label = (t[conv] for t in (cf, plus, nascent, target, label))
    if constraints.is_constrained:
        plus = constraints.protect(plus, cf)
    return CETuples(cf, plus, nascent, target, label, n_drawn=nce,
                    converged=float(conv.float().mean()), steps=float(result.steps.float().mean()))


def counterfactual_phase(model: nn.Module, X: torch.Tensor, y: torch.Tensor, pools: ClassPools, *,
                         nce: int, n_classes: int, generate: Generate, eps: float,
                         gen: torch.Generator, nonconverged: str,
                         constraints: Constraints, adv_label: str = "true") -> CETuples:
    """Draw factuals, targets and ``x+``; search; replace or drop non-converged rows; protect ``x+``.

    ``adv_label`` labels the nascent counterfactuals of the adversarial loss: ``"true"``
    (the factual's ground truth: the reference's newest release and ctgrid's default) or
    ``"predicted"`` (the model's prediction at the factual at the start of the epoch, as the
    reference's earlier releases).
    """
    draws = draw_factuals(model, X, pools, nce=nce, n_classes=n_classes, gen=gen)
    result = generate(model, draws.x, draws.target, nascent_eps=eps)
    return ce_tuples(draws, result, y, nonconverged=nonconverged, constraints=constraints,
                     adv_label=adv_label)


def group_bounds(m: int, n_groups: int) -> list[tuple[int, int]]:
    """Split ``m`` rows into ``n_groups`` contiguous ranges; the first ``m % n_groups`` get one extra."""
    base, extra = divmod(m, n_groups)
    bounds, start = [], 0
    for i in range(n_groups):
        stop = start + base + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds
