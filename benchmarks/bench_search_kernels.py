"""Measure-and-choose for the pack search's model kernel (issue 23): one search step's model
forward and input gradient over K members' rows, four ways (five with ``--compiled``), timed in
one process.

- ``member``: what ctgrid runs (:class:`ctgrid.generators.RoutedModels`): each member's rows
  through its own ``nn.Module``, autograd for the input gradient.
- ``direct``: the same kernels per member with the input gradient written out (``mm``,
  ``threshold_backward``, ``mm``: the calls autograd makes, so the same bits), each member's
  backward right after its forward. The engine cannot do this: the loss's gradient needs the
  logits of every member first (its row-wise work runs once for the pack), and with the
  backward after all forwards the same hand-written gradient measured 0.997x on a whole pack
  of 45 (the activations are read back from memory either way).
- ``stacked``: ONE ``bmm`` per layer over all members (rows in per-member blocks of R rows,
  every dimension padded to a multiple of 4 floats so that each row is 16-byte aligned),
  hand-written backward: no per-member loop at all.
- ``gather``: each row multiplied by its own member's weights, gathered per row
  (``bmm`` of (N, 1, d) by (N, d, h)).
- ``compiled`` (``--compiled``): the gathered products written as pointwise multiplies and
  sums, forward and input gradient compiled by inductor into one graph (:func:`compiled_variant`).

Each variant is checked against ``member``: ``identical`` 1 if its logits and gradients are the
same bits (``direct`` must be), else minus the largest absolute difference of the gradients;
and each member's rows against the same rows computed as a pack of one (``pack_invariant`` 1:
the same bits whatever the pack).

The step also has the loss's row-wise work (cross-entropy, penalties, convergence,
compaction), which is the same for all four and not timed here.

Usage: python benchmarks/bench_search_kernels.py [--reps N] [--compiled]
Prints ``BENCH search_kernel_<variant>_<case> <ratio> x`` (time of ``member`` / time of the
variant: above 1 is faster) and the per-step milliseconds of ``member``.
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ctgrid.generators.routed import RoutedModels, _aligned

#: (name, features, members): moons, adult-like width (one hidden layer of 32, two classes)
CASES = [("moons_8", 2, 8), ("moons_45", 2, 45), ("moons_135", 2, 135), ("adult_8", 104, 8)]
ROWS = 1000


def up(n: int, m: int = 4) -> int:
    return m * math.ceil(n / m)


def mlps(k: int, d: int, seed: int = 0) -> list[nn.Sequential]:
    torch.manual_seed(seed)
    out = [nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 2)) for _ in range(k)]
    for m in out:
        m.requires_grad_(False)
    return out


def member_step(models, x, counts, g_out):
    routed = RoutedModels(models, counts)
    s = x.clone().requires_grad_(True)
    logits = routed(s, torch.arange(x.shape[0]))
    (g,) = torch.autograd.grad(logits, s, g_out)
    return logits.detach(), g


def direct_step(models, x, counts, g_out):
    logits, grads = [], []
    for m, seg, g in zip(models, x.split(counts), g_out.split(counts)):
        a = _aligned(seg)
        h = torch.relu(F.linear(a, m[0].weight, m[0].bias))
        logits.append(F.linear(h, m[2].weight, m[2].bias))
        gh = torch.ops.aten.threshold_backward(g.mm(m[2].weight), h, 0)
        grads.append(gh.mm(m[0].weight))
    return torch.cat(logits), torch.cat(grads)


def _stack(mats: list[torch.Tensor]) -> torch.Tensor:
    i, o = mats[0].shape
    v = torch.zeros(len(mats), up(i), up(o))
    for k, w in enumerate(mats):
        v[k, :i, :o] = w
    return v


def stacked_step(models, x, counts, g_out):
    k, d, R = len(models), x.shape[1], 16 * math.ceil(max(max(counts), 32) / 16)
    w1, w2 = _stack([m[0].weight.t() for m in models]), _stack([m[2].weight.t() for m in models])
    b1, b2 = _stack([m[0].bias[None] for m in models])[:, :1], _stack([m[2].bias[None] for m in models])[:, :1]
    starts = torch.tensor([0, *counts]).cumsum(0)[:-1]
    member = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))
    pos = member * R + torch.arange(x.shape[0]) - starts[member]
    buf = x.new_zeros(k * R, up(d))
    buf[:, :d].index_copy_(0, pos, x)
    h = torch.bmm(buf.view(k, R, -1), w1).add_(b1).clamp_min_(0)
    out = torch.bmm(h, w2).add_(b2).view(k * R, -1)[:, :2].index_select(0, pos)
    gb = x.new_zeros(k * R, up(2))
    gb[:, :2].index_copy_(0, pos, g_out)
    gh = torch.bmm(gb.view(k, R, -1), w2.transpose(1, 2).contiguous()).masked_fill_(h <= 0, 0)
    g = torch.bmm(gh, w1.transpose(1, 2).contiguous()).view(k * R, -1)[:, :d].index_select(0, pos)
    return out, g


def gather_step(models, x, counts, g_out):
    member = torch.repeat_interleave(torch.arange(len(models)), torch.tensor(counts))
    w1 = torch.stack([m[0].weight.t() for m in models])[member]          # (N, d, 32)
    w2 = torch.stack([m[2].weight.t() for m in models])[member]          # (N, 32, 2)
    b1 = torch.stack([m[0].bias for m in models])[member]
    b2 = torch.stack([m[2].bias for m in models])[member]
    h = torch.baddbmm(b1[:, None], x[:, None], w1).clamp_min_(0)
    out = torch.baddbmm(b2[:, None], h, w2).squeeze(1)
    gh = torch.bmm(g_out[:, None], w2.transpose(1, 2)).masked_fill_(h <= 0, 0)
    return out, torch.bmm(gh, w1.transpose(1, 2)).squeeze(1)


def compiled_variant() -> Callable:
    """``--compiled``: the gathered formulation as pointwise products and sums, its forward and
    input gradient (``torch.func.vjp``) compiled by inductor into one graph (``fullgraph``, fixed
    shapes: a new shape compiles again). Its bits are inductor's, not MKL's."""
    def forward(x, member, w1, b1, w2, b2):
        h = torch.relu((x[:, None, :] * w1[member]).sum(-1) + b1[member])      # w1: (K, 32, d)
        return (h[:, None, :] * w2[member]).sum(-1) + b2[member]               # w2: (K, 2, 32)

    def step(x, member, w1, b1, w2, b2, g_out):
        logits, vjp = torch.func.vjp(lambda s: forward(s, member, w1, b1, w2, b2), x)
        return logits, vjp(g_out)[0]

    compiled = torch.compile(step, dynamic=False, fullgraph=True)

    def compiled_step(models, x, counts, g_out):
        member = torch.repeat_interleave(torch.arange(len(models)), torch.tensor(counts))
        w1, w2 = torch.stack([m[0].weight for m in models]), torch.stack([m[2].weight for m in models])
        b1, b2 = torch.stack([m[0].bias for m in models]), torch.stack([m[2].bias for m in models])
        return compiled(x, member, w1, b1, w2, b2, g_out)
    return compiled_step


def best_ms(fn: Callable[..., object], args: tuple, reps: int) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--compiled", action="store_true",
                    help="also the inductor-compiled gathered kernel (needs a C++ compiler; compiles twice a case)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = {"direct": direct_step, "stacked": stacked_step, "gather": gather_step}
    if args.compiled:
        variants["compiled"] = compiled_variant()
    for case, d, k in CASES:
        models, counts = mlps(k, d), [ROWS - 7 * (i % 5) for i in range(k)]   # members' active rows differ
        x, g_out = torch.randn(sum(counts), d), torch.randn(sum(counts), 2)   # g_out: what the loss sends
        ref_logits, ref_grad = member_step(models, x, counts, g_out)
        base = best_ms(member_step, (models, x, counts, g_out), args.reps)
        print(f"BENCH search_kernel_member_ms_{case} {base:.2f} ms", flush=True)
        for name, step in variants.items():
            logits, grad = step(models, x, counts, g_out)
            same = torch.equal(logits, ref_logits) and torch.equal(grad, ref_grad)
            k1 = slice(counts[0], counts[0] + counts[1])      # member 1, searched alone
            solo_logits, solo_grad = step(models[1:2], x[k1].clone(), counts[1:2], g_out[k1].clone())
            invariant = torch.equal(solo_logits, logits[k1]) and torch.equal(solo_grad, grad[k1])
            t = best_ms(step, (models, x, counts, g_out), args.reps)
            print(f"BENCH search_kernel_{name}_{case} {base / t:.2f} x", flush=True)
            print(f"BENCH search_kernel_{name}_identical_{case} "
                  f"{1 if same else -float((grad - ref_grad).abs().max()):.3g} flag", flush=True)
            print(f"BENCH search_kernel_{name}_pack_invariant_{case} {int(invariant)} flag", flush=True)


if __name__ == "__main__":
    main()
