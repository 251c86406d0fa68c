"""Tabular datasets (Adult, California housing, Credit default, GMSC, German credit).

Each loader reads the raw public file (``../shared/data/PROVENANCE.md``), derives
the binary target as the authors did (docs/deviations.md, R22, D19), and then:

1. *balance* (CH, Credit, GMSC): the majority class is undersampled without
   replacement to the minority's size, seeded by ``split_seed`` (CH 20630,
   Credit 13272, GMSC 16714 rows, the authors' sizes). Adult is not balanced.
2. *test split*: 20% of the rows (``n - round(0.8 n)``). Adult: the last 20%
   of ``adult.data`` in file order, exactly as the reference. Balanced sets and
   German: a stratified draw seeded by ``split_seed`` -- the reference took the
   last 20% of its already-shuffled artifact CSV, whose order we cannot rebuild,
   so our split is a different but equally random and exactly balanced one.
   ``n_test`` subsamples this test part (stratified).
3. *validation*: ``n_val`` rows (default 1000; German 100), stratified, taken
   out of the remaining 80%; ``n_train`` optionally subsamples what is left.
4. *preprocessing*, fitted on the training split only: every non-categorical
   column is z-scored with the training mean and sample sd (the reference's
   ``Standardizer(count=true)`` did the same, but fitted on train+val), every
   categorical column is one-hot encoded in place (``sex=Male``). The one-hot
   levels are the column's values in the whole file, like the reference's fixed
   level lists, so every row of every split has exactly one 1 per group.

Feature order equals the reference's post-encoding order, so the paper's
immutable features sit where its 1-based indices say (Adult ``age`` 0, CH
``HouseAge`` 1, Credit ``age`` 14, GMSC ``age`` 1; 0-based here).
"""
from __future__ import annotations

import functools
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import DataError
from .config import DataConfig
from .specs import TABULAR_FILES
from .splits import TEST_SHARE, Splits, split_rows, undersample  # noqa: F401 (TEST_SHARE re-exported)

ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income")
ADULT_CATEGORICAL = ("workclass", "education", "marital_status", "occupation", "relationship",
                     "race", "sex", "country")
ADULT_STRINGS = ("workclass", "education", "marital-status", "occupation", "relationship", "race",
                 "sex", "native-country", "income")
CALI_COLUMNS = ("longitude", "latitude", "housingMedianAge", "totalRooms", "totalBedrooms",
                "population", "households", "medianIncome", "medianHouseValue")
CREDIT_COLUMNS = ("ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE",
                  "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6",
                  *(f"BILL_AMT{i}" for i in range(1, 7)), *(f"PAY_AMT{i}" for i in range(1, 7)),
                  "default.payment.next.month")
GMSC_COLUMNS = ("SeriousDlqin2yrs", "RevolvingUtilizationOfUnsecuredLines", "age",
                "NumberOfTime30-59DaysPastDueNotWorse", "DebtRatio", "MonthlyIncome",
                "NumberOfOpenCreditLinesAndLoans", "NumberOfTimes90DaysLate",
                "NumberRealEstateLoansOrLines", "NumberOfTime60-89DaysPastDueNotWorse",
                "NumberOfDependents")
GERMAN_COLUMNS = (*(f"a{i}" for i in range(1, 25)), "class")


def _malformed(path: Path, columns: tuple[str, ...], why: str) -> DataError:
    return DataError(f"{path}: malformed data file ({why}); expected a gzip CSV with header "
                     f"columns {', '.join(columns)}")


@functools.lru_cache(maxsize=16)
def _read_cached(path: str, mtime_ns: int, size: int, columns: tuple[str, ...],
                 strings: tuple[str, ...], allow_na: tuple[str, ...]) -> pd.DataFrame:
    """Parse and check one CSV; cached per process by path, mtime and size."""
    p = Path(path)
    na = {"na_values": ["NA"], "keep_default_na": False}
    try:
        df = pd.read_csv(p, dtype={c: str for c in strings}, **na)
    except (OSError, EOFError, ValueError, UnicodeDecodeError, zlib.error) as exc:
        raise _malformed(p, columns, f"{type(exc).__name__}: {exc}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise _malformed(p, columns, f"missing column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise _malformed(p, columns, "no data rows")
    for col in columns:
        if col in strings:
            if df[col].isna().any():
                raise _malformed(p, columns, f"empty values in column {col}")
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & ~(df[col].isna() & (col in allow_na))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise _malformed(p, columns, f"non-numeric value {df[col].iloc[row - 2]!r} in column "
                                         f"{col}, line {row}")
        df[col] = values.astype(np.float64)
    return df


def read_table(path: Path, columns: tuple[str, ...], strings: tuple[str, ...] = (),
               allow_na: tuple[str, ...] = ()) -> pd.DataFrame:
    """A private copy of the checked CSV at ``path`` (``DataError`` if missing or malformed)."""
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"{path}: data file not found; expected a gzip CSV with header columns "
                        f"{', '.join(columns)}") from None
    return _read_cached(str(path), st.st_mtime_ns, st.st_size, columns, strings, allow_na).copy()


def _binary(values: pd.Series, one: object, zero: object, path: Path, col: str,
            columns: tuple[str, ...]) -> np.ndarray:
    """``values == one`` as int64, after checking every value is ``one`` or ``zero``."""
    ok = values.isin([one, zero])
    if not ok.all():
        bad = values[~ok].iloc[0]
        bad = bad.item() if isinstance(bad, np.generic) else bad
        raise _malformed(path, columns,
                         f"column {col} has value {bad!r}; allowed: {one!r}, {zero!r}")
    return (values == one).to_numpy(np.int64)


# --- per-dataset frames: (features in final column order, target) -------------------------

def _adult(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    label = df["income"].str.strip().str.rstrip(".")
    y = _binary(label, ">50K", "<=50K", path, "income", ADULT_COLUMNS)
    X = df[list(ADULT_COLUMNS[:-1])].rename(columns=lambda c: c.replace("-", "_"))
    X = X.rename(columns={"native_country": "country"})
    for col in ADULT_CATEGORICAL:
        X[col] = X[col].str.strip()
    return X, y


def _cali(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    hh = df["households"]
    X = pd.DataFrame({"MedInc": df["medianIncome"], "HouseAge": df["housingMedianAge"],
                      "AveRooms": df["totalRooms"] / hh, "AveBedrms": df["totalBedrooms"] / hh,
                      "Population": df["population"], "AveOccup": df["population"] / hh,
                      "Latitude": df["latitude"], "Longitude": df["longitude"]})
    if not np.isfinite(X.to_numpy()).all():
        raise _malformed(path, CALI_COLUMNS, "households must be positive")
    value = (df["medianHouseValue"] / 100000).to_numpy()
    return X, (value >= np.median(value)).astype(np.int64)


def _credit(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    target = "default.payment.next.month"
    y = 1 - _binary(df[target], 1.0, 0.0, path, target, CREDIT_COLUMNS)
    X = df[list(CREDIT_COLUMNS[1:-1])].rename(columns=str.lower)
    for col in ("sex", "education", "marriage"):
        X[col] = X[col].astype(np.int64)
    return X, y


def _gmsc(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    df = df[list(GMSC_COLUMNS)].dropna()
    y = 1 - _binary(df["SeriousDlqin2yrs"], 1.0, 0.0, path, "SeriousDlqin2yrs", GMSC_COLUMNS)
    return df.drop(columns="SeriousDlqin2yrs"), y


def _german(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    y = _binary(df["class"], 1.0, 2.0, path, "class", GERMAN_COLUMNS)
    return df[list(GERMAN_COLUMNS[:-1])], y


@dataclass(frozen=True)
class TabularSource:
    """How one tabular dataset is read, labelled, balanced and split."""

    file: str
    columns: tuple[str, ...]
    build: Callable[[pd.DataFrame, Path], tuple[pd.DataFrame, np.ndarray]]
    categorical: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()
    allow_na: tuple[str, ...] = ()
    balance: bool = False
    test_last: bool = False
    n_val: int = 1000


SOURCES: dict[str, TabularSource] = {
    "adult": TabularSource(TABULAR_FILES["adult"], ADULT_COLUMNS, _adult, ADULT_CATEGORICAL,
                           strings=ADULT_STRINGS, test_last=True),
    "cali": TabularSource(TABULAR_FILES["cali"], CALI_COLUMNS, _cali, balance=True),
    "credit": TabularSource(TABULAR_FILES["credit"], CREDIT_COLUMNS, _credit,
                            ("sex", "education", "marriage"), balance=True),
    "gmsc": TabularSource(TABULAR_FILES["gmsc"], GMSC_COLUMNS, _gmsc,
                          allow_na=GMSC_COLUMNS, balance=True),
    "german": TabularSource(TABULAR_FILES["german"], GERMAN_COLUMNS, _german, n_val=100),
}


def encode(frame: pd.DataFrame, categorical: tuple[str, ...], fit_rows: np.ndarray):
    """Standardise continuous columns (statistics of ``fit_rows``) and one-hot categoricals.

    Returns ``(X float32, names, groups, mean, sd)``; ``mean``/``sd`` are 0/1 for one-hot
    columns, so ``X * sd + mean`` recovers raw units.
    """
    blocks: list[np.ndarray] = []
    names: list[str] = []
    groups: list[tuple[int, ...]] = []
    mean: list[float] = []
    sd: list[float] = []
    for col in frame.columns:
        values = frame[col].to_numpy()
        if col in categorical:
            levels = sorted(pd.unique(values))
            groups.append(tuple(range(len(names), len(names) + len(levels))))
            blocks.append(values[:, None] == np.asarray(levels, dtype=values.dtype)[None, :])
            names += [f"{col}={lv}" for lv in levels]
            mean += [0.0] * len(levels)
            sd += [1.0] * len(levels)
            continue
        v = values.astype(np.float64)
        m, s = float(v[fit_rows].mean()), float(v[fit_rows].std(ddof=1))
        s = s if np.isfinite(s) and s > 0 else 1.0
        blocks.append(((v - m) / s)[:, None])
        names.append(col)
        mean.append(m)
        sd.append(s)
    X = np.concatenate([b.astype(np.float32) for b in blocks], axis=1)
    return X, tuple(names), tuple(groups), np.array(mean), np.array(sd)


def load_tabular(config: DataConfig, data_dir: Path) -> Splits:
    """Read, label, balance, split and preprocess one tabular dataset (see module docstring)."""
    src = SOURCES[config.name]
    path = Path(data_dir) / src.file
    raw = read_table(path, src.columns, src.strings, src.allow_na)
    frame, y = src.build(raw, path)
    source_rows = frame.index.to_numpy()
    if src.balance:
        keep = undersample(y, config.split_seed)
        frame, y, source_rows = frame.iloc[keep], y[keep], source_rows[keep]
    frame = frame.reset_index(drop=True)
    n = len(y)
    train, val, test = split_rows(y, config, n_val=src.n_val, test_last=src.test_last)
    X, names, groups, mean, sd = encode(frame, src.categorical, train)
    meta = {"source": str(path), "rows_read": len(raw), "rows_used": n, "balanced": src.balance,
            "feature_mean": mean, "feature_std": sd,
            "index": {"train": source_rows[train], "val": source_rows[val],
                      "test": source_rows[test]}}
    return Splits(X[train], y[train], X[val], y[val], X[test], y[test], names, groups, meta=meta)
