"""Per-counterfactual measures (docs/deviations.md, M4, R12), batched over rows.

Every function takes ``n`` counterfactuals at once (``x_cf (n, d)``, factuals
``x (n, d)``, targets ``(n,)``) and returns one float64 value per row on the CPU, so
the result drops straight into a per-counterfactual table. Distances are float64;
the model is queried in eval mode without gradients (its mode is restored).

IP* (the set-level MMD) is in :mod:`ctgrid.evaluation.mmd`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import DataError
from .._torch import eval_mode
from .predictive import predict_logits


def validity(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1.0 where the predicted class ``argmax`` of the counterfactual's logits is the target."""
    return (logits.argmax(1) == target.to(logits.device)).double().cpu()


def validity_strict(logits: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """1.0 where the softmax probability of the target reaches ``tau``.

    The reference's version ignored ``tau`` and equalled :func:`validity` (docs/deviations.md, D4).
    """
    if not 0 < tau <= 1:
        raise ValueError(f"validity_strict: tau must be in (0, 1], got {tau}")
    p = logits.double().softmax(1).gather(1, target.to(logits.device).long()[:, None]).squeeze(1)
    return (p >= tau).double().cpu()


def cost(x: torch.Tensor, x_cf: torch.Tensor) -> torch.Tensor:
    """L1 distance ``||x' - x||_1`` per row (the paper's Cost)."""
    _check_pair(x, x_cf)
    return (x_cf.double() - x.double()).abs().sum(1).cpu()


def share_unchanged(x: torch.Tensor, x_cf: torch.Tensor, atol: float = 1e-5) -> torch.Tensor:
    """Share of features with ``|x'_d - x_d| < atol``: what the reference called "redundancy"."""
    _check_pair(x, x_cf)
    return ((x_cf.double() - x.double()).abs() < atol).double().mean(1).cpu()


def share_resettable(model: nn.Module, x: torch.Tensor, x_cf: torch.Tensor, target: torch.Tensor, *,
                     atol: float = 1e-5, max_rows: int = 65536) -> torch.Tensor:
    """Share of features that can be reset to the factual value, one at a time, with the CE still valid.

    Redundancy as defined in docs/deviations.md, M4. Unchanged features (``|x'_d - x_d| < atol``)
    count as resettable; each changed feature costs one forward pass of one row, run in
    batches of ``max_rows``. NaN for counterfactuals that are not valid themselves.

    For a model that starts with a linear layer (``nn.Sequential`` whose first module is
    ``nn.Linear``: every MLP and linear model here) a reset of feature ``c`` changes the first
    layer's output by ``W[:, c] (x_c - x'_c)``, so the probes are built in the hidden width
    instead of the input width (MNIST: 32 instead of 784 numbers per probe).
    """
    _check_pair(x, x_cf)
    target = target.to(x_cf.device)
    changed = (x_cf.double() - x.double()).abs() >= atol
    keeps = ~changed
    rows, cols = changed.nonzero(as_tuple=True)
    seq = model if isinstance(model, nn.Sequential) and len(model) else None
    first = seq[0] if seq is not None else None
    with eval_mode(model), torch.no_grad():
        if seq is not None and isinstance(first, nn.Linear):
            rest = seq[1:]
            dtype = first.weight.dtype
            z = first(x_cf.to(dtype))                               # (n, hidden)
            w = first.weight.t()                                    # (d, hidden)
            delta = (x.to(dtype) - x_cf.to(dtype))
            for i in range(0, rows.numel(), max_rows):
                r, c = rows[i:i + max_rows], cols[i:i + max_rows]
                probe = z[r] + w[c] * delta[r, c, None]
                keeps[r, c] = rest(probe).argmax(1) == target[r]
        else:
            for i in range(0, rows.numel(), max_rows):
                r, c = rows[i:i + max_rows], cols[i:i + max_rows]
                probe = x_cf[r].clone()
                probe[torch.arange(r.numel(), device=probe.device), c] = x[r, c].to(probe.dtype)
                keeps[r, c] = predict_logits(model, probe).argmax(1) == target[r]
    share = keeps.double().mean(1).cpu()
    valid = validity(predict_logits(model, x_cf), target).bool()
    return torch.where(valid, share, torch.full_like(share, float("nan")))


def target_class_samples(reference_X: torch.Tensor, reference_y: torch.Tensor,
                         classes: list[int], n_samples: int,
                         generator: torch.Generator) -> dict[int, torch.Tensor]:
    """``n_samples`` rows of ``reference_X`` drawn with replacement from each class in ``classes``.

    Classes are drawn in the given order, each with one ``randint`` from ``generator``
    (the reference also drew with replacement). Raises DataError for an absent class.
    """
    if n_samples < 1:
        raise ValueError(f"target_class_samples: n_samples must be >= 1, got {n_samples}")
    ref_y = reference_y.to(reference_X.device)
    out = {}
    for c in classes:
        pos = (ref_y == c).nonzero().squeeze(1)
        if pos.numel() == 0:
            raise DataError(f"reference data hold no point of target class {c}")
        pick = torch.randint(pos.numel(), (n_samples,), generator=generator, device=generator.device)
        out[c] = reference_X[pos[pick.to(pos.device)]]
    return out


def mean_l1_distance(x: torch.Tensor, samples: torch.Tensor, *, block_size: int = 1024) -> torch.Tensor:
    """Mean L1 distance of each row of ``x (n, d)`` to the rows of ``samples (m, d)``, float64.

    Computed ``block_size`` rows at a time with ``torch.cdist(p=1)``, which does not
    expand an ``(n, m, d)`` difference tensor: peak memory is ``O(block_size * m)``.
    """
    if block_size < 1:
        raise ValueError(f"mean_l1_distance: block_size must be >= 1, got {block_size}")
    ref = samples.to(x.device).double()
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], block_size):
        out[i:i + block_size] = torch.cdist(x[i:i + block_size].double(), ref, p=1).mean(1)
    return out.cpu()


def implausibility(x_cf: torch.Tensor, target: torch.Tensor, samples: dict[int, torch.Tensor], *,
                   block_size: int = 1024) -> torch.Tensor:
    """IP (paper Eq. 4): mean L1 distance of each ``x'`` to the sample of its target class."""
    out = torch.empty(x_cf.shape[0], dtype=torch.float64)
    tgt = target.to(x_cf.device)
    for c, ref in samples.items():
        rows = (tgt == c).nonzero().squeeze(1)
        if rows.numel():
            out[rows.cpu()] = mean_l1_distance(x_cf[rows], ref, block_size=block_size)
    return out


def energy_differential(model: nn.Module, x_cf: torch.Tensor, target: torch.Tensor,
                        samples: dict[int, torch.Tensor]) -> torch.Tensor:
    """``mean_k f_t(x+_k) - f_t(x')`` with ``f_t`` the target logit and ``x+_k`` target-class samples.

    Sign convention: with energy ``E = -f_t`` this is ``E(x') - mean_k E(x+_k)``; positive
    when the counterfactual has higher energy (lower target logit) than typical
    target-class points, i.e. larger is less faithful. It is the value the reference
    stored (the negative of EnergySamplers' ``energy_differential``).
    """
    return _energy_differential(predict_logits(model, x_cf), target, _mean_target_logit(model, samples))


def _mean_target_logit(model: nn.Module, samples: dict[int, torch.Tensor]) -> dict[int, float]:
    return {c: predict_logits(model, s)[:, c].double().mean().item() for c, s in samples.items()}


def _energy_differential(logits: torch.Tensor, target: torch.Tensor, ref: dict[int, float]) -> torch.Tensor:
    tgt = target.to(logits.device).long()
    f_t = logits.double().gather(1, tgt[:, None]).squeeze(1).cpu()
    try:
        ref_t = torch.tensor([ref[int(t)] for t in tgt.tolist()], dtype=torch.float64)
    except KeyError as exc:
        raise ValueError(f"energy_differential: no target-class sample for class {exc.args[0]}") from None
    return ref_t - f_t


def counterfactual_metrics(model: nn.Module, x: torch.Tensor, x_cf: torch.Tensor, target: torch.Tensor, *,
                           reference_X: torch.Tensor, reference_y: torch.Tensor,
                           generator: torch.Generator, tau: float = 0.95, n_samples: int = 1000,
                           n_energy_samples: int = 50, block_size: int = 1024, atol: float = 1e-5,
                           resettable: bool = False) -> dict[str, torch.Tensor]:
    """All per-counterfactual measures -> float64 ``(n,)`` CPU tensors by name.

    Keys: ``validity``, ``validity_strict`` (softmax target prob >= ``tau``), ``cost``
    (L1), ``ip`` (mean L1 distance to ``n_samples`` target-class points of the reference
    data), ``energy_differential`` (over ``n_energy_samples`` further target-class
    points), ``share_unchanged`` and, if ``resettable``, ``share_resettable``.
    Draws: the IP samples of every target class (ascending class order), then the
    energy samples, all from ``generator``; the same samples serve every row.
    """
    _check_pair(x, x_cf)
    if target.shape != (x.shape[0],):
        raise ValueError(f"target must have shape ({x.shape[0]},), got {tuple(target.shape)}")
    classes = [int(c) for c in torch.unique(target).tolist()]
    ip_samples = target_class_samples(reference_X, reference_y, classes, n_samples, generator)
    energy_samples = target_class_samples(reference_X, reference_y, classes, n_energy_samples, generator)
    logits = predict_logits(model, x_cf)
    out = {
        "validity": validity(logits, target),
        "validity_strict": validity_strict(logits, target, tau),
        "cost": cost(x, x_cf),
        "ip": implausibility(x_cf, target, ip_samples, block_size=block_size),
        "energy_differential": _energy_differential(logits, target, _mean_target_logit(model, energy_samples)),
        "share_unchanged": share_unchanged(x, x_cf, atol),
    }
    if resettable:
        out["share_resettable"] = share_resettable(model, x, x_cf, target, atol=atol)
    return out


def _check_pair(x: torch.Tensor, x_cf: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape != x_cf.shape:
        raise ValueError(f"x and x_cf must both be (n, d); got {tuple(x.shape)} and {tuple(x_cf.shape)}")
