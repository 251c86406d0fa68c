"""Per-dataset wall time of a finished grid, from its jobs' done.json records.

Usage: python docs/results/job_times.py RESULTS_DIR [RESULTS_DIR ...]
Prints, per grid and dataset, the training and evaluation seconds of the CT (full) and
baseline (vanilla) jobs, and the grid's total job-seconds (the sum over jobs; the grid's
wall time under `mpiexec -n 3` is about half of it, two workers running jobs at once).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(roots: list[str]) -> None:
    print("| grid | dataset | CT train s | CT eval s | BL train s | BL eval s | job-seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for root in roots:
        rows: dict[str, dict[str, float]] = {}
        for done in sorted(Path(root, "jobs").glob("*/done.json")):
            rec = json.loads(done.read_text())
            data = rec["data_summary"]["name"]
            side = "BL" if rec["name"].endswith("-vanilla") else "CT"
            r = rows.setdefault(data, {})
            r[f"{side} train"] = r.get(f"{side} train", 0.0) + rec["train_seconds"]
            r[f"{side} eval"] = r.get(f"{side} eval", 0.0) + rec["eval_seconds"]
        total = 0.0
        order = ["lin_sep", "over", "circles", "moons", "adult", "cali", "credit", "gmsc", "mnist"]
        for data, r in sorted(rows.items(), key=lambda kv: (order + [kv[0]]).index(kv[0])):
            s = sum(r.values())
            total += s
            cells = [f"{r.get(k, float('nan')):.0f}" for k in ("CT train", "CT eval", "BL train", "BL eval")]
            print(f"| {Path(root).name} | {data} | {' | '.join(cells)} | {s:.0f} |")
        print(f"| {Path(root).name} | **all** | | | | | **{total:.0f}** |")


if __name__ == "__main__":
    main(sys.argv[1:])
