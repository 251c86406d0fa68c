"""The batched gradient-search engine behind every counterfactual generator.

All factuals of a call are searched at once as one ``(n, d)`` tensor. A row is
*converged* as soon as the softmax probability of its target reaches ``tau``;
converged rows are frozen (dropped from the active set) while the others go on,
for at most ``maxiter`` SGD steps. One forward and one backward pass over the
active rows per step serve both the convergence check and the gradient.

The *nascent* counterfactual of a row is the last point of its path with
``||x'_t - x||_inf <= eps`` (the factual if none); it is tracked on the fly, so
the path is never stored.

One-hot groups (``constraints.groups``) are handled as ``categorical`` says:
continuous (``none``), the state projected after every step (``project``), seen
projected by the model at every step (``step``: the state stays continuous, the gradient
passes straight through) or projected at the end (``final``; a projected row stays
converged only if it still reaches ``tau``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, overload

import torch
import torch.nn.functional as F
from torch import nn

from .._torch import eval_mode
from ..constraints import Constraints
from .penalties import SearchState

Penalty = Callable[[SearchState], torch.Tensor]


class Codec(Protocol):
    """A latent space to search in (REVISE): deterministic ``encode`` and ``decode``."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class CounterfactualBatch:
    """Result of one batched search; every field has one entry (row) per factual.

    Shapes: ``factual``, ``counterfactual``, ``nascent``: ``(n, d)``;
    ``target``, ``converged``, ``steps``: ``(n,)``.
    """

    factual: torch.Tensor
    target: torch.Tensor
    counterfactual: torch.Tensor
    converged: torch.Tensor
    steps: torch.Tensor
    nascent: torch.Tensor

    def __len__(self) -> int:
        return self.target.numel()

    FIELDS = ("factual", "target", "counterfactual", "converged", "steps", "nascent")

    @staticmethod
    def concat(parts: Sequence["CounterfactualBatch"]) -> "CounterfactualBatch":
        """Concatenate results row-wise (e.g. shards gathered from several ranks)."""
        return CounterfactualBatch(*(torch.cat([getattr(p, f) for p in parts])
                                     for f in CounterfactualBatch.FIELDS))

    def split(self, sizes: Sequence[int]) -> list["CounterfactualBatch"]:
        """Consecutive row blocks of ``sizes`` (e.g. the members of a joint search)."""
        cols = [getattr(self, f).split(list(sizes)) for f in CounterfactualBatch.FIELDS]
        return [CounterfactualBatch(*block) for block in zip(*cols)]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients during a search; both restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


class Refiner(Protocol):
    """A stage that refines a search's result (e.g. :class:`ctgrid.generators.sns.StableNeighborSearch`)."""

    def refine(self, model: nn.Module, batch: CounterfactualBatch) -> CounterfactualBatch: ...


class _Rows:
    """The still-active rows of a search, compacted: state, factual, target, running nascent,
    and their positions ``idx`` in the caller's batch; finished rows are written to ``out``."""

    def __init__(self, state: torch.Tensor, factual: torch.Tensor, target: torch.Tensor):
        self.state, self.factual, self.target = state, factual, target
        self.nascent = factual
        n = factual.shape[0]
        self.idx = torch.arange(n, device=factual.device)
        self._at: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.out = CounterfactualBatch(factual, target, torch.empty_like(factual),
                                       torch.zeros(n, dtype=torch.bool, device=factual.device),
                                       torch.zeros(n, dtype=torch.long, device=factual.device),
                                       torch.empty_like(factual))

    @overload
    def at(self, value: torch.Tensor) -> torch.Tensor: ...

    @overload
    def at(self, value: float | torch.Tensor) -> float | torch.Tensor: ...

    def at(self, value: float | torch.Tensor) -> float | torch.Tensor:
        """A per-factual setting at the active rows (``value[idx]``; a scalar applies to every
        row), gathered once and then compacted with the rows (:meth:`keep`)."""
        if not isinstance(value, torch.Tensor):
            return value
        hit = self._at.get(id(value))
        if hit is None or hit[0] is not value:
            hit = self._at[id(value)] = (value, value[self.idx])
        return hit[1]

    def track_nascent(self, x_now: torch.Tensor, near: torch.Tensor) -> None:
        """The nascent point is the last one within the eps-ball: take ``x_now`` where ``near``."""
        k = int(near.sum())   # one reduction for both tests (all / some)
        if k == near.numel():
            self.nascent = x_now
        elif k:
            self.nascent = torch.where(near[:, None], x_now, self.nascent)

    def finish(self, x_now: torch.Tensor, done: torch.Tensor, step: int,
               last: bool) -> torch.Tensor | None:
        """Write the rows that stop at ``step`` (``done``, or all if ``last``) to ``out``.

        Returns the positions (in the working set) of the rows that go on, or ``None``
        when every row goes on; an empty tensor when none is left.
        """
        sel: slice | torch.Tensor
        k = 0 if last else int(done.sum())   # one reduction for both tests (all / some)
        if last or k == done.numel():
            at, sel, go_on = self.idx, slice(None), self.idx[:0]
        elif k:
            fin = done.nonzero().squeeze(1)
            at, sel, go_on = self.idx.index_select(0, fin), fin, (~done).nonzero().squeeze(1)
        else:
            return None
        out = self.out
        out.counterfactual.index_copy_(0, at, x_now[sel])
        out.nascent.index_copy_(0, at, self.nascent[sel])
        out.converged.index_copy_(0, at, done[sel])
        out.steps.index_fill_(0, at, step)
        return go_on

    def keep(self, rows: torch.Tensor, new_state: torch.Tensor) -> None:
        self.state = new_state.index_select(0, rows)
        self.factual = self.factual.index_select(0, rows)
        self.target = self.target.index_select(0, rows)
        self.nascent = self.nascent.index_select(0, rows)
        self.idx = self.idx.index_select(0, rows)
        self._at = {k: (v, kept.index_select(0, rows)) for k, (v, kept) in self._at.items()}


class SearchEngine:
    """Gradient search ``x' <- x' - lr * grad[CE(M(x'), t) + sum_k w_k pen_k(x')]``.

    Args:
        constraints: domain bounds (clamp after every step) and mutability
            (forbidden step components zeroed; in latent space the decoded point
            is projected onto the allowed half-spaces instead).
        penalties: ``(weight, penalty)`` pairs, each penalty ``SearchState -> (n,)``.
        lr, maxiter, tau: SGD step size, step budget, decision threshold.
        codec: optional latent space (REVISE); the search state is ``z`` and
            ``x' = clamp(decode(z))``.
        step: ``"sgd"`` (``lr * grad``) or ``"normalized"`` (a step of L2 length ``lr``
            along the allowed components of the gradient).
        categorical: one-hot handling, ``"none"``, ``"project"``, ``"step"`` or ``"final"`` (module doc).
        refine: a stage applied to the search's result (Stable Neighbor Search).

    Rows are independent (the model is put in eval mode), so a batch gives the same
    result as its rows searched one by one. Only rows still searching are computed
    on; the working set is compacted on the steps where some rows finish.
    """

    def __init__(self, constraints: Constraints, *, penalties: Sequence[tuple[float, Penalty]] = (),
                 lr: float = 0.1, maxiter: int = 30, tau: float = 0.75, codec: Codec | None = None,
                 step: str = "sgd", categorical: str = "none", refine: Refiner | None = None):
        if step not in ("sgd", "normalized"):
            raise ValueError(f"step: got {step!r}; allowed: sgd, normalized")
        if categorical not in ("none", "project", "step", "final"):
            raise ValueError(f"categorical: got {categorical!r}; allowed: none, project, step, final")
        self.constraints = constraints
        self.penalties = tuple((float(w), p) for w, p in penalties if w != 0)
        self.lr, self.maxiter, self.tau, self.codec = lr, maxiter, tau, codec
        self.step_rule = step
        self.categorical = categorical if constraints.groups else "none"
        self.refine = refine

    def _to_input(self, state: torch.Tensor, factual: torch.Tensor) -> torch.Tensor:
        x = state
        if self.codec is not None:
            x = self.constraints.clamp(self.codec.decode(state))
            x = self.constraints.protect(x, factual) if self.constraints.is_constrained else x
        if self.categorical == "step" or (self.categorical == "project" and self.codec is not None):
            # the model sees valid one-hot groups; gradient straight through (in latent space
            # the decoded point is what gets projected)
            x = x + (self.constraints.project_onehot(x.detach()) - x).detach()
        return x

    def _objective(self, x_cf: torch.Tensor, factual: torch.Tensor, gap: torch.Tensor,
                   target: torch.Tensor, logits: torch.Tensor, step: int, maxiter: int,
                   rows: torch.Tensor | None = None,
                   at: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   log_p: torch.Tensor | None = None) -> torch.Tensor:
        # log_p: the rows' log-probabilities of their targets, when the step computed them
        loss = cross_entropy_rows(logits, target) if log_p is None else -log_p
        if self.penalties:  # rows: positions in the caller's batch (per-row penalty weights)
            st = SearchState(x_cf=x_cf, factual=factual, gap=gap, target=target, logits=logits,
                             step=step, maxiter=maxiter, rows=rows, at=at)
            for weight, pen in self.penalties:   # 1.0 * x is x: a per-row weight's term as it is
                loss = loss + (pen(st) if weight == 1.0 else weight * pen(st))
        return loss

    def _step(self, state: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One SGD step (NaN/inf gradient components -> no move), then the constraints.

        In input space the point is clamped to the domain and every feature that moved in
        a forbidden direction is reset (mutability wins over the domain for a factual
        outside it); clamped values are exact, so points never leave the domain.
        """
        if not math.isfinite(grad.sum().item()):  # one cheap reduction instead of a rewrite
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if self.step_rule == "normalized":
            grad = self._unit_direction(grad)
        new = state.add(grad, alpha=-self.lr)
        if self.codec is not None:
            return new
        new = self.constraints.clamp(new)
        new = self.constraints.keep_direction(new, state) if self.constraints.is_constrained else new
        return self.constraints.project_onehot(new) if self.categorical == "project" else new

    def _unit_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Per row, the allowed part of ``grad`` (components whose step mutability forbids
        zeroed; in latent space all) scaled to unit L2 norm; an all-zero row stays zero."""
        if self.codec is None and self.constraints.is_constrained:
            lo, hi = self.constraints.step_bounds(grad)
            grad = -torch.clamp(-grad, lo, hi)  # the step is -grad: keep its allowed components
        norm = grad.norm(dim=1, keepdim=True)
        return grad / torch.where(norm > 0, norm, torch.ones_like(norm))

    def _project_final(self, model: nn.Module, out: CounterfactualBatch,
                       tau: float | torch.Tensor) -> CounterfactualBatch:
        """``categorical = "final"``: project every counterfactual (and nascent point) onto
        valid one-hot groups; a row stays converged only if the projection still reaches tau."""
        cf = self.constraints.project_onehot(out.counterfactual)
        with torch.no_grad():
            rows = torch.arange(cf.shape[0], device=cf.device)
            valid = reaches(forward_rows(model, cf, rows), out.target, _at(tau, rows))
        return CounterfactualBatch(out.factual, out.target, cf, out.converged & valid,
                                   out.steps, self.constraints.project_onehot(out.nascent))

    def search(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
               nascent_eps: float | torch.Tensor = 0.3, maxiter: int | None = None,
               tau: float | torch.Tensor | None = None) -> CounterfactualBatch:
        """Search counterfactuals for factuals ``x`` ``(n, d)`` towards classes ``target`` ``(n,)``.

        A row whose target probability reaches ``tau`` after ``k`` steps is frozen there
        (``steps = k``, ``converged``); the others stop after ``maxiter`` steps. ``tau`` and
        ``nascent_eps`` may be ``(n,)`` tensors (one value per row). A ``model`` with
        ``routes_rows = True`` is called as ``model(x_active, rows)`` with the positions of
        the active rows in ``x`` (several models searched at once: :class:`RoutedModels`).
        """
        T = self.maxiter if maxiter is None else int(maxiter)
        tau = self.tau if tau is None else (tau if isinstance(tau, torch.Tensor) else float(tau))
        x, target = x.detach(), target.detach().long()
        with frozen(model), torch.enable_grad():
            state = x if self.codec is None else self.codec.encode(x).detach()
            rows = _Rows(state, x, target)
            for t in range(T + 1):
                if rows.idx.numel() == 0:
                    break
                s = rows.state.detach().requires_grad_(True)
                xa = self._to_input(s, rows.factual)
                logits = forward_rows(model, xa, rows.idx)
                x_now = xa.detach()
                gap = (xa - rows.factual).abs()
                rows.track_nascent(x_now, gap.detach().amax(dim=1) <= rows.at(nascent_eps))
                log_p = target_log_probs(logits, rows.target)   # the CE's and the stop test's
                done = reaches(logits, rows.target, rows.at(tau), log_p=log_p)
                go_on = rows.finish(x_now, done, t, last=t == T)
                if go_on is not None and go_on.numel() == 0:
                    break
                loss = self._objective(xa, rows.factual, gap, rows.target, logits, t, T, rows.idx,
                                       rows.at, log_p)
                (grad,) = torch.autograd.grad(loss.sum(), s)
                new = self._step(s.detach(), grad)
                if go_on is None:
                    rows.state = new
                else:
                    rows.keep(go_on, new)
            out = self._project_final(model, rows.out, tau) if self.categorical == "final" else rows.out
        return out if self.refine is None else self.refine.refine(model, out)


#: a probability of the class-major softmax this close to ``tau`` is decided again row-wise
#: (the two kernels differ by a few ulps, ~1e-7 for probabilities)
NEAR_TAU = 1e-5


def reaches(logits: torch.Tensor, target: torch.Tensor, tau: float | torch.Tensor, *,
            log_p: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, whether the softmax probability of class ``target`` reaches ``tau`` — decided
    exactly as ``logits.softmax(dim=1)`` decides it, several times faster for few classes.

    torch's row-wise softmax runs one short loop per row (2.4 ms for 45,000 rows of two
    classes here, a tenth of a search step); the class-major layout (``logits.T``, softmax
    over dim 0) vectorises across rows but may differ from it in the last bits. So the fast
    probability decides every row farther than :data:`NEAR_TAU` from ``tau``, and the rows
    nearer are decided again by the row-wise kernel, on those rows only (it computes each row
    by itself): the decisions are the row-wise kernel's, bit for bit. ``log_p``: each row's
    log-probability of its target from :func:`target_log_probs` (the search step's
    cross-entropy needs it anyway); its ``exp`` is as near the row-wise probability (a few
    ulps) and replaces the class-major softmax."""
    z = logits.detach()
    if log_p is not None:
        p = log_p.detach().exp()
    elif z.dim() != 2 or z.shape[1] > 16 or z.shape[0] < 64:
        return _row_wise_probability(z, target) >= tau
    else:
        p = z.t().contiguous().softmax(dim=0).gather(0, target[None, :]).squeeze(0)
    out = p >= tau
    near = torch.nonzero((p - tau).abs() <= NEAR_TAU).squeeze(1)
    if near.numel():
        out[near] = _row_wise_probability(z[near], target[near]) >= _at(tau, near)
    return out


#: classes up to which :func:`cross_entropy_rows` takes the class-major layout (one vector of
#: lanes holds a row's classes on every CPU torch vectorises for, so both kernels sum them in
#: the same order)
CLASS_MAJOR_CLASSES = 8
#: rows from which the class-major layout is faster (measured here: equal at ~2,000 rows of two
#: classes, 3.5x at 45,000); both give the same bits, so this only decides the speed
CLASS_MAJOR_ROWS = 2048
#: the class-major layout's rows are padded to a multiple of this many: every vector full
_LANES = 64


def cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor, *,
                       min_rows: int = CLASS_MAJOR_ROWS) -> torch.Tensor:
    """``F.cross_entropy(logits, target, reduction="none")``, the same bits forward and
    backward, faster for many rows of few classes on the CPU (:func:`target_log_probs`)."""
    log_p = target_log_probs(logits, target, min_rows=min_rows)
    return F.cross_entropy(logits, target, reduction="none") if log_p is None else -log_p


def target_log_probs(logits: torch.Tensor, target: torch.Tensor, *,
                     min_rows: int = CLASS_MAJOR_ROWS) -> torch.Tensor | None:
    """Each row's log-softmax probability of class ``target`` — the negation of
    ``F.cross_entropy(logits, target, reduction="none")``, the same bits forward and backward —
    by the class-major layout; ``None`` where that layout does not apply or is slower (fewer
    than ``min_rows`` rows, other devices, dtypes or class counts: use ``F.cross_entropy``).

    torch's log-softmax over the last dimension runs one short loop per row (1.1 ms forward,
    0.8 ms backward at 45,000 rows of two classes). Over dim 0 of the transpose it vectorises
    across rows with the same operations in the same order (max; the sum of ``exp(x - max)``
    class by class; ``x - max - log(sum)``; backward ``g - exp(out) * sum(g)``), except that
    elements past the last full vector go through the scalar ``std::exp`` instead of the
    vectorised one — so the rows are padded to a multiple of :data:`_LANES` and every element
    takes the vectorised path (``tests/test_generators.py`` checks the bits against
    ``F.cross_entropy`` for 2-8 classes and 1-200,003 rows, forward and backward)."""
    n, c = logits.shape
    if (n < max(min_rows, 1) or logits.device.type != "cpu" or not 2 <= c <= CLASS_MAJOR_CLASSES
            or logits.dtype not in (torch.float32, torch.float64)):
        return None
    cols = logits.new_zeros(c, -(-n // _LANES) * _LANES)
    cols[:, :n] = logits.t()
    return cols.log_softmax(dim=0)[:, :n].gather(0, target[None, :]).squeeze(0)


def _row_wise_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each row's softmax probability of class ``target``, by torch's row-wise kernel."""
    return logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)


def _at(value: float | torch.Tensor, rows: torch.Tensor) -> float | torch.Tensor:
    """A per-row setting at the active ``rows`` (a scalar applies to every row)."""
    return value[rows] if isinstance(value, torch.Tensor) else value


#: a search's model sees at least this many rows: below it MKL's GEMM can give a row other
#: last bits than the same row in a larger batch (784 -> 32 and 32 -> 2 for every M < 16;
#: docs/DEVELOPING.md), so a row's search would depend on how many rows are still searched
#: beside it — a sharded slice would not match its job's unsharded search
MIN_ROWS = 16


def forward_rows(model: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``model(x)``, or for a model that routes rows (:class:`RoutedModels`) ``model(x, rows)``;
    a plain model computes fewer than :data:`MIN_ROWS` rows padded with zero rows."""
    return model(x, rows) if getattr(model, "routes_rows", False) else _padded(model, x)


def _padded(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` computed on at least :data:`MIN_ROWS` rows (zero rows appended and their
    outputs dropped): every row's result is then that of any larger batch, for gradients too
    (the padded rows carry zero gradient)."""
    n = x.shape[0]
    if n >= MIN_ROWS or n == 0:
        return model(x)
    return model(torch.cat([x, x.new_zeros((MIN_ROWS - n, *x.shape[1:]))]))[:n]
