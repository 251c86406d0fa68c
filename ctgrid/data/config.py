"""Which dataset to load and how to split and constrain it (torch-free: grid files,
``ctgrid expand`` and ``ctgrid config`` validate it without loading anything)."""
from __future__ import annotations

from dataclasses import dataclass

from .._mutability import mutability_pairs
from .._validate import check, param
from ..errors import ConfigError

DATASETS = ("lin_sep", "over", "circles", "moons", "adult", "cali", "credit", "gmsc", "mnist", "german")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split and constrain it.

    ``None`` sizes take the dataset's reference default (README table).
    ``mutability`` maps feature names or 0-based indices to ``both|increase|decrease|none``;
    the string ``"paper"`` selects the paper's actionability setting for the dataset
    (docs/deviations.md, R16: synthetic first feature, Adult ``age``, ...). ``domain`` gives explicit
    bounds: one ``[lower, upper]`` pair for all features or one pair per feature; else
    bounds are inferred with ``domain_nstd`` standard deviations (reference: 2, paper text: 3).
    """

    name: str = param("moons", choices=DATASETS)
    n_train: int | None = param(None, ge=10)
    n_val: int | None = param(None, ge=0)
    n_test: int | None = param(None, ge=10)
    data_seed: int = param(42, ge=0, doc="seed of synthetic generation (reference Xoshiro(42))")
    split_seed: int = param(2025, ge=0, doc="seed of shuffling/splitting (reference 2025)")
    domain_nstd: float = param(2.0, gt=0)
    domain: tuple[tuple[float, float], ...] | None = param(None)
    mutability: tuple[tuple[str, str], ...] | str = param(())

    def __post_init__(self) -> None:
        object.__setattr__(self, "mutability", mutability_pairs(self.mutability, "data.mutability"))
        check(self, "data")
        for i, (lower, upper) in enumerate(self.domain or ()):
            if lower > upper:
                raise ConfigError(f"data.domain[{i}]: got {[lower, upper]}; allowed: lower <= upper")
        if isinstance(self.mutability, str) and self.mutability != "paper":
            raise ConfigError(f"data.mutability: got {self.mutability!r}; "
                              "allowed: a mapping feature -> kind, or 'paper'")
