"""The MNIST figure: a factual x target grid of counterfactual images, BL next to CT.

One test image per class (predicted correctly by the baseline, drawn with a seeded
generator) is the factual of its row; column ``j`` shows its counterfactual for
target class ``j`` (the diagonal shows the factual). Both models get the same
factuals and the test-time generator of their evaluation config, with the
largest ``lambda_energy`` of the evaluation grid (the reference's figure used a
larger, hand-picked one).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, DataError
from ..evaluation.evaluate import evaluation_constraints
from ..evaluation.grid import search_config
from ..generators import codec_for, make_generator
from ..store import ResultStore
from ..seeding import numpy_generator
from .figures import _grid, save
from .load import Results


def _pick_pair(results: Results, pairs: pd.DataFrame) -> pd.Series | None:
    cand = pairs[(pairs["dataset"] == "mnist") & pairs["bl_job"].notna() & ~pairs["constrained"]]
    for _, row in cand.sort_values(["setting", "ct_job"]).iterrows():
        if results.model_path(row["source"], row["ct_job"]).exists() and \
                results.model_path(int(row["bl_source"]), row["bl_job"]).exists():
            return row
    return None


def _factuals(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, n_classes: int,
              seed: int) -> torch.Tensor:
    with torch.no_grad():
        pred = model(X).argmax(dim=1)
    rng = numpy_generator("aggregate-mnist-figure", seed)
    idx = []
    for c in range(n_classes):
        ok = torch.nonzero((y == c) & (pred == c)).flatten().cpu().numpy()
        if not len(ok):
            ok = torch.nonzero(y == c).flatten().cpu().numpy()
        idx.append(int(rng.choice(ok)))
    return X[idx]


def _mosaic(model: torch.nn.Module, engine, factuals: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    k = len(factuals)
    rows = torch.arange(k, device=factuals.device).repeat_interleave(k)
    targets = torch.arange(k, device=factuals.device).repeat(k)
    batch = engine.search(model, factuals[rows], targets)
    cf = batch.counterfactual.detach().clone()
    same = rows == targets
    cf[same] = factuals[rows[same]]  # the diagonal shows the factual itself
    images = cf.reshape(k, k, *shape)
    h, w = shape
    return images.permute(0, 2, 1, 3).reshape(k * h, k * w).cpu().numpy()


def mnist_grid(results: Results, pairs: pd.DataFrame, out_dir: Path, *,
               data_dir: str | os.PathLike | None, seed: int = 0) -> tuple[list[Path], str | None]:
    """Draw the figure; returns (paths, note) — a note says why it was skipped."""
    row = _pick_pair(results, pairs)
    if row is None:
        return [], "no finished MNIST baseline/CT pair with model.pt: MNIST figure skipped"
    cfg = results.config(row["ct_job"])
    try:
        data = results.dataset(row["ct_job"], data_dir)
    except (DataError, ConfigError) as exc:
        return [], f"MNIST figure skipped: {str(exc).splitlines()[0]}"
    try:
        bl = results.model(int(row["bl_source"]), row["bl_job"], data_dir)
        ct = results.model(int(row["source"]), row["ct_job"], data_dir)
    except (OSError, RuntimeError, KeyError, ValueError, DataError, ConfigError) as exc:
        return [], f"MNIST figure skipped: cannot load model.pt ({str(exc).splitlines()[0]})"
    ev = cfg.evaluation
    lam = max(ev.lambda_energy) if ev.lambda_energy else 0.0
    gen = search_config(ev)   # the evaluation's own test-time search (REVISE included)
    codec = codec_for(gen, data.X_train, cache_dir=ResultStore(results.sources[int(row["source"])].root).cache_dir)
    engine = make_generator(gen, evaluation_constraints(data, ev), codec=codec, lambda_energy=lam)
    if data.image_shape is None:
        return [], "MNIST figure skipped: the dataset has no image shape"
    shape = data.image_shape
    factuals = _factuals(bl, data.X_test, data.y_test, data.n_classes, seed)
    fig, axs = _grid(1, 2, 5.0, 5.3)
    h, w = shape
    k = data.n_classes
    ct_name = "CT" if row["setting"] == "—" else f"CT ({row['setting']})"
    for ax, (name, model) in zip(axs[0], (("BL", bl), (ct_name, ct))):
        ax.imshow(_mosaic(model, engine, factuals, shape), cmap="gray", vmin=-1, vmax=1)
        ax.set_xticks([w * (j + 0.5) for j in range(k)], [str(j) for j in range(k)], fontsize=7)
        ax.set_yticks([h * (i + 0.5) for i in range(k)], [str(i) for i in range(k)], fontsize=7)
        ax.set_xlabel("target class")
        ax.set_ylabel("factual class")
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"MNIST counterfactuals ({gen.name}, λ_energy={lam:g}, τ={ev.tau:g}, T={ev.maxiter})",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "mnist_counterfactuals"), None
