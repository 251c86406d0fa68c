"""``ctgrid.CTClassifier``, the scikit-learn estimator (issue 22): scikit-learn's own estimator
checks, GridSearchCV over two λ values, a Pipeline, data frames with a categorical column and
an immutable feature, and counterfactuals in the input's units.

The checks run on an instance with a tiny budget (2 epochs, 16 counterfactuals of 5 steps) so
that they stay quick; every check applies and must pass — scikit-learn itself skips only
``check_array_api_input`` (it needs ``SCIPY_ARRAY_API=1`` and an array-API library; ctgrid
computes in torch on numpy input, so the check cannot apply)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import ctgrid  # noqa: E402
from ctgrid.estimator import CTClassifier  # noqa: E402
from ctgrid.generators import GeneratorConfig  # noqa: E402
from ctgrid.training import TrainingConfig  # noqa: E402

QUICK = {"nepochs": 2, "nce": 16, "maxiter": 5, "lr": 0.01}


@parametrize_with_checks([CTClassifier(**QUICK)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_defaults_are_ctgrids():
    est = CTClassifier()
    tr, gen = TrainingConfig(), GeneratorConfig()
    for key in ("objective", "nepochs", "burnin", "nce", "batch_size", "lr", "lambda_clf", "lambda_div",
                "lambda_reg", "lambda_adv", "adv_eps"):
        assert getattr(est, key) == getattr(tr, key), key
    assert (est.generator, est.tau, est.maxiter, est.lambda_energy) == (gen.name, gen.tau, gen.maxiter,
                                                                        gen.lambda_energy)
    assert ctgrid.CTClassifier is CTClassifier


def _blobs(n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 3)) + 2.0 * y[:, None]
    return X, y


def test_grid_search_over_two_lambdas():
    X, y = _blobs()
    search = GridSearchCV(CTClassifier(nepochs=5, nce=40, maxiter=10, lr=0.01),
                          {"lambda_reg": [0.1, 0.5]}, cv=2)
    search.fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    assert search.best_params_["lambda_reg"] in (0.1, 0.5) and search.best_score_ > 0.8
    scores = search.cv_results_["split0_test_score"]
    models = [CTClassifier(nepochs=5, nce=40, maxiter=10, lr=0.01, lambda_reg=lam).fit(X, y) for lam in (0.1, 0.5)]
    assert not np.allclose(models[0].predict_proba(X), models[1].predict_proba(X))   # λ matters
    assert np.isfinite(scores).all()


def test_in_a_pipeline():
    X, y = _blobs()
    pipe = Pipeline([("scale", StandardScaler()), ("ct", CTClassifier(standardize=False, **QUICK))])
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.7
    assert pipe.predict_proba(X).shape == (len(y), 2)


def _loans(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    age = rng.integers(20, 70, n)
    income = rng.normal(50, 15, n)
    purpose = rng.choice(["car", "home", "study"], n)
    score = 0.05 * (income - 50) + 0.03 * (age - 45) + (purpose == "home") * 0.8
    return pd.DataFrame({"age": age, "income": income, "purpose": purpose,
                         "approved": np.where(score + rng.normal(0, 0.5, n) > 0, "yes", "no")})


def test_a_data_frame_with_a_category_and_an_immutable_feature():
    df = _loans()
    X, y = df.drop(columns="approved"), df["approved"]
    est = CTClassifier(nepochs=20, nce=100, categorical=["purpose"], mutability={"age": "none"},
                       lr=0.01).fit(X, y)
    assert list(est.classes_) == ["no", "yes"] and est.n_features_in_ == 3
    assert list(est.feature_names_in_) == ["age", "income", "purpose"]
    assert est.dataset_.feature_names == ("age", "income", "purpose=car", "purpose=home", "purpose=study")
    assert est.dataset_.constraints.mutability[0] == "none" and est.dataset_.categorical_groups == ((2, 3, 4),)
    assert est.score(X, y) > 0.7
    rows = X[est.predict(X) == "no"].head(20)
    cf = est.counterfactuals(rows, "yes")
    assert list(cf.columns) == ["age", "income", "purpose", "target", "valid", "converged"]
    assert (cf["age"].to_numpy() == rows["age"].to_numpy()).all()   # immutable: exactly the input's years
    assert set(cf["purpose"]) <= {"car", "home", "study"} and cf["valid"].mean() > 0.5
    assert cf["income"].between(-50, 200).all()                     # in the input's units
    with pytest.raises(ValueError, match="target"):
        est.counterfactuals(rows, "maybe")
    unseen = X.head(3).assign(purpose="boat")
    with pytest.raises(ValueError, match="boat"):
        est.predict(unseen)
