"""Table 1 per training seed: the spread across model pairs behind the two-stage intervals.

Usage: python docs/results/seed_spread.py FINAL_RESULTS MUTABILITY_RESULTS
For every dataset and training seed (one BL/CT model pair each): the % reduction of IP and
IP* (final grid) and of cost (mutability grid), computed as Table 1 computes them for one
pair (mean over runs of the per-run CT/BL ratio, informative individuals only), and the
accuracy change CT − BL in points. Prints Markdown; `docs/results/README.md` cites it.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from ctgrid.aggregate.keyresults import job_accuracy, robust_eps, run_level
from ctgrid.aggregate.load import Results
from ctgrid.aggregate.pairing import pair_jobs, paired_ce_units, paired_units

ORDER = ["lin_sep", "over", "circles", "moons", "adult", "cali", "credit", "gmsc", "mnist"]


def per_pair(units: pd.DataFrame) -> pd.Series:
    """% reduction per CT job: 100 (1 - mean over its runs of CT_u / BL_u)."""
    u = units[units["bl"] != 0]
    return 100.0 * (1.0 - (u["ct"] / u["bl"]).groupby(u["ct_job"]).mean())


def main(final: str, mutability: str) -> None:
    results = Results.load([final, mutability])
    pairs = pair_jobs(results).dropna(subset=["bl_job"])
    rl = run_level(results, valid_only=False)
    units, _ = paired_ce_units(pairs, rl.per_ce)
    star = rl.ip_star.groupby(["source", "job_id", "run"])["ip_star"].mean().rename("value").reset_index()
    ip_star = paired_units(pairs, star, ("run",))
    perf = results.performance()
    acc = job_accuracy(perf, robust_eps(perf)).set_index("job_id")["acc"]
    seed = {j: results.config(j).training.seed for j in pairs["ct_job"]}
    free, cons = pairs[~pairs["constrained"]], pairs[pairs["constrained"]]
    cols = {"IP": per_pair(units["ip"][units["ip"]["ct_job"].isin(free["ct_job"])]),
            "IP*": per_pair(ip_star[ip_star["ct_job"].isin(free["ct_job"])]),
            "cost (mut.)": per_pair(units["cost"][units["cost"]["ct_job"].isin(cons["ct_job"])])}
    d_acc = pd.Series({r.ct_job: 100 * (acc[r.ct_job] - acc[r.bl_job]) for r in free.itertuples()})
    print("| dataset | quantity | " + " | ".join(f"seed {s}" for s in sorted(set(seed.values())))
          + " | min | max | seeds > 0 |")
    print("|---|---|" + "---:|" * (len(set(seed.values())) + 3))
    for data in sorted(set(pairs["dataset"]), key=lambda d: (ORDER + [d]).index(d)):
        for name, values in [*cols.items(), ("Δ acc (points)", d_acc)]:
            jobs = (cons if name == "cost (mut.)" else free)
            jobs = jobs[jobs["dataset"] == data]["ct_job"]
            v = values.reindex(jobs).dropna()
            by_seed = dict(sorted((seed[j], x) for j, x in v.items()))
            if not by_seed:
                continue
            cells = [f"{x:.1f}" for x in by_seed.values()]
            arr = np.array(list(by_seed.values()))
            print(f"| {data} | {name} | {' | '.join(cells)} | {arr.min():.1f} | {arr.max():.1f} | "
                  f"{int((arr > 0).sum())}/{len(arr)} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
