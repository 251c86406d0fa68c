"""Memory of IP and IP* at MNIST scale stays bounded by the block size, not the set sizes.

Each case runs in a fresh child process, which reports the growth of its peak RSS
during the computation alone (inputs already allocated) and the wall time. The
naive figure is what a one-shot computation would have to hold: the ``n x m x d``
difference tensor for IP, the ``N x N`` kernel matrix for IP*.

    python benchmarks/bench_mmd.py            # MNIST scale (about a minute on 2 cores)
    python benchmarks/bench_mmd.py --quick    # small sizes
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # run from a checkout, installed or not
MIB = 2 ** 20


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux: KiB


def child(case: str, n: int, m: int, d: int, block: int) -> None:
    import torch
    from ctgrid.evaluation import mean_l1_distance, mmd2_unbiased
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = torch.rand(m, d, generator=g, dtype=torch.float64)
    base, t0 = _peak_rss(), time.perf_counter()
    if case == "ip":
        mean_l1_distance(X, Y, block_size=block)
        naive = n * m * d * 8
    else:
        mmd2_unbiased(X, Y, block_size=block)
        naive = (n + m) ** 2 * 8
    print(json.dumps({"extra": _peak_rss() - base, "seconds": time.perf_counter() - t0, "naive": naive}))


def run(case: str, n: int, m: int, d: int, block: int) -> dict:
    cmd = [sys.executable, __file__, "--child", case, str(n), str(m), str(d), str(block)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=5, metavar=("CASE", "N", "M", "D", "BLOCK"))
    args = ap.parse_args()
    if args.child:
        case, *sizes = args.child
        child(case, *map(int, sizes))
        return
    # MNIST: 784 features, 12,500 CEs (100 runs x 125), 1,000 IP samples / ~6,000 class points.
    n, d = (1250, 784) if args.quick else (12500, 784)
    block = 1024
    for case, m in (("ip", 1000), ("ip_star", 600 if args.quick else 6000)):
        small = run(case, n // 10, m, d, block)
        large = run(case, n, m, d, block)
        print(f"BENCH {case}_n{n // 10}_peak_extra {small['extra'] / MIB:.1f} MiB")
        print(f"BENCH {case}_n{n}_peak_extra {large['extra'] / MIB:.1f} MiB")
        print(f"BENCH {case}_n{n}_naive_would_hold {large['naive'] / MIB:.1f} MiB")
        print(f"BENCH {case}_n{n}_seconds {large['seconds']:.2f} s")
        print(f"BENCH {case}_peak_growth_for_10x_rows {large['extra'] / max(small['extra'], 1):.2f} ratio")


if __name__ == "__main__":
    main()
