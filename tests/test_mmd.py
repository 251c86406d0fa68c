"""IP*: the unbiased squared MMD, its blockwise evaluation, permutations and groups."""
from __future__ import annotations

import math

import pytest
import torch

from ctgrid.errors import DataError
from ctgrid.evaluation import mmd2_unbiased, mmd_test
from ctgrid.evaluation.mmd import _mmd2_from_splits, _pooled, kernel_matmul, mmd_by_group


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_mmd2(X: torch.Tensor, Y: torch.Tensor, length_scale: float) -> float:
    """Eq. 5/6 of the paper written out as Python double loops."""
    def k(a, b):
        return math.exp(-sum((float(u) - float(v)) ** 2 for u, v in zip(a, b)) / (2 * length_scale ** 2))
    n, m = len(X), len(Y)
    xx = sum(k(X[i], X[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(Y[i], Y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(X[i], Y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_equals_naive_double_loop():
    g = gen(1)
    X, Y = torch.randn(5, 3, generator=g), torch.randn(7, 3, generator=g) + 0.7
    for ls in (0.5, 1.3, 5.0):
        assert mmd2_unbiased(X, Y, length_scale=ls) == pytest.approx(naive_mmd2(X, Y, ls), abs=1e-12)
        assert mmd2_unbiased(X, Y, length_scale=ls, block_size=2) == pytest.approx(naive_mmd2(X, Y, ls), abs=1e-12)


def test_blockwise_matches_one_shot():
    g = gen(2)
    X, Y = torch.randn(150, 6, generator=g), torch.randn(83, 6, generator=g) * 1.5
    one_shot = mmd2_unbiased(X, Y, length_scale=2.0, block_size=10_000)
    for block in (3, 7, 64, 233):
        assert mmd2_unbiased(X, Y, length_scale=2.0, block_size=block) == pytest.approx(one_shot, abs=1e-9)


def test_kernel_matmul_matches_dense_kernel():
    g = gen(3)
    Z, S = torch.randn(23, 4, generator=g), torch.randn(23, 3, generator=g)
    K = torch.exp(-torch.cdist(Z.double(), Z.double()) ** 2 / (2 * 1.5 ** 2))
    K.fill_diagonal_(0.0)
    assert torch.allclose(kernel_matmul(Z, S, length_scale=1.5, block_size=5), K @ S.double(), atol=1e-12)


def test_near_zero_for_one_distribution_and_positive_when_shifted():
    g = gen(4)
    X, Y = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    same = mmd2_unbiased(X, Y, length_scale=1.0)
    shifted = mmd2_unbiased(X, Y + 2.0, length_scale=1.0)
    assert abs(same) < 0.01
    assert shifted > 0.3


def test_permutation_p_value():
    g = gen(5)
    X, Y = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g)
    same = mmd_test(X, Y, length_scale=1.0, n_permutations=200, generator=gen(6))
    far = mmd_test(X, Y + 1.5, length_scale=1.0, n_permutations=200, generator=gen(6))
    assert same.p_value > 0.05
    assert far.p_value == pytest.approx(1 / 201)
    assert same.mmd2 == pytest.approx(mmd2_unbiased(X, Y, length_scale=1.0), abs=1e-12)
    again = mmd_test(X, Y, length_scale=1.0, n_permutations=200, generator=gen(6))
    assert again == same


def test_vectorised_permuted_splits_equal_direct_computation():
    g = gen(7)
    Z = torch.randn(12, 3, generator=g)
    perms = [torch.randperm(12, generator=g) for _ in range(4)]
    S = torch.zeros(12, 4, dtype=torch.float64)
    for c, p in enumerate(perms):
        S[p[:5], c] = 1.0
    got = _mmd2_from_splits(_pooled([Z]), S, 5, length_scale=1.0, block_size=4)
    want = [mmd2_unbiased(Z[p[:5]], Z[p[5:]], length_scale=1.0) for p in perms]
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_subsampling_sizes_and_generator():
    g = gen(8)
    X, Y = torch.randn(300, 2, generator=g), torch.randn(50, 2, generator=g)
    res = mmd_test(X, Y, n_subsample=100, generator=gen(9))
    assert (res.n_x, res.n_y, res.p_value) == (100, 50, None)
    assert mmd_test(X, Y, n_subsample=None).n_x == 300
    assert res == mmd_test(X, Y, n_subsample=100, generator=gen(9))
    with pytest.raises(ValueError, match="Generator"):
        mmd_test(X, Y, n_subsample=100)
    with pytest.raises(ValueError, match=">= 2 rows"):
        mmd2_unbiased(X[:1], Y)


def test_mmd_by_group_per_run_and_target():
    g = gen(10)
    ref_X = torch.cat([torch.randn(30, 2, generator=g), torch.randn(30, 2, generator=g) + 3])
    ref_y = torch.tensor([0] * 30 + [1] * 30)
    x_cf = torch.randn(9, 2, generator=g)
    target = torch.tensor([1, 1, 1, 0, 0, 0, 1, 1, 0])
    runs = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])
    out = mmd_by_group(x_cf, target, ref_X, ref_y, groups=runs, length_scale=1.0, n_subsample=None)
    ip = out["ip_star"]
    assert ip[:3].unique().numel() == 1 and ip[3:6].unique().numel() == 1
    assert ip[0].item() == pytest.approx(mmd2_unbiased(x_cf[:3], ref_X[30:], length_scale=1.0))
    assert ip[3].item() == pytest.approx(mmd2_unbiased(x_cf[3:6], ref_X[:30], length_scale=1.0))
    assert ip[6].item() == pytest.approx(mmd2_unbiased(x_cf[6:8], ref_X[30:], length_scale=1.0))
    assert math.isnan(ip[8].item())                 # a group of one CE has no unbiased estimate
    with_p = mmd_by_group(x_cf, target, ref_X, ref_y, groups=runs, n_permutations=20, generator=gen())
    assert ((with_p["ip_star_p"][:8] > 0) & (with_p["ip_star_p"][:8] <= 1)).all()
    with pytest.raises(DataError, match="class 1"):
        mmd_by_group(x_cf, target, ref_X[:30], ref_y[:30], n_subsample=None)
