"""Several models searched as one batch (a pack's CE search, an evaluation of several models).

:class:`RoutedModels` runs each active row through its own model, member by member, with
exactly the shapes a search of that member alone has, so each member's search is the one it
gets alone; everything else in the search step (penalties, constraints, convergence,
compaction) runs once for all members.

Why member by member (``benchmarks/bench_search_kernels.py``, one run, moons/adult MLPs, a
step's model forward and input gradient): one ``bmm`` per layer over all members (rows in
aligned per-member blocks: pack-invariant, but not autograd's bits) ran at 0.4-0.7x, per-row
weight gathers at 0.04-0.3x; a hand-written input gradient (the calls autograd makes, the same
bits) gained nothing in a whole pack (0.997x at K 45), because the backward runs after every
member's forward and reads their activations from memory again.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
from torch import nn

from .engine import _padded


class RoutedModels(nn.Module):
    """Several models searched as one batch: rows ``[offsets[k], offsets[k+1])`` of the
    searched batch belong to ``models[k]`` (``sizes[k]`` rows each)."""

    routes_rows = True

    def __init__(self, models: Sequence[nn.Module], sizes: Sequence[int]):
        super().__init__()
        self.members = nn.ModuleList(models)
        self.bounds = torch.tensor(list(itertools.accumulate(sizes)))[:-1]

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # rows are sorted: member k's active rows are those below bound k and not below bound
        # k - 1 (K binary searches instead of a bucket per row, a millisecond at 45,000 rows)
        ends = torch.searchsorted(rows, self.bounds).tolist()
        counts = [b - a for a, b in zip([0, *ends], [*ends, rows.numel()])]
        parts = [_padded(m, _aligned(seg)) for m, seg, c in zip(self.members, x.split(counts), counts) if c]
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def _aligned(rows: torch.Tensor) -> torch.Tensor:
    """``rows``, copied when the view does not start on a 64-byte boundary: for some layer
    shapes (e.g. 30 -> 8) MKL's GEMM gives other last bits for an input at another 16-byte
    offset, and a member's rows split from the batch start wherever the rows before end —
    its search alone reads freshly allocated (aligned) rows."""
    return rows if rows.data_ptr() % 64 == 0 else rows.clone()
