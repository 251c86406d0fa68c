"""The terms of the CT objective as small pure functions of logits (docs/deviations.md, M2, R4).

With ``f(x)`` the logits, ``t_j`` the target class and ``y_j`` the factual's true
label of counterfactual ``j``:

- classification ``L_clf = mean_b CE(f(x_b), y_b)`` over the training batch;
- contrastive divergence ``div = mean_j [f_t(x'_j) - f_t(x+_j)]``;
- ridge ``reg = mean_j [f_t(x+_j)^2 + f_t(x'_j)^2]``;
- adversarial ``L_adv = mean_j CE(f(x_nascent_j), y_j)``.

The counterfactuals ``x'``, the samples ``x+`` and the nascent points are data
(constants): gradients flow only through the model. The functions below define
the terms; the training loop evaluates the same terms in a fused form
(:func:`term_matrix`, one forward pass and one small matrix product per
mini-batch), which the tests check against them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import weights as weights  # re-exported: the weights of the objective's terms

TERMS = ("clf", "div", "reg", "adv")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(n, K)`` against class indices ``labels`` ``(n,)``."""
    return F.cross_entropy(logits, labels)


def target_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``f_t(x)``: the logit of each row's target class, shape ``(n,)``."""
    return logits.gather(1, target[:, None]).squeeze(1)


def contrastive_divergence(f_cf: torch.Tensor, f_plus: torch.Tensor) -> torch.Tensor:
    """``mean_j [f_t(x'_j) - f_t(x+_j)]`` = ``E(x+) - E(x')`` with energy ``E = -f_t``.

    Minimising it raises the target logit on real target-class samples and lowers
    it on the counterfactuals. Arguments are target logits (:func:`target_logits`).
    """
    return (f_cf - f_plus).mean()


def ridge(f_cf: torch.Tensor, f_plus: torch.Tensor) -> torch.Tensor:
    """``mean_j [f_t(x+_j)^2 + f_t(x'_j)^2]``: keeps the energies small (the paper's key stabiliser)."""
    return (f_plus.square() + f_cf.square()).mean()


def adversarial_loss(logits_nascent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the nascent counterfactuals against the factuals' *true* labels."""
    return F.cross_entropy(logits_nascent, labels)


# ------------------------------------------------------------------ fused evaluation
# Every term is linear in three per-row quantities of the logits: ``logsumexp(z_r)``,
# ``z_r[i_r]`` and ``z_r[i_r]^2`` (CE_r = logsumexp(z_r) - z_r[y_r]). The loop stacks
# them for all rows of a mini-batch and multiplies by a fixed matrix whose rows are
# the terms: a handful of autograd nodes per step instead of one or more per term.
# ``tests/test_training.py`` checks the result against the functions above.

def row_statistics(logits: torch.Tensor, index: torch.Tensor, squares: bool) -> torch.Tensor:
    """``[logsumexp(z_r)]_r ++ [z_r[i_r]]_r (++ [z_r[i_r]^2]_r)`` for ``logits`` ``(..., N, K)``
    (a leading member axis for a pack) and ``index`` ``(..., N)``."""
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    parts = [torch.logsumexp(logits, dim=-1), picked]
    if squares:
        parts.append(picked.square())
    return torch.cat(parts, dim=-1)


def apply_terms(matrix: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``matrix @ stats`` (``(T, S)`` by ``(..., S)`` -> ``(..., T)``) as an elementwise product
    and a last-axis sum: unlike a matrix product, the result of every member of a pack does
    not depend on how many members it is computed with."""
    return (matrix * stats.unsqueeze(-2)).sum(-1)


def weighted_loss(terms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_t weights_t * terms_t`` over the last axis (batch-invariant, see :func:`apply_terms`)."""
    return (terms * weights).sum(-1)


def layout(names: tuple[str, ...], n: int, m: int) -> tuple[int, int]:
    """Row counts of the two optional segments: ``x'`` and ``x+`` (each), nascent points.

    A batch's rows are ``[x_b (n); x' (m); x+ (m); nascent (m)]``, with ``x'``/``x+``
    only when ``div`` or ``reg`` is used and the nascent points only with ``adv``.
    """
    energy = m if ("div" in names or "reg" in names) else 0
    return energy, (m if "adv" in names else 0)


def term_matrix(names: tuple[str, ...], n: int, m: int) -> torch.Tensor:
    """``A`` with ``A @ row_statistics(...)`` = the terms ``names`` of a batch (see :func:`layout`)."""
    e, a = layout(names, n, m)
    rows = n + 2 * e + a
    blocks = 3 if "reg" in names else 2
    A = torch.zeros(len(names), blocks * rows, dtype=torch.float64)
    for i, name in enumerate(names):
        if name == "clf":        # mean_b [lse - z_y]
            A[i, :n], A[i, rows:rows + n] = 1 / n, -1 / n
        elif name == "div":      # mean_j [f_t(x') - f_t(x+)]
            A[i, rows + n:rows + n + e], A[i, rows + n + e:rows + n + 2 * e] = 1 / m, -1 / m
        elif name == "reg":      # mean_j [f_t(x')^2 + f_t(x+)^2]
            A[i, 2 * rows + n:2 * rows + n + 2 * e] = 1 / m
        elif name == "adv":      # mean_j [lse - z_y] over the nascent rows
            s = n + 2 * e
            A[i, s:s + a], A[i, rows + s:rows + s + a] = 1 / m, -1 / m
    return A.float()
