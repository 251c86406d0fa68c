"""The :class:`Dataset` every other part of ctgrid consumes (its config: :mod:`.config`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from ..constraints import Constraints
from ..errors import ConfigError
from .config import DATASETS, DataConfig

__all__ = ["DATASETS", "DataConfig", "Dataset"]

_SPLITS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")

@dataclass(frozen=True, eq=False)
class Dataset:
    """A preprocessed dataset: float32 features, int64 labels, three splits.

    Preprocessing (standardisation, one-hot) is fitted on the training split only.
    ``categorical_groups`` lists the column indices of each one-hot group.
    ``constraints`` holds the domain bounds and mutability used by every search.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    feature_names: tuple[str, ...]
    constraints: Constraints
    n_classes: int
    batch_size: int
    categorical_groups: tuple[tuple[int, ...], ...] = ()
    image_shape: tuple[int, int] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def device(self) -> torch.device:
        """Where the split tensors are (all on one device; :meth:`to`)."""
        return self.X_train.device

    def to(self, device: torch.device | str) -> "Dataset":
        """This dataset with every split and the constraints on ``device``, moved once
        (``self`` when already there: a CPU run keeps its very tensors). Everything computed
        from the data's content (seeds of the paired draws, checkpoint fingerprints, cache
        keys) hashes the bytes on the CPU, so it is the same on every device."""
        device = torch.device(device)
        if self.X_train.device == device:
            return self
        moved = {f: getattr(self, f).to(device) for f in _SPLITS}
        return replace(self, **moved, constraints=self.constraints.to(device))

    def leave_one_out(self, i: int) -> tuple["Dataset", int]:
        """This dataset without one training row — the ``i``-th of a permutation of the
        training rows seeded by their content (so the ``i``-th variant of a grid drops the same
        row in every run) — and that row's index. Preprocessing and domain stay as fitted on
        the full training split: only what the model trains on changes."""
        from .._torch import tensor_digest
        from ..seeding import torch_generator
        n = len(self.y_train)
        if not 0 <= i < n:
            raise ConfigError(f"training.leave_out: got {i}; allowed: -1 (none) or 0..{n - 1} "
                              f"(the training rows of {self.name!r})")
        key = tensor_digest(self.X_train, self.y_train).hexdigest()
        row = int(torch.randperm(n, generator=torch_generator("leave_out", key))[i])
        on = self.X_train.device
        keep = torch.cat([torch.arange(row, device=on), torch.arange(row + 1, n, device=on)])
        return replace(self, X_train=self.X_train[keep], y_train=self.y_train[keep]), row

    def decode(self, X: torch.Tensor) -> Any:
        """Rows ``X`` (``(n, d)``, as the model sees them) in the data's original units and
        categories, as a pandas DataFrame with one column per original variable: standardised
        columns back in raw units (``X * std + mean``, ``meta``), each one-hot group as the text
        of its largest entry's category (a counterfactual searched with the groups continuous
        is read at its argmax). Data without recorded statistics (synthetic, MNIST) come back
        as they are."""
        import numpy as np
        import pandas as pd
        x = X.detach().double().cpu().numpy()
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"decode expects rows of {self.n_features} features, got shape {tuple(X.shape)}")
        mean = np.asarray(self.meta.get("feature_mean", np.zeros(self.n_features)), dtype=np.float64)
        std = np.asarray(self.meta.get("feature_std", np.ones(self.n_features)), dtype=np.float64)
        raw = x * std + mean
        in_group = {i: g for g in self.categorical_groups for i in g}
        columns: dict[str, Any] = {}
        for i, name in enumerate(self.feature_names):
            group = in_group.get(i)
            if group is None:
                columns[name] = raw[:, i]
            elif i == group[0]:
                variable = name.split("=", 1)[0]
                levels = np.array([self.feature_names[j].split("=", 1)[1] for j in group], dtype=object)
                columns[variable] = levels[x[:, list(group)].argmax(axis=1)]
        return pd.DataFrame(columns)

    def summary(self) -> dict[str, Any]:
        """Sizes and class balance, e.g. for the README table and logs."""
        def share(y: torch.Tensor) -> list[float]:
            counts = torch.bincount(y, minlength=self.n_classes).double()
            return [round(float(c), 4) for c in counts / max(1, y.numel())]
        return {"name": self.name, "n_train": len(self.y_train), "n_val": len(self.y_val),
                "n_test": len(self.y_test), "n_features": self.n_features,
                "n_classes": self.n_classes, "train_class_share": share(self.y_train)}
