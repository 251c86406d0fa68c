"""Consistency contrasts: does CT, does SNS lower the invalidation rate? (docs/deviations.md, M11, M13)

Every contrast compares two sides on ONE common set of factuals, paired factual by factual
(the evaluation draws factuals and targets from the data alone, so every base model of a
dataset explains the same ones):

- ``<objective> − vanilla``: a CT base model and the vanilla base model of the same seed,
  data, model and test-time method, over the factuals *neither* model already predicts as the
  target (the informative factuals of both);
- ``+sns − g``, ``+ctrl − g`` and ``+sns − +ctrl (g)``: the same trained model searched by
  generator ``g`` plain, refined by SNS, or moved the same distance by the equal-length
  control (:mod:`ctgrid.generators.sns`).

Two paired differences per contrast: of the failure rate over all common factuals (``fail``:
an invalid counterfactual counts 1 — free of the selection by validity), and of the IV over
the common factuals valid on both sides (Black et al.'s measure; conditioned on both sides'
validity, so a side with lower validity is compared on a selected subset — said in the
notes). Intervals: the two-stage bootstrap of :mod:`.bootstrap` — the pairs of base models
(one per training seed) resampled, then the factuals within each drawn pair.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from .bootstrap import group_means
from .consistency import FACTUAL, interval, interval_text
from .render import Table, num

Pair = tuple[pd.DataFrame, pd.DataFrame]


def _method_pairs(methods: set[str]) -> Iterator[tuple[str, str, str]]:
    """(comparison, first method, second method) among one model's test-time methods."""
    for m in sorted(methods):
        for tag in ("+sns", "+ctrl"):
            if tag in m:
                plain = m.replace(tag, "", 1)
                if plain in methods:
                    yield f"{tag} − {plain}", m, plain
        if "+sns" in m and m.replace("+sns", "+ctrl", 1) in methods:
            ctrl = m.replace("+sns", "+ctrl", 1)
            yield f"+sns − +ctrl ({m.replace('+sns', '', 1)})", m, ctrl


def contrast_pairs(records: pd.DataFrame) -> Iterator[tuple[str, tuple, list[Pair]]]:
    """(comparison, (dataset, setting, within, variation), [(first side, second side) per seed])."""
    by_job = {k: g for k, g in records.groupby(["base_job", "variation"])}
    ct = records.dropna(subset=["baseline_job"])
    for (d, s, m, var, obj), g in ct.groupby(["dataset", "setting", "method", "variation", "objective"], sort=True):
        sides = [(a, by_job[(bl, var)]) for (_, bl), a in g.groupby(["base_job", "baseline_job"], sort=True)
                 if (bl, var) in by_job]
        if sides:
            yield f"{obj} − vanilla", (d, s, m, var), sides
    for (d, s, obj, var), g in records.groupby(["dataset", "setting", "objective", "variation"], sort=True):
        for comparison, first, second in _method_pairs(set(g["method"])):
            sides = []
            for _, h in g.groupby("seed", sort=True):
                a, b = h[h["method"] == first], h[h["method"] == second]
                if len(a) and len(b):
                    sides.append((a, b))
            if sides:
                yield comparison, (d, s, obj, var), sides


def paired(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The two sides on their common informative factuals: ``fail_a, fail_b, iv_a, iv_b,
    valid_a, valid_b, l2_a, l2_b`` (one row per factual)."""
    cols = [*FACTUAL, "informative", "valid", "iv", "fail", "l2"]
    m = a[cols].merge(b[cols], on=FACTUAL, suffixes=("_a", "_b"))
    return m[m["informative_a"].astype(bool) & m["informative_b"].astype(bool)].reset_index(drop=True)


def _record(comparison: str, key: tuple, sides: list[Pair], n_boot: int, confidence: float,
            how: str) -> dict:
    common = [paired(a, b) for a, b in sides]
    both = [c[c["valid_a"] & c["valid_b"]] for c in common]
    d_fail = [(c["fail_a"] - c["fail_b"]).to_numpy(float) for c in common]
    d_iv = [(c["iv_a"] - c["iv_b"]).to_numpy(float) for c in both]
    d_l2 = [(c["l2_a"] - c["l2_b"]).to_numpy(float) for c in both]
    f_lo, f_hi = interval(d_fail, n_boot, confidence, ("fail", comparison, *key), how)
    i_lo, i_hi = interval(d_iv, n_boot, confidence, ("iv", comparison, *key), how)
    rec = {"comparison": comparison, "dataset": key[0], "setting": key[1], "within": key[2],
           "variation": key[3], "n_pairs": sum(len(c) > 0 for c in common),
           "n_common": sum(len(c) for c in common), "d_fail": group_means(d_fail), "d_fail_lo": f_lo,
           "d_fail_hi": f_hi, "n_both_valid": sum(len(c) for c in both), "d_iv": group_means(d_iv),
           "d_iv_lo": i_lo, "d_iv_hi": i_hi, "d_l2": group_means(d_l2),
           "validity_a": group_means([c["valid_a"].to_numpy(float) for c in common]),
           "validity_b": group_means([c["valid_b"].to_numpy(float) for c in common])}
    rec["significant_fail"] = bool(np.isfinite(f_lo) and (f_lo > 0 or f_hi < 0))
    rec["significant_iv"] = bool(np.isfinite(i_lo) and (i_lo > 0 or i_hi < 0))
    return rec


def _notes(pct: str, n_boot: int, how: str) -> list[str]:
    unit = interval_text(how, "pairs of base models (one per training seed; Pairs)", "common factuals")
    return ["Both sides on one common set of factuals, paired factual by factual: for CT − BL the factuals "
            "neither base model already predicts as the target (the same seed, data and test-time method); for "
            "+sns / +ctrl the same trained model. Negative = the first side is more consistent.",
            f"{pct} intervals: {unit} ({n_boot} resamples); estimates are means over pairs of the per-pair "
            "mean differences. *: the interval excludes 0.",
            "Δ fail: difference of the failure rate (an invalid counterfactual counts 1, a valid one its IV) over "
            "all common factuals — free of the selection by validity. Δ IV: over the common factuals whose "
            "counterfactuals are valid on both sides (Black et al.'s IV), conditioned on both sides' validity "
            "(Val. a/b: validity of each side on the common factuals). Δ L2: over the same factuals.",
            "+ctrl: each counterfactual moved the L2 distance SNS moved it, straight along the gradient of its "
            "target log-probability (away from the boundary); +sns − +ctrl isolates what SNS adds beyond "
            "moving that far."]


def contrast_table(records: pd.DataFrame, *, n_boot: int, confidence: float, how: str = "bootstrap") -> Table:
    """The contrasts of the module docstring, one row each."""
    rows, recs = [], []
    pct = f"{confidence:.0%}"
    for comparison, key, sides in contrast_pairs(records):
        r = _record(comparison, key, sides, n_boot, confidence, how)
        recs.append(r)
        rows.append([key[0], key[1], comparison, key[2], key[3], str(r["n_pairs"]), str(r["n_common"]),
                     f"{num(100 * r['validity_a'], 1)} / {num(100 * r['validity_b'], 1)}",
                     num(r["d_fail"], 3) + ("*" if r["significant_fail"] else ""),
                     f"[{num(r['d_fail_lo'], 3)}, {num(r['d_fail_hi'], 3)}]", str(r["n_both_valid"]),
                     num(r["d_iv"], 3) + ("*" if r["significant_iv"] else ""),
                     f"[{num(r['d_iv_lo'], 3)}, {num(r['d_iv_hi'], 3)}]", num(r["d_l2"])])
    header = ["Data", "Setting", "Comparison", "Within", "Var.", "Pairs", "n common", "Val. a / b %", "Δ fail",
              f"{pct} CI", "n both valid", "Δ IV (both valid)", f"{pct} CI (IV)", "Δ L2 cost"]
    return Table("consistency_contrasts", "Consistency: does CT, does SNS lower the invalidation rate?",
                 header, rows, _notes(pct, n_boot, how), pd.DataFrame.from_records(recs), n_text=5)
