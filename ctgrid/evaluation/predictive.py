"""Predictive metrics of a trained classifier: accuracy, macro-F1, integrated gradients.

Also holds the two helpers every evaluation metric uses to query a model without
side effects: :func:`eval_mode` (switch to eval, restore each submodule's mode on
exit) and :func:`predict_logits` (batched, ``no_grad``). Robust accuracy lives in
:mod:`ctgrid.evaluation.robustness`.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from .._torch import eval_mode, model_device

Baseline = Literal["uniform", "zeros"]


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's parameters (float32 when it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def predict_logits(model: nn.Module, X: torch.Tensor, *, batch_size: int = 8192) -> torch.Tensor:
    """Logits ``(n, K)`` of ``model`` on ``X`` in eval mode, without building a graph.

    ``X`` is cast to the model's dtype and moved to its device batch by batch.
    """
    device = model_device(model, X.device)
    dtype = model_dtype(model)
    with eval_mode(model), torch.no_grad():
        parts = [model(X[i:i + batch_size].to(device=device, dtype=dtype))
                 for i in range(0, X.shape[0], batch_size)]
    if not parts:
        raise ValueError("predict_logits: X has no rows")
    return torch.cat(parts)


def accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Share of rows with ``y_pred == y_true``."""
    _check_labels(y_true, y_pred)
    return (y_true == y_pred).double().mean().item()


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor,
                     n_classes: int | None = None) -> torch.Tensor:
    """Counts ``C[i, j]`` of rows with true class ``i`` predicted as ``j`` (sklearn layout)."""
    _check_labels(y_true, y_pred)
    y_true, y_pred = y_true.long().cpu(), y_pred.long().cpu()
    k = int(max(y_true.max().item(), y_pred.max().item())) + 1
    if n_classes is not None:
        if k > n_classes:
            raise ValueError(f"confusion_matrix: label {k - 1} >= n_classes={n_classes}")
        k = n_classes
    flat = torch.bincount(y_true * k + y_pred, minlength=k * k)
    return flat.reshape(k, k)


def f1_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """F1 ``2TP / (2TP + FP + FN)`` per class (float64); NaN for classes never seen nor predicted."""
    c = confusion.double()
    tp = c.diagonal()
    fp = c.sum(0) - tp
    fn = c.sum(1) - tp
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))


def macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 (``sklearn.metrics.f1_score(average='macro', zero_division=0)``).

    Classes that occur neither in ``y_true`` nor in ``y_pred`` are excluded, as sklearn
    does with its default ``labels`` (the union of observed labels); a class that occurs
    but is never predicted correctly counts with F1 = 0.
    """
    f1 = f1_per_class(confusion_matrix(y_true, y_pred, n_classes))
    return f1[~f1.isnan()].mean().item()


def _check_labels(y_true: torch.Tensor, y_pred: torch.Tensor) -> None:
    if y_true.shape != y_pred.shape or y_true.dim() != 1 or y_true.numel() == 0:
        raise ValueError(f"labels must be two non-empty 1-D tensors of one length; "
                         f"got shapes {tuple(y_true.shape)} and {tuple(y_pred.shape)}")


# --------------------------------------------------------------------------- integrated gradients

def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
                         baseline: Baseline | torch.Tensor = "uniform", n_steps: int = 50,
                         generator: torch.Generator | None = None,
                         batch_size: int = 8192) -> torch.Tensor:
    """Integrated gradients ``(x - b) * mean_k grad_x f_t(b + a_k (x - b))`` of the target logit.

    Midpoint rule with ``a_k = (k - 1/2) / n_steps``. ``baseline`` ``"uniform"`` draws
    ``b ~ U(-1, 1)`` per row from ``generator`` (the paper's choice), ``"zeros"`` uses
    ``b = 0``, or pass a tensor broadcastable to ``x``. Returns float64 ``(n, d)``; the
    model's mode is restored and its parameters receive no gradient.
    """
    if n_steps < 1:
        raise ValueError(f"integrated_gradients: n_steps must be >= 1, got {n_steps}")
    b = _baseline(baseline, x, generator)
    dtype = model_dtype(model)
    alphas = (torch.arange(n_steps, dtype=torch.float64, device=x.device) + 0.5) / n_steps
    rows_per_batch = max(1, batch_size // n_steps)
    out = []
    with eval_mode(model):
        for i in range(0, x.shape[0], rows_per_batch):
            xi, bi, ti = x[i:i + rows_per_batch].double(), b[i:i + rows_per_batch], target[i:i + rows_per_batch]
            path = bi[None] + alphas[:, None, None] * (xi - bi)[None]           # (steps, r, d)
            path = path.reshape(-1, x.shape[1]).to(dtype).requires_grad_(True)
            logits = model(path)
            t = ti.repeat(n_steps)
            (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), path)
            out.append((xi - bi) * grad.double().reshape(n_steps, -1, x.shape[1]).mean(0))
    return torch.cat(out)


def _baseline(baseline: Baseline | torch.Tensor, x: torch.Tensor,
              generator: torch.Generator | None) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        return baseline.to(device=x.device, dtype=torch.float64).expand_as(x)
    if baseline == "zeros":
        return torch.zeros_like(x, dtype=torch.float64)
    if baseline == "uniform":
        if generator is None:
            raise ValueError("integrated_gradients: baseline 'uniform' needs an explicit torch.Generator")
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=generator.device)
        return (2 * u - 1).to(x.device)
    raise ValueError(f"integrated_gradients: baseline {baseline!r}; allowed: 'uniform', 'zeros' or a tensor")


def ig_sensitivity(attributions: torch.Tensor, protected: Sequence[int], *,
                   normalisation: Literal["range", "minmax"] = "range") -> float:
    """Normalised attribution of the ``protected`` features, averaged over rows and features.

    Normalisation over the whole ``(n, d)`` attribution matrix (docs/deviations.md, R15):
    ``"range"`` is ``|g| / (max g - min g)`` (the reference's rule for tabular matrices),
    ``"minmax"`` is ``(g - min g) / (max g - min g)`` (its rule for image arrays).
    One call = one bootstrap round of the paper's IG table.
    """
    g = attributions.double()
    spread = g.max() - g.min()
    if spread <= 0:
        return 0.0
    if normalisation == "range":
        norm = g.abs() / spread
    elif normalisation == "minmax":
        norm = (g - g.min()) / spread
    else:
        raise ValueError(f"ig_sensitivity: normalisation {normalisation!r}; allowed: 'range', 'minmax'")
    idx = torch.as_tensor(list(protected), dtype=torch.long, device=g.device)
    if idx.numel() == 0:
        raise ValueError("ig_sensitivity: protected must list at least one feature index")
    return norm[:, idx].mean().item()
