"""Input-gradient sensitivity of the trained synthetic models (evidence for docs/results/README.md).

Usage: python docs/results/gradient_share.py RESULTS_DIR [RESULTS_DIR ...]
For every finished job on a 2-feature dataset: test accuracy, the median |logit_1 - logit_0|
on the test set (how steep/confident the model is), the mean |d(logit_1 - logit_0)/dx_d| per
feature over the test set and the share of it on x0 (the feature the mutability grids make
immutable). Needs CTGRID_DATA only for real datasets (skipped here). Only the replicate
``training.seed`` 0 of each model (the committed table's models; issue 24 re-ran final and
mutability with five seeds, the sensitivity analysis was not repeated per seed).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from ctgrid.data import load_dataset
from ctgrid.grid.job import JobConfig
from ctgrid.models import build_model


def main(roots: list[str]) -> None:
    torch.set_num_threads(1)
    print("| grid | model | acc % | median logit gap | mean grad x0 | mean grad x1 | share on x0 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for root in roots:
        rows = []
        for job in sorted(Path(root, "jobs").iterdir()):
            if not (job / "done.json").exists():
                continue
            cfg = JobConfig.from_dict(yaml.safe_load((job / "config.yaml").read_text()))
            if cfg.data.name not in ("lin_sep", "over", "circles", "moons") or cfg.training.seed != 0:
                continue
            ds = load_dataset(cfg.data)
            model = build_model(cfg.model, ds.n_features, ds.n_classes)
            state = torch.load(job / "model.pt", weights_only=True)
            model.load_state_dict(state.get("state_dict", state))
            model.eval()
            X = ds.X_test.clone().requires_grad_(True)
            z = model(X)
            gap = z[:, 1] - z[:, 0]
            (grad,) = torch.autograd.grad(gap.sum(), X)
            g = grad.abs().mean(0)
            acc = float((z.argmax(1) == ds.y_test).float().mean()) * 100
            rows.append((cfg.name, acc, float(gap.detach().abs().median()), float(g[0]), float(g[1]),
                         float(g[0] / g.sum())))
        for name, acc, gap, g0, g1, share in sorted(rows):
            print(f"| {Path(root).name} | {name} | {acc:.1f} | {gap:.1f} | {g0:.2f} | {g1:.2f} | {share:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
