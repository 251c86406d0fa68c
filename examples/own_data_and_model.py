"""Your own data frame and your own network: a baseline and a CT model, compared as the paper does.

Run: ``python examples/own_data_and_model.py`` (about half a minute on one core).

1. a data frame of loan applications (a categorical ``purpose``, an immutable ``age``);
2. ``ctgrid.table_dataset``: standardised and one-hot encoded on the training split, split
   train/validation/test from the seed, ``age`` marked immutable;
3. a user-defined residual MLP with LayerNorm, trained as the baseline (``vanilla``) and with
   Counterfactual Training (``full``) from the same initialisation;
4. ``ctgrid.evaluate_pair``: both models on the same factuals and targets; the key results
   (implausibility IP, IP*, cost, validity, accuracy) and one counterfactual in the data's units.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

import ctgrid
from ctgrid import EvaluationConfig, GeneratorConfig, TrainingConfig


class ResidualMLP(nn.Module):
    """x -> Linear -> [LayerNorm -> Linear -> GELU] + skip -> Linear: logits (n, k)."""

    def __init__(self, n_features: int, n_classes: int, width: int = 32):
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.out = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.block(h))


def loans(n: int = 2000, seed: int = 7) -> pd.DataFrame:
    """Synthetic loan applications: approval depends on income, debt, purpose and age."""
    rng = np.random.default_rng(seed)
    age = rng.integers(21, 70, n)
    income = rng.lognormal(3.8, 0.4, n).round(1)          # thousands a year
    debt = (rng.uniform(0, 0.8, n) * income).round(1)
    purpose = rng.choice(["car", "home", "education", "business"], n, p=[0.35, 0.3, 0.2, 0.15])
    score = (0.06 * (income - 45) - 0.09 * (debt - 15) + 0.02 * (age - 45)
             + pd.Series(purpose).map({"car": 0.0, "home": 0.6, "education": -0.3, "business": -0.6}).to_numpy())
    approved = np.where(score + rng.normal(0, 0.6, n) > 0, "yes", "no")
    return pd.DataFrame({"id": np.arange(n), "age": age, "income": income, "debt": debt,
                         "purpose": purpose, "approved": approved})


def main() -> None:
    torch.set_num_threads(1)
    frame = loans()
    data = ctgrid.table_dataset(frame, "approved", categorical=["purpose"], drop=["id"],
                                mutability={"age": "none"})
    print(f"data: {data.summary()['n_train']} train / {len(data.y_val)} val / {len(data.y_test)} test rows, "
          f"features {', '.join(data.feature_names)}; classes {data.meta['classes']}")
    generator = GeneratorConfig(tau=0.75, maxiter=30)
    models = {}
    for objective in ("vanilla", "full"):
        config = TrainingConfig(objective=objective, nepochs=30, nce=500, lambda_reg=0.25, burnin=0.5, lr=3e-3)
        result = ctgrid.train(data, ResidualMLP, generator, config)   # a factory: seeded init, same for both
        models[objective] = result.model.eval()
        last = result.history.iloc[-1]
        ce = "" if objective == "vanilla" else f", training counterfactuals converged {last['converged']:.2f}"
        print(f"{objective:>8}: validation accuracy {last['acc_val']:.3f}{ce}")
    evaluation = EvaluationConfig(n_runs=5, n_individuals=50, lambda_energy=(0.5, 5.0), tau=0.95,
                                  step="normalized", maxiter=100, ig_rounds=10, ig_samples=200)
    pair = ctgrid.evaluate_pair(models["vanilla"], models["full"], data, evaluation)
    summary = pair.summary().set_index("quantity")
    print(f"\nkey results (BL = baseline, CT = counterfactual training; {pair.excluded_share:.0%} of individuals "
          "left out because a model already predicts the target):")
    print(summary[["baseline", "ct", "difference", "reduction_pct"]].round(3).to_string())
    # one counterfactual of the CT model in the data's own units and categories
    saved = ctgrid.evaluate_model(models["full"], data, EvaluationConfig(
        **{**evaluation.__dict__, "save_counterfactuals": True, "n_runs": 1, "n_individuals": 10,
           "lambda_energy": (5.0,)}))
    points = ctgrid.original_units(saved.counterfactuals, data)
    row = points[points["valid"]].iloc[0]
    cols = ["age", "income", "debt", "purpose"]
    print("\none CT counterfactual (target class "
          f"{data.meta['classes'][int(row['target'])]!r}; changed: {row['changed']}):")
    print(pd.DataFrame({"factual": [row[f"factual.{c}"] for c in cols],
                        "counterfactual": [row[f"counterfactual.{c}"] for c in cols]}, index=cols).to_string())


if __name__ == "__main__":
    main()
