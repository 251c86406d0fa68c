"""Dataset registry and loaders, on the real files in ../shared/data (see its PROVENANCE.md)."""
from __future__ import annotations

import functools
import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctgrid.constraints import Constraints
from ctgrid.data import DATASETS, DataConfig, Dataset, dataset_defaults, load_dataset
from ctgrid.errors import ConfigError, DataError

DATA = Path(__file__).parents[1].parent / "shared" / "data"
SYNTHETIC = ("lin_sep", "over", "circles", "moons")


@functools.lru_cache(maxsize=None)
def default(name: str) -> Dataset:
    """The default-config dataset, loaded once per test session (tests must not mutate it)."""
    return load_dataset(DataConfig(name=name), DATA)


def counts(y: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(y, minlength=k).tolist()


# --- sizes and class balance (the numbers in docs/datasets.md) ------------------------------

@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_loads_with_documented_sizes_and_balance(name):
    ds, doc = default(name), dataset_defaults(name)
    k = doc.n_classes
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (doc.n_train, doc.n_val, doc.n_test)
    assert ds.X_train.shape == (doc.n_train, doc.n_features) and ds.X_train.dtype == torch.float32
    assert ds.X_val.shape[1] == ds.X_test.shape[1] == doc.n_features == len(ds.feature_names)
    assert ds.y_train.dtype == torch.int64 and ds.n_classes == k
    assert counts(ds.y_train, k) == list(doc.train_counts)
    assert counts(ds.y_test, k) == list(doc.test_counts)
    assert ds.batch_size == doc.batch_size == (30 if name in SYNTHETIC else 100 if name == "german" else 1000)
    assert all(torch.isfinite(X).all() for X in (ds.X_train, ds.X_val, ds.X_test))
    idx = ds.meta["index"]
    if name != "mnist":  # MNIST test rows index the separate test file
        assert not set(idx["test"]) & (set(idx["train"]) | set(idx["val"]))
    assert not set(idx["train"]) & set(idx["val"])
    assert len(set(idx["train"])) == len(idx["train"])


def test_sizes_follow_the_raw_files_and_the_authors_recipe():
    # PROVENANCE.md: CH 10315 below / 10325 at or above the median -> 20630 balanced; Credit
    # 6636 defaults -> 13272; GMSC 8357 delinquent after dropping NA rows -> 16714; Adult
    # 32561 rows of adult.data, 7841 >50K, unbalanced; MNIST test label counts.
    for name, per_class in (("cali", 10315), ("credit", 6636), ("gmsc", 8357)):
        ds = default(name)
        y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
        assert counts(y, 2) == [per_class, per_class] and ds.meta["rows_used"] == 2 * per_class
        assert len(ds.y_test) == 2 * per_class - round(0.8 * 2 * per_class)
    adult = default("adult")
    y = torch.cat([adult.y_train, adult.y_val, adult.y_test])
    assert len(y) == 32561 and int(y.sum()) == 7841
    assert list(adult.meta["index"]["test"]) == list(range(32561 - 6512, 32561))  # last 20%, as the reference
    assert counts(default("mnist").y_test, 10) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    val = default("mnist").y_val
    assert counts(val, 10) == [100] * 10


def test_validation_split_is_stratified():
    adult = default("adult")
    share_val = adult.y_val.double().mean().item()
    share_all = 7841 / 32561
    assert abs(share_val - (6241 / 26049)) < 1e-3 and abs(share_val - share_all) < 0.01
    assert counts(default("cali").y_val, 2) == [500, 500]
    assert counts(default("moons").y_val, 2) == [300, 300]


# --- synthetic geometry ------------------------------------------------------------------

def test_synthetic_sets_have_the_reference_geometry():
    blobs = {n: default(n) for n in ("lin_sep", "over")}
    for name, sd in (("lin_sep", 0.5), ("over", 2.0)):
        X, y = blobs[name].X_train.double(), blobs[name].y_train
        for c in (0, 1):
            assert X[y == c].std(0) == pytest.approx([sd, sd], rel=0.1)
            assert bool((X[y == c].mean(0).abs() < 10 + 3 * sd / math.sqrt(1500)).all())
    # same data_seed -> same centre draw for both blob sets (reference: both Xoshiro(42))
    for c in (0, 1):
        m_ls = blobs["lin_sep"].X_train[blobs["lin_sep"].y_train == c].mean(0)
        m_ol = blobs["over"].X_train[blobs["over"].y_train == c].mean(0)
        assert torch.allclose(m_ls, m_ol, atol=0.25)
    circ = default("circles")
    r = circ.X_train.double().norm(dim=1)
    assert r[circ.y_train == 0].mean() < 0.25  # radius 0.01 plus N(0, 0.15^2) noise
    assert r[circ.y_train == 1].mean() == pytest.approx(1.0, abs=0.05)
    moons = default("moons")
    X, y = moons.X_train.double(), moons.y_train
    # theta ~ U(0, pi): E[cos] = 0, E[sin] = 2/pi; class 1 is mirrored and shifted by (1, 0.3)
    assert X[y == 0].mean(0) == pytest.approx([0.0, 2 / math.pi], abs=0.05)
    assert X[y == 1].mean(0) == pytest.approx([1.0, 0.3 - 2 / math.pi], abs=0.05)


def test_synthetic_features_are_not_standardised_and_sizes_are_generated():
    moons = default("moons")
    assert moons.feature_names == ("x0", "x1")
    assert moons.X_train[:, 0].mean().item() == pytest.approx(0.5, abs=0.1)
    ds = load_dataset(DataConfig(name="circles", n_train=100, n_val=20, n_test=50))
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (100, 20, 50)
    assert counts(ds.y_train, 2) == [50, 50] and counts(ds.y_test, 2) == [25, 25]


# --- determinism ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["moons", "over", "credit", "mnist"])
def test_same_config_gives_identical_tensors(name):
    a = load_dataset(DataConfig(name=name, n_val=100 if name == "mnist" else None), DATA)
    b = load_dataset(DataConfig(name=name, n_val=100 if name == "mnist" else None), DATA)
    for attr in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        assert torch.equal(getattr(a, attr), getattr(b, attr)), attr
    assert torch.equal(a.constraints.lower, b.constraints.lower)


def test_seeds_change_what_they_should():
    base = default("lin_sep")
    other = load_dataset(DataConfig(name="lin_sep", data_seed=7))
    assert not torch.allclose(base.X_train.mean(0), other.X_train.mean(0), atol=0.5)  # new centres
    resplit = load_dataset(DataConfig(name="lin_sep", split_seed=1))
    pooled = lambda d: torch.cat([d.X_train, d.X_val, d.X_test])  # noqa: E731
    # split_seed reshuffles the same generated points
    assert torch.equal(pooled(base).sort(0).values, pooled(resplit).sort(0).values)
    assert not torch.equal(base.X_test, resplit.X_test)
    credit = load_dataset(DataConfig(name="credit", split_seed=3), DATA)
    assert set(credit.meta["index"]["test"]) != set(default("credit").meta["index"]["test"])


# --- preprocessing fitted on the training split only ----------------------------------------

def test_standardisation_uses_training_statistics_only():
    for name in ("adult", "credit", "cali", "gmsc"):
        ds = default(name)
        grouped = {i for g in ds.categorical_groups for i in g}
        cont = [i for i in range(ds.n_features) if i not in grouped]
        X = ds.X_train[:, cont].double()
        assert X.mean(0).abs().max() < 1e-4
        assert (X.std(0) - 1).abs().max() < 1e-4
    # Recompute Credit's age column by hand from the raw file and the training rows.
    ds = default("credit")
    raw = pd.read_csv(DATA / "credit_default.csv.gz")
    train_age = raw["AGE"].to_numpy(float)[ds.meta["index"]["train"]]
    test_age = raw["AGE"].to_numpy(float)[ds.meta["index"]["test"]]
    col = ds.feature_names.index("age")
    expected = (test_age - train_age.mean()) / train_age.std(ddof=1)
    assert np.allclose(ds.X_test[:, col].numpy(), expected, atol=1e-5)
    assert abs(ds.X_test[:, col].mean().item()) > 1e-3  # test set was not used to fit


@pytest.mark.parametrize("name", ["adult", "credit"])
def test_one_hot_groups_sum_to_one(name):
    ds = default(name)
    assert ds.categorical_groups
    for X in (ds.X_train, ds.X_val, ds.X_test):
        for group in ds.categorical_groups:
            block = X[:, list(group)]
            assert set(block.unique().tolist()) <= {0.0, 1.0}
            assert bool((block.sum(1) == 1).all())
    names = ds.feature_names
    if name == "adult":
        assert len(ds.categorical_groups) == 8 and "sex=Male" in names and "workclass=?" in names
        assert names.index("age") == 0
    else:
        assert len(ds.categorical_groups) == 3 and names.index("age") == 14  # reference feature 15
        assert [names[i] for i in ds.categorical_groups[0]] == ["sex=1", "sex=2"]


def test_paper_feature_positions_match_the_reference():
    assert default("cali").feature_names.index("HouseAge") == 1
    assert default("gmsc").feature_names.index("age") == 1


# --- MNIST ---------------------------------------------------------------------------------

def test_mnist_pixels_domain_and_no_duplicates():
    ds = default("mnist")
    assert ds.image_shape == (28, 28) and ds.n_features == 784
    for X in (ds.X_train, ds.X_val, ds.X_test):
        assert X.min().item() == -1.0 and X.max().item() == 1.0
        levels = (X.double() + 1) / 2 * 255
        assert torch.allclose(levels, levels.round(), atol=1e-3)  # x / 255 * 2 - 1 of uint8 x
    assert torch.equal(ds.constraints.lower, torch.full((784,), -1.0))
    assert torch.equal(ds.constraints.upper, torch.full((784,), 1.0))
    pool = torch.cat([ds.X_train, ds.X_val])
    assert torch.unique(pool, dim=0).shape[0] == len(pool)  # the 60000 images are all distinct
    assert len(set(ds.meta["index"]["train"]) | set(ds.meta["index"]["val"])) == 11000


def test_mnist_paper_mutability_fixes_top_and_bottom_rows():
    ds = load_dataset(DataConfig(name="mnist", n_train=100, n_val=0, n_test=10, mutability="paper"), DATA)
    frozen = [i for i, m in enumerate(ds.constraints.mutability) if m == "none"]
    rows = sorted({i // 28 for i in frozen})
    assert rows == [0, 1, 2, 3, 4, 23, 24, 25, 26, 27] and len(frozen) == 280
    assert counts(ds.y_train, 10) == [10] * 10 and len(ds.y_val) == 0


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, file", [("adult", "adult.csv.gz"), ("gmsc", "gmsc.csv.gz"),
                                        ("mnist", "mnist/train-images-idx3-ubyte.gz")])
def test_missing_file_names_the_file(tmp_path, name, file):
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name=name), tmp_path)
    msg = str(err.value)
    assert str(tmp_path / file) in msg and "not found" in msg and "\n" not in msg


def test_no_data_dir_says_how_to_give_one(monkeypatch, tmp_path):
    monkeypatch.delenv("CTGRID_DATA", raising=False)
    with pytest.raises(DataError, match="--data-dir.*CTGRID_DATA"):
        load_dataset(DataConfig(name="cali"))
    assert len(load_dataset(DataConfig(name="moons")).y_train) == 3000  # synthetic needs no files
    monkeypatch.setenv("CTGRID_DATA", str(DATA))
    assert torch.equal(load_dataset(DataConfig(name="cali")).X_test, default("cali").X_test)


def _write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        fh.write(text)


def test_malformed_csv_names_file_and_expected_columns(tmp_path):
    bad = tmp_path / "cal_housing.csv.gz"
    _write_gz(bad, "longitude,latitude,rooms\n1,2,3\n")
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="cali"), tmp_path)
    msg = str(err.value)
    assert str(bad) in msg and "housingMedianAge" in msg and "medianHouseValue" in msg
    header = "longitude,latitude,housingMedianAge,totalRooms,totalBedrooms,population,households,"
    _write_gz(bad, header + "medianIncome,medianHouseValue\n1,2,3,4,5,6,7,8,nine\n")
    with pytest.raises(DataError, match="non-numeric value 'nine' in column medianHouseValue"):
        load_dataset(DataConfig(name="cali"), tmp_path)
    (tmp_path / "credit_default.csv.gz").write_text("ID,LIMIT_BAL\n1,2\n")  # not gzip at all
    with pytest.raises(DataError, match="credit_default.csv.gz: malformed.*default.payment.next.month"):
        load_dataset(DataConfig(name="credit"), tmp_path)


def test_malformed_target_and_idx_files(tmp_path):
    good = pd.read_csv(DATA / "german_credit_numeric.csv.gz")
    good.loc[3, "class"] = 3
    good.to_csv(tmp_path / "german_credit_numeric.csv.gz", index=False)
    with pytest.raises(DataError, match="column class has value 3.0"):
        load_dataset(DataConfig(name="german"), tmp_path)
    _write_gz(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", "not an idx file")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: malformed.*0x00000803"):
        load_dataset(DataConfig(name="mnist"), tmp_path)


# --- sizes, domain and mutability from the config -------------------------------------------

def test_size_overrides_subsample_and_too_many_is_a_config_error():
    ds = load_dataset(DataConfig(name="credit", n_train=500, n_val=200, n_test=300), DATA)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (500, 200, 300)
    assert counts(ds.y_train, 2) == [250, 250]
    assert set(ds.meta["index"]["test"]) <= set(default("credit").meta["index"]["test"])
    with pytest.raises(ConfigError, match="data.n_train: got 20000; allowed: at most 9618"):
        load_dataset(DataConfig(name="credit", n_train=20000), DATA)
    with pytest.raises(ConfigError, match="data.n_test"):
        load_dataset(DataConfig(name="mnist", n_test=20000), DATA)
    with pytest.raises(ConfigError, match="data.n_train"):
        load_dataset(DataConfig(name="mnist", n_train=60000), DATA)


def test_domain_inferred_from_training_split_or_given():
    ds = default("cali")
    inferred = Constraints.infer(ds.X_train, 2.0)
    assert torch.equal(ds.constraints.lower, inferred.lower)
    assert bool((ds.constraints.lower <= ds.X_train.min(0).values).all())
    wide = load_dataset(DataConfig(name="moons", domain_nstd=3.0))
    assert bool((wide.constraints.upper >= default("moons").constraints.upper).all())
    one = load_dataset(DataConfig(name="moons", domain=((-5, 5),)))
    assert one.constraints.lower.tolist() == [-5, -5] and one.constraints.upper.tolist() == [5, 5]
    per = load_dataset(DataConfig(name="moons", domain=((-1, 2), (-3, 4))))
    assert per.constraints.lower.tolist() == [-1, -3] and per.constraints.upper.tolist() == [2, 4]
    with pytest.raises(ConfigError, match="data.domain: got 3"):
        load_dataset(DataConfig(name="moons", domain=((0, 1), (0, 1), (0, 1))))
    with pytest.raises(ConfigError, match="data.domain"):
        load_dataset(DataConfig(name="moons", domain=((1, 0),)))


def test_mutability_by_name_index_and_paper():
    ds = load_dataset(DataConfig(name="adult", mutability={"age": "none", "hours_per_week": "increase"}),
                      DATA)
    kinds = ds.constraints.mutability
    assert kinds[0] == "none" and kinds[ds.feature_names.index("hours_per_week")] == "increase"
    assert kinds.count("both") == ds.n_features - 2
    moons = load_dataset(DataConfig(name="moons", mutability={"1": "decrease"}))
    assert moons.constraints.mutability == ("both", "decrease")
    for name, index in (("moons", 0), ("cali", 1), ("credit", 14), ("gmsc", 1), ("adult", 0)):
        paper = load_dataset(DataConfig(name=name, mutability="paper"), DATA)
        frozen = [i for i, m in enumerate(paper.constraints.mutability) if m == "none"]
        assert frozen == [index], name
    with pytest.raises(ConfigError, match="no feature named 'agee'.*'age'"):
        load_dataset(DataConfig(name="credit", mutability={"agee": "none"}), DATA)
    with pytest.raises(ConfigError, match="data.mutability.*german"):
        load_dataset(DataConfig(name="german", mutability="paper"), DATA)
    with pytest.raises(ConfigError, match="index 2 out of range"):
        load_dataset(DataConfig(name="moons", mutability={"2": "none"}))
