"""Consistency of counterfactuals under model change (Black et al. 2022, "Consistent
Counterfactuals for Deep Models", ICLR).

A counterfactual ``(x', target)`` is *invalidated* by another model when that model
does not predict ``target`` at ``x'``. The invalidation rate measures how well
explanations survive retraining (other seeds, leave-one-out): the lower, the more
consistent. Black et al. report the share of counterfactuals invalidated by a new
model; averaging :func:`invalidation_rate` over rows gives exactly that share,
averaged over the models.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .predictive import predict_logits


def invalidation_rate(x_cf: torch.Tensor, target: torch.Tensor, models: Sequence[nn.Module], *,
                      batch_size: int = 8192) -> torch.Tensor:
    """Per counterfactual, the share of ``models`` whose ``argmax`` at ``x'`` is not ``target``.

    Shapes: ``x_cf (n, d)``, ``target (n,)`` -> float64 ``(n,)`` on the CPU; the overall
    rate is its mean. Usually one passes only counterfactuals valid under the model that
    produced them. Each model is queried in eval mode, without gradients.
    """
    if not models:
        raise ValueError("invalidation_rate: pass at least one model")
    if x_cf.dim() != 2 or target.shape != (x_cf.shape[0],):
        raise ValueError(f"invalidation_rate: need x_cf (n, d) and target (n,); "
                         f"got {tuple(x_cf.shape)} and {tuple(target.shape)}")
    invalid = torch.zeros(x_cf.shape[0], dtype=torch.float64)
    for model in models:
        pred = predict_logits(model, x_cf, batch_size=batch_size).argmax(1)
        invalid += (pred != target.to(pred.device)).double().cpu()
    return invalid / len(models)
