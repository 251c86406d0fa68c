"""``CTClassifier``: Counterfactual Training as a scikit-learn estimator (needs scikit-learn:
``pip install 'ctgrid[sklearn]'``).

``CTClassifier(lambda_reg=0.25).fit(X, y)`` on numpy arrays or pandas data frames trains the
same model, with the same objective, CE phase and seeds, as ``ctgrid.train`` on a
:class:`~ctgrid.data.Dataset` of these rows. What the estimator adds is what a table gets from
``data.name: table``, fitted on the rows given to ``fit`` (no split of its own: cross-validation
is scikit-learn's): numeric columns standardised (``standardize``), ``categorical`` columns
one-hot encoded as one-hot groups (levels: those seen in ``fit``; an unseen level is an error),
the domain inferred from the rows (``domain_nstd``) and ``mutability`` by column name or index.
Classes are ``np.unique(y)`` (sorted), as in every scikit-learn classifier. ``nce`` is capped
at the number of rows. ``counterfactuals(X, target)`` runs the batched test-time search
(ECCo by default, as the evaluation) and returns the counterfactuals in the input's units and
categories.

Why this name: it is what it does — a classifier trained with CT (``CT`` as the paper writes it).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:   # an optional extra
    raise ImportError(f"ctgrid.CTClassifier needs scikit-learn >= 1.6: pip install 'ctgrid[sklearn]' "
                      f"({exc})") from None

from ._torch import model_device
from .constraints import Constraints
from .data.dataset import Dataset
from .data.table import batch_size as default_batch_size
from .evaluation.config import EvaluationConfig
from .evaluation.grid import search_config
from .evaluation.predictive import predict_logits
from .generators import GeneratorConfig, make_generator
from .models import ModelConfig
from .training import TrainingConfig, train

_TRAINING = ("objective", "nepochs", "burnin", "nce", "batch_size", "lr", "lambda_clf", "lambda_div",
             "lambda_reg", "lambda_adv", "adv_eps")


class _Encoder:
    """Columns -> model inputs, fitted on ``fit``'s rows: z-scores and one-hot groups."""

    def __init__(self, X: np.ndarray, categorical: list[int], names: list[str], standardize: bool):
        self.categorical, self.names = categorical, names
        self.levels = {j: sorted(set(X[:, j].tolist()), key=lambda v: (str(type(v)), v)) for j in categorical}
        numeric = [j for j in range(X.shape[1]) if j not in categorical]
        values = _numeric(X, numeric, names)
        sd = values.std(axis=0, ddof=1) if len(values) > 1 else np.ones(len(numeric))
        self.mean = values.mean(axis=0) if standardize else np.zeros(len(numeric))
        self.std = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0) if standardize else np.ones(len(numeric))
        self.numeric = numeric

    def transform(self, X: np.ndarray) -> np.ndarray:
        blocks, k = [], 0
        z = (_numeric(X, self.numeric, self.names) - self.mean) / self.std
        for j in range(X.shape[1]):
            if j in self.levels:
                levels = self.levels[j]
                unseen = [v for v in set(X[:, j].tolist()) if v not in levels]
                if unseen:
                    raise ValueError(f"column {self.names[j]!r}: category {unseen[0]!r} was not seen in fit")
                blocks.append(np.stack([X[:, j] == v for v in levels], axis=1).astype(np.float64))
            else:
                blocks.append(z[:, k:k + 1])
                k += 1
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def layout(self) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], np.ndarray, np.ndarray]:
        """Feature names, one-hot groups and the per-feature mean/std (raw = x * std + mean)."""
        names: list[str] = []
        groups, mean, std = [], [], []
        k = 0
        for j, name in enumerate(self.names):
            if j in self.levels:
                groups.append(tuple(range(len(names), len(names) + len(self.levels[j]))))
                names += [f"{name}={v}" for v in self.levels[j]]
                mean += [0.0] * len(self.levels[j])
                std += [1.0] * len(self.levels[j])
            else:
                names.append(name)
                mean.append(float(self.mean[k]))
                std.append(float(self.std[k]))
                k += 1
        return tuple(names), tuple(groups), np.array(mean), np.array(std)


def _numeric(X: np.ndarray, columns: list[int], names: list[str]) -> np.ndarray:
    try:
        return X[:, columns].astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"columns {[names[j] for j in columns]} must be numeric; list text columns in "
                         f"categorical") from None


class CTClassifier(ClassifierMixin, BaseEstimator):
    """A classifier trained with Counterfactual Training (module docstring).

    The training parameters are :class:`~ctgrid.training.TrainingConfig`'s (``objective``:
    ``full`` for CT, ``vanilla`` for the baseline), ``generator``/``tau``/``maxiter``/
    ``lambda_energy`` the training-time search's (:class:`~ctgrid.generators.GeneratorConfig`),
    ``nhidden``/``nlayers``/``activation`` the MLP's; ``module`` replaces the MLP by any torch
    classifier (an ``nn.Module`` or a factory ``(n_features, n_classes) -> nn.Module``).
    ``random_state`` is the replicate seed; ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``,
    ``"auto"``; :mod:`ctgrid.device`) where the model trains and predicts. Fitted: ``classes_``, ``n_features_in_``
    (``feature_names_in_`` for data frames), ``model_``, ``history_``, ``dataset_``.
    """

    def __init__(self, objective: str = "full", *, nepochs: int = 100, burnin: float = 0.0, nce: int = 1000,
                 batch_size: int | None = None, lr: float = 1e-3, lambda_clf: float = 1.0,
                 lambda_div: float = 0.5, lambda_reg: float = 0.1, lambda_adv: float = 0.25,
                 adv_eps: float = 0.3, generator: str = "ecco", tau: float = 0.75, maxiter: int = 30,
                 lambda_energy: float = 5.0, nhidden: int = 32, nlayers: int = 1, activation: str = "relu",
                 module: Any = None, categorical: Any = (), mutability: Any = None,
                 domain_nstd: float = 2.0, standardize: bool = True, random_state: int = 0,
                 device: str = "cpu"):
        self.objective, self.nepochs, self.burnin, self.nce = objective, nepochs, burnin, nce
        self.batch_size, self.lr, self.lambda_clf, self.lambda_div = batch_size, lr, lambda_clf, lambda_div
        self.lambda_reg, self.lambda_adv, self.adv_eps = lambda_reg, lambda_adv, adv_eps
        self.generator, self.tau, self.maxiter, self.lambda_energy = generator, tau, maxiter, lambda_energy
        self.nhidden, self.nlayers, self.activation, self.module = nhidden, nlayers, activation, module
        self.categorical, self.mutability, self.domain_nstd = categorical, mutability, domain_nstd
        self.standardize, self.random_state, self.device = standardize, random_state, device

    # ------------------------------------------------------------------ fitting
    def _categorical_positions(self, n_columns: int) -> list[int]:
        """The positions of the ``categorical`` columns (names of a data frame's columns, or
        0-based indices)."""
        names = [str(n) for n in getattr(self, "feature_names_in_", [])]
        positions = []
        for c in self.categorical or ():
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < n_columns:
                positions.append(int(c))
            elif str(c) in names:
                positions.append(names.index(str(c)))
            else:
                raise ValueError(f"categorical: no column {c!r} (give a data frame's column names or "
                                 f"0-based indices)")
        return positions

    def fit(self, X: Any, y: Any) -> "CTClassifier":
        """Train on rows ``X`` (array or data frame) with labels ``y``; returns ``self``."""
        arr, y = validate_data(self, X, y, dtype=None if self.categorical else "numeric", ensure_all_finite=True,
                               ensure_min_samples=2)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"CTClassifier needs at least 2 classes in y; got 1 class ({self.classes_[0]!r})")
        arr = np.asarray(arr)
        names = [str(n) for n in getattr(self, "feature_names_in_", [f"x{j}" for j in range(arr.shape[1])])]
        self._encoder = _Encoder(arr, self._categorical_positions(arr.shape[1]), names, self.standardize)
        self.dataset_ = self._dataset(self._encoder.transform(arr), codes.astype(np.int64))
        result = train(self.dataset_, self._model_spec(), self._generator_config(), self._training_config(),
                       device=self.device)
        if result.diverged is not None:
            raise RuntimeError(f"CTClassifier: {result.diverged}")
        self.model_, self.history_ = result.model.eval(), result.history
        return self

    def _dataset(self, X: np.ndarray, y: np.ndarray) -> Dataset:
        names, groups, mean, std = self._encoder.layout()
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        cons = Constraints.infer(Xt, float(self.domain_nstd))
        cons = Constraints(cons.lower, cons.upper, cons.mutability, groups)
        if self.mutability:
            cons = cons.with_mutability(dict(self.mutability), names, "mutability")
        empty = Xt[:0]
        return Dataset("estimator", Xt, yt, empty, yt[:0], empty, yt[:0], names, cons,
                       n_classes=len(self.classes_), batch_size=default_batch_size(len(y)),
                       categorical_groups=groups,
                       meta={"feature_mean": mean, "feature_std": std, "classes": list(self.classes_)})

    def _training_config(self) -> TrainingConfig:
        values = {k: getattr(self, k) for k in _TRAINING}
        values["nce"] = min(int(values["nce"]), len(self.dataset_.y_train))
        return TrainingConfig(**values, seed=int(self.random_state))

    def _generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(name=self.generator, tau=self.tau, maxiter=self.maxiter,
                               lambda_energy=self.lambda_energy)

    def _model_spec(self) -> Any:
        if self.module is not None:
            return self.module
        return ModelConfig(nhidden=self.nhidden, nlayers=self.nlayers, activation=self.activation)

    # ------------------------------------------------------------------ predicting
    def _inputs(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        arr = validate_data(self, X, reset=False, dtype=None if self.categorical else "numeric",
                            ensure_all_finite=True)
        return torch.from_numpy(self._encoder.transform(np.asarray(arr)))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` in the order of ``classes_``."""
        x = self._inputs(X)             # first: it checks that the estimator is fitted
        logits = predict_logits(self.model_, x)
        return torch.softmax(logits.double(), dim=1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of every row (labels from ``classes_``)."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def counterfactuals(self, X: Any, target: Any, *, config: EvaluationConfig | None = None,
                        lambda_energy: float = 1.0) -> pd.DataFrame:
        """Counterfactuals of rows ``X`` towards classes ``target`` (one label, or one per row)
        from the batched engine, searched as the evaluation searches (``config``: an
        :class:`~ctgrid.evaluation.EvaluationConfig`, default ECCo, ``tau`` 0.95, 50 steps)
        with energy weight ``lambda_energy``, under the fitted domain and mutability. Returns
        one row per input row in the input's units and categories, plus ``target``, ``valid``
        (the model predicts the target there) and ``converged`` (``tau`` reached)."""
        raw = np.asarray(validate_data(self, X, reset=False, dtype=None if self.categorical else "numeric",
                                       ensure_all_finite=True))
        x = torch.from_numpy(self._encoder.transform(raw))
        labels = np.resize(np.asarray(target, dtype=self.classes_.dtype), len(x))
        index = np.searchsorted(self.classes_, labels)
        if (index >= len(self.classes_)).any() or (self.classes_[np.minimum(index, len(self.classes_) - 1)]
                                                   != labels).any():
            raise ValueError(f"target: got {target!r}; allowed: labels of classes_ {list(self.classes_)}")
        gen = search_config(config or EvaluationConfig(), self._generator_config())
        device = model_device(self.model_)
        engine = make_generator(gen, self.dataset_.constraints.to(device), lambda_energy=float(lambda_energy))
        t = torch.from_numpy(index.astype(np.int64))
        found = engine.search(self.model_, x.to(device), t.to(device))
        out = self._unmoved_as_given(self.dataset_.decode(found.counterfactual), raw, x, found.counterfactual.cpu())
        valid = predict_logits(self.model_, found.counterfactual).argmax(1).cpu().numpy() == index
        return out.assign(target=labels, valid=valid, converged=found.converged.cpu().numpy())

    def _unmoved_as_given(self, out: pd.DataFrame, raw: np.ndarray, x: torch.Tensor,
                          cf: torch.Tensor) -> pd.DataFrame:
        """A numeric feature the search left where it was (an immutable one, or one it did not
        move) keeps the input's value exactly: ``decode``'s ``z * std + mean`` would round it
        (an age of 28 read back as 27.999999)."""
        if raw.shape[1] != out.shape[1]:
            return out
        grouped = {i for g in self.dataset_.categorical_groups for i in g}
        kept = {self.dataset_.feature_names[i]: i for i in range(cf.shape[1]) if i not in grouped}
        for k, name in enumerate(out.columns):
            i = kept.get(name)
            if i is not None:
                same = (cf[:, i] == x[:, i]).numpy()
                column = out[name].to_numpy(dtype=np.float64, copy=True)
                column[same] = raw[same, k].astype(np.float64)
                out[name] = column
        return out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags
