"""IP*: unbiased squared MMD between counterfactuals and target-class data (paper Eq. 5/6).

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (n(n-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1))
              - 2 sum_{i,j} k(x_i, y_j) / (nm),       k(a, b) = exp(-||a - b||^2 / (2 l^2))

The paper calls MMD memory-hungry on large sets; here the kernel matrix of the pooled
sample is never stored: it is built ``block_size x block_size`` at a time (upper
triangle only, by symmetry) and immediately multiplied with indicator vectors of the
split, so memory is one centred float64 copy of the ``N`` pooled points plus
``O(block_size^2 + N * (P + 2))`` for ``P`` permutations. Everything runs in float64.

Defaults follow what produced the published numbers (docs/deviations.md, R13): length
scale 5.0 (the paper and CounterfactualExplanations.jl state 0.5) and at most 100 points
per side, drawn without replacement.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError


@dataclass(frozen=True)
class MMDResult:
    """Observed MMD^2_u, permutation p-value (``None`` without permutations) and set sizes."""

    mmd2: float
    p_value: float | None
    n_x: int
    n_y: int


def kernel_matmul(Z: torch.Tensor, S: torch.Tensor, *, length_scale: float = 5.0,
                  block_size: int = 1024) -> torch.Tensor:
    """``K0 @ S`` for the Gaussian kernel matrix ``K0`` of ``Z`` with a zeroed diagonal.

    ``Z (N, d)``, ``S (N, c)`` -> ``(N, c)`` float64, never holding more than one
    ``block_size x block_size`` kernel block (plus a centred float64 copy of ``Z``).
    """
    if Z.dim() != 2 or S.dim() != 2 or S.shape[0] != Z.shape[0]:
        raise ValueError(f"kernel_matmul: need Z (N, d) and S (N, c); got {tuple(Z.shape)} and {tuple(S.shape)}")
    return _kernel_matmul(_pooled([Z]), S.to(Z.device).double(), length_scale, block_size)


def _pooled(parts: list[torch.Tensor]) -> torch.Tensor:
    """One float64 copy of the stacked rows, centred in place (the kernel is translation-invariant;
    centring keeps ``|a|^2 + |b|^2 - 2ab`` accurate)."""
    d = parts[0].shape[1]
    Z = torch.empty(sum(p.shape[0] for p in parts), d, dtype=torch.float64, device=parts[0].device)
    start = 0
    for p in parts:
        Z[start:start + p.shape[0]] = p.to(Z.device)
        start += p.shape[0]
    return Z.sub_(Z.mean(0))


def _kernel_matmul(Z: torch.Tensor, S: torch.Tensor, length_scale: float, block_size: int) -> torch.Tensor:
    if block_size < 1 or length_scale <= 0:
        raise ValueError(f"kernel_matmul: need block_size >= 1 and length_scale > 0, "
                         f"got {block_size} and {length_scale}")
    gamma = 1.0 / (2.0 * length_scale ** 2)
    sq_norm = Z.square().sum(1)
    out = torch.zeros_like(S)
    n = Z.shape[0]
    for i in range(0, n, block_size):
        Zi, ni = Z[i:i + block_size], sq_norm[i:i + block_size, None]
        for j in range(i, n, block_size):
            # squared distances |a|^2 + |b|^2 - 2 a.b, then the kernel, all in place
            K = torch.addmm(ni + sq_norm[None, j:j + block_size], Zi, Z[j:j + block_size].T, alpha=-2.0)
            K = K.clamp_min_(0.0).mul_(-gamma).exp_()
            if i == j:
                K.fill_diagonal_(0.0)
                out[i:i + block_size] += K @ S[i:i + block_size]
            else:
                out[i:i + block_size] += K @ S[j:j + block_size]
                out[j:j + block_size] += K.T @ S[i:i + block_size]
    return out


def _mmd2_from_splits(Z: torch.Tensor, S: torch.Tensor, n: int, *, length_scale: float,
                      block_size: int) -> torch.Tensor:
    """MMD^2_u for each column of the 0/1 indicator matrix ``S`` (1 = first set, ``n`` ones).

    ``Z`` is the pooled float64 sample as made by :func:`_pooled`."""
    N = Z.shape[0]
    m = N - n
    ones = torch.ones(N, 1, dtype=torch.float64, device=Z.device)
    KS = _kernel_matmul(Z, torch.cat([S.double(), ones], 1), length_scale, block_size)
    K1 = KS[:, -1]
    KS = KS[:, :-1]
    total = K1.sum()                         # sum of all off-diagonal kernel values
    s_xx = (S * KS).sum(0)                   # within the first set
    s_x_all = S.T.double() @ K1              # first set against everything
    s_xy = s_x_all - s_xx
    s_yy = total - 2 * s_x_all + s_xx
    return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2 * s_xy / (n * m)


def mmd2_unbiased(X: torch.Tensor, Y: torch.Tensor, *, length_scale: float = 5.0,
                  block_size: int = 1024) -> float:
    """Unbiased squared MMD between the rows of ``X (n, d)`` and ``Y (m, d)``; n, m >= 2.

    Can be slightly negative (unbiased estimator); the reference clamped at 0 downstream.
    """
    n, m = _check_sets(X, Y)
    Z = _pooled([X, Y])
    S = torch.zeros(n + m, 1, dtype=torch.float64, device=Z.device)
    S[:n] = 1.0
    return _mmd2_from_splits(Z, S, n, length_scale=length_scale, block_size=block_size).item()


def mmd_test(X: torch.Tensor, Y: torch.Tensor, *, length_scale: float = 5.0,
             n_subsample: int | None = 100, n_permutations: int = 0,
             generator: torch.Generator | None = None, block_size: int = 1024) -> MMDResult:
    """MMD^2_u of ``X`` vs ``Y`` after subsampling, with an optional permutation p-value.

    Each side is subsampled to ``n_subsample`` rows without replacement (all rows if
    fewer, or if ``None``). The p-value is ``(1 + #{null >= observed}) / (1 + P)`` over
    ``P = n_permutations`` random relabellings of the pooled sample (all evaluated in one
    blocked pass); the reference used the share without the ``+1`` and never computed it.
    ``generator`` is required whenever a random draw is needed.
    """
    _check_sets(X, Y)
    if n_permutations < 0 or (n_subsample is not None and n_subsample < 2):
        raise ValueError(f"mmd_test: need n_permutations >= 0 and n_subsample >= 2 (or None); "
                         f"got {n_permutations} and {n_subsample}")
    X = _subsample(X, n_subsample, generator)
    Y = _subsample(Y, n_subsample, generator)
    n, m = _check_sets(X, Y)
    Z = _pooled([X, Y])
    N = n + m
    S = torch.zeros(N, 1 + n_permutations, dtype=torch.float64, device=Z.device)
    S[:n, 0] = 1.0
    if n_permutations:
        if generator is None:
            raise ValueError("mmd_test: n_permutations > 0 needs an explicit torch.Generator")
        keys = torch.rand(n_permutations, N, generator=generator, device=generator.device)
        first = keys.argsort(dim=1)[:, :n].to(Z.device)              # (P, n) rows labelled X
        S[:, 1:].scatter_(0, first.T, 1.0)
    values = _mmd2_from_splits(Z, S, n, length_scale=length_scale, block_size=block_size)
    p = None
    if n_permutations:
        p = (1 + int((values[1:] >= values[0]).sum())) / (1 + n_permutations)
    return MMDResult(values[0].item(), p, n, m)


def mmd_by_group(x_cf: torch.Tensor, target: torch.Tensor, reference_X: torch.Tensor,
                 reference_y: torch.Tensor, *, groups: torch.Tensor | None = None,
                 length_scale: float = 5.0, n_subsample: int | None = 100,
                 n_permutations: int = 0, generator: torch.Generator | None = None,
                 block_size: int = 1024) -> dict[str, torch.Tensor]:
    """IP* per group of counterfactuals against the reference points of their target class.

    A group is every row sharing ``(groups, target)`` (``groups`` e.g. encodes the run);
    its CEs are compared with ``reference_X[reference_y == target]``. The group's value is
    written to each of its rows, as the reference attached it to every CE. Returns
    float64 ``(n,)`` tensors ``"ip_star"`` (NaN for groups of one CE) and, with
    permutations, ``"ip_star_p"``. Groups are processed in sorted key order, drawing
    from ``generator`` in turn.
    """
    n = x_cf.shape[0]
    if target.shape != (n,) or (groups is not None and groups.shape != (n,)):
        raise ValueError("mmd_by_group: target and groups must have shape (n,) like x_cf's rows")
    g = torch.zeros_like(target) if groups is None else groups.to(target.device)
    keys, inverse = torch.unique(torch.stack([g.long(), target.long()], 1), dim=0, return_inverse=True)
    out = {"ip_star": torch.full((n,), float("nan"), dtype=torch.float64)}
    if n_permutations:
        out["ip_star_p"] = torch.full((n,), float("nan"), dtype=torch.float64)
    ref_y = reference_y.to(target.device)
    for k, (_, t) in enumerate(keys.tolist()):
        rows = (inverse == k).nonzero().squeeze(1)
        pos = (ref_y == t).nonzero().squeeze(1)
        if pos.numel() < 2:
            raise DataError(f"IP*: the reference data hold {pos.numel()} point(s) of target class {t}; need >= 2")
        if rows.numel() < 2:
            continue
        res = mmd_test(x_cf[rows], reference_X[pos.to(reference_X.device)], length_scale=length_scale,
                       n_subsample=n_subsample, n_permutations=n_permutations,
                       generator=generator, block_size=block_size)
        out["ip_star"][rows.cpu()] = res.mmd2
        if n_permutations:
            out["ip_star_p"][rows.cpu()] = float(res.p_value)  # type: ignore[arg-type]
    return out


def _subsample(X: torch.Tensor, size: int | None, generator: torch.Generator | None) -> torch.Tensor:
    if size is None or X.shape[0] <= size:
        return X
    if generator is None:
        raise ValueError("IP*: subsampling needs an explicit torch.Generator")
    idx = torch.randperm(X.shape[0], generator=generator, device=generator.device)[:size]
    return X[idx.to(X.device)]


def _check_sets(X: torch.Tensor, Y: torch.Tensor) -> tuple[int, int]:
    if X.dim() != 2 or Y.dim() != 2 or X.shape[1] != Y.shape[1]:
        raise ValueError(f"MMD: need X (n, d) and Y (m, d); got {tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[0] < 2 or Y.shape[0] < 2:
        raise ValueError(f"MMD: the unbiased estimate needs >= 2 rows a side; got {X.shape[0]} and {Y.shape[0]}")
    return X.shape[0], Y.shape[0]
