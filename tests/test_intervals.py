"""Seeds as the unit of inference: the two-stage bootstrap against hand enumerations, and the
intervals of Table 1 and of the consistency tables on hand-made frames whose bootstrap
distributions follow from the literals."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from ctgrid.aggregate.bootstrap import group_means, percentile, two_stage
from ctgrid.aggregate.consistency import iv_table
from ctgrid.aggregate.contrasts import contrast_table
from ctgrid.aggregate.pairing import paired_ce_units, reduction

B = 20_000


def _freq(values: np.ndarray) -> dict[float, float]:
    c = Counter(np.round(values, 9).tolist())
    return {k: v / len(values) for k, v in c.items()}


def _close(got: dict[float, float], want: dict[float, float], tol: float = 0.015) -> None:
    assert set(got) == set(want), (got, want)
    assert all(abs(got[k] - want[k]) < tol for k in want), (got, want)


def test_identical_units_inside_each_seed_leave_the_seed_level_bootstrap():
    """Seeds with values 0 and 1 (all units equal): the replicate is the mean of two seeds drawn
    with replacement — 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4."""
    reps = two_stage([np.zeros(7), np.ones(3)], B, np.random.default_rng(0))
    _close(_freq(reps), {0.0: 0.25, 0.5: 0.5, 1.0: 0.25})
    assert percentile(reps, 0.4) == (0.5, 0.5)        # the 30 % and 70 % quantiles
    assert percentile(reps, 0.9) == (0.0, 1.0)
    assert group_means([np.zeros(7), np.ones(3)]) == 0.5  # each seed weighs the same (pooled: 0.3)


def test_one_seed_is_the_bootstrap_of_its_units():
    reps = two_stage([np.array([0.0, 1.0])], B, np.random.default_rng(1))
    _close(_freq(reps), {0.0: 0.25, 0.5: 0.5, 1.0: 0.25})


def test_both_stages_match_an_exhaustive_enumeration():
    """Seeds A = [0, 1] and C = [2]: enumerate the two seed draws, then each drawn A's two unit draws."""
    groups = {"A": [0.0, 1.0], "C": [2.0]}
    want: Counter = Counter()
    for s1, s2 in itertools.product("AC", repeat=2):                 # 1/4 each
        inner = [list(itertools.product(groups[s], repeat=len(groups[s]))) for s in (s1, s2)]
        for d1, d2 in itertools.product(*inner):
            p = 0.25 / (len(inner[0]) * len(inner[1]))
            want[round((np.mean(d1) + np.mean(d2)) / 2, 9)] += p
    reps = two_stage([np.array(groups["A"]), np.array(groups["C"])], B, np.random.default_rng(2))
    _close(_freq(reps), dict(want))
    assert sum(want.values()) == pytest.approx(1.0)


def _per_ce(ratios: dict[str, float], runs: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-counterfactual rows of CT jobs ``ct<s>`` (IP = ratio x 2) and their baselines
    ``bl<s>`` (IP 2), two individuals per run, one lambda."""
    rows, pairs = [], []
    for seed, r in ratios.items():
        for job, ip in ((f"ct{seed}", 2.0 * r), (f"bl{seed}", 2.0)):
            for run, ind in itertools.product(range(runs), range(2)):
                rows.append({"source": 0, "job_id": job, "lambda_energy": 1.0, "run": run, "individual": ind,
                             "target": 1, "predicted": 0, "factual_index": 10 * run + ind,
                             "validity": 1.0, "ip": ip, "cost": 1.0})
        pairs.append({"source": 0, "ct_job": f"ct{seed}", "bl_source": 0, "bl_job": f"bl{seed}", "dataset": "d",
                      "objective": "full", "setting": "—", "constrained": False})
    return pd.DataFrame(rows), pd.DataFrame(pairs)


def test_table_1_intervals_resample_model_pairs_then_runs():
    """Two model pairs whose runs all give CT/BL = 0.5 and 0.7: % reduction 40; over pairs the
    replicates are 50, 40, 30 (1/4, 1/2, 1/4), so the 40 % interval is [40, 40] and the 90 %
    one [30, 50]; the within-model view holds the two models fixed and is narrower."""
    per_ce, pairs = _per_ce({"0": 0.5, "1": 0.7})
    units = paired_ce_units(pairs, per_ce)[0]["ip"]
    assert len(units) == 8
    ct, bl, groups = units["ct"].to_numpy(), units["bl"].to_numpy(), units["ct_job"].to_numpy()
    kw = dict(n_boot=B, seed_parts=("t",), groups=groups)
    r40 = reduction(ct, bl, confidence=0.4, **kw)
    r90 = reduction(ct, bl, confidence=0.9, **kw)
    assert r40.pct == pytest.approx(40.0) and (r40.lo, r40.hi) == pytest.approx((40.0, 40.0))
    assert (r90.lo, r90.hi) == pytest.approx((30.0, 50.0)) and r90.n_pairs == 2
    assert (r90.diff, r90.diff_lo, r90.diff_hi) == pytest.approx((-0.8, -1.0, -0.6)) and r90.star
    within = reduction(ct, bl, confidence=0.9, interval="within-model", **kw)
    assert within.pct == pytest.approx(40.0) and 30.0 < within.lo < within.hi < 50.0
    one = reduction(ct[:4], bl[:4], confidence=0.9, **{**kw, "groups": groups[:4]})
    assert one.n_pairs == 1 and (one.lo, one.hi) == pytest.approx((50.0, 50.0))   # its runs agree


def test_a_repeated_factual_counts_once_in_table_1():
    per_ce, pairs = _per_ce({"0": 0.5}, runs=1)
    extra = per_ce.iloc[[0, 2]].assign(individual=2, ip=[100.0, 2.0])   # individual 2 repeats individual 0
    units = paired_ce_units(pairs, pd.concat([per_ce, extra], ignore_index=True))[0]["ip"]
    assert units["ct"].tolist() == [1.0] and units["bl"].tolist() == [2.0]


def _records() -> pd.DataFrame:
    """Two seeds per arm, four factuals, RS. IV: CT 0.2 (seed 0) / 0.6 (seed 1), BL 0.1 / 0.3;
    CT seed 0 already predicts the target at factual 3, BL seed 0 at factual 2; BL seed 1's
    counterfactual of factual 1 is invalid."""
    rows = []
    for obj, ivs, job in (("full", (0.2, 0.6), "c"), ("vanilla", (0.1, 0.3), "b")):
        for seed, iv in enumerate(ivs):
            for f in range(4):
                informative = (obj, seed, f) not in {("full", 0, 3), ("vanilla", 0, 2)}
                valid = (obj, seed, f) != ("vanilla", 1, 1)
                rows.append({"base_job": f"{job}{seed}", "baseline_job": f"b{seed}" if obj == "full" else None,
                             "dataset": "d", "objective": obj, "setting": "—", "method": "generic",
                             "variation": "RS", "seed": seed, "n_models": 10, "factual_index": f, "target": 1,
                             "lambda_energy": 0.0, "informative": informative, "valid": valid,
                             "iv": iv if valid else np.nan, "fail": iv if valid else 1.0, "l1": 1.0, "l2": 1.0,
                             "moved": np.nan})
    return pd.DataFrame(rows)


def test_consistency_intervals_resample_base_models_then_factuals():
    table = iv_table(_records(), n_boot=B, confidence=0.9).data.set_index("objective")
    ct = table.loc["full"]
    assert ct["n_bases"] == 2 and ct["n"] == 7 and ct["iv_mean"] == pytest.approx(0.4)
    assert (ct["iv_lo"], ct["iv_hi"]) == pytest.approx((0.2, 0.6))          # seeds 0.2 / 0.6, units equal
    assert ct["iv_sd_models"] == pytest.approx(np.std([0.2, 0.6], ddof=1))
    narrow = iv_table(_records(), n_boot=B, confidence=0.4).data.set_index("objective").loc["full"]
    assert (narrow["iv_lo"], narrow["iv_hi"]) == pytest.approx((0.4, 0.4))
    bl = table.loc["vanilla"]                                               # seed 1: 3 valid of 4
    assert bl["validity"] == pytest.approx((1.0 + 0.75) / 2) and bl["fail"] == pytest.approx(
        (0.1 + (0.3 * 3 + 1.0) / 4) / 2)


def test_ct_minus_bl_compares_one_common_factual_set():
    c = contrast_table(_records(), n_boot=B, confidence=0.9).data
    row = c[c["comparison"] == "full − vanilla"].iloc[0]
    # pair 0: factuals 0, 1 (2 and 3 are not informative on one side); pair 1: all four
    assert row["n_pairs"] == 2 and row["n_common"] == 2 + 4
    # IV on factuals valid on both: pair 0 0.2 - 0.1, pair 1 0.6 - 0.3 (factual 1 invalid for BL)
    assert row["n_both_valid"] == 2 + 3 and row["d_iv"] == pytest.approx((0.1 + 0.3) / 2)
    assert (row["d_iv_lo"], row["d_iv_hi"]) == pytest.approx((0.1, 0.3)) and row["significant_iv"]
    # fail over all common factuals: pair 1's factual 1 counts 1 for BL
    d1 = ((0.6 - 0.3) * 3 + (0.6 - 1.0)) / 4
    assert row["d_fail"] == pytest.approx((0.1 + d1) / 2)
