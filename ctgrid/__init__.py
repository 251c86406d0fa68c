"""ctgrid: Counterfactual Training (Altmeyer et al. 2025) in PyTorch, with a batched
counterfactual engine and a grid runner for HPC clusters."""
from __future__ import annotations

__version__ = "0.1.0"
