"""A user's own tabular file as a dataset (``data.name: table``, issue 22): preprocessing worked
out by hand, identity by content (not path), formats, labels, options, and a corpus of bad
files — each one ``ctgrid: error:`` line naming the column, exit 2, nothing written."""
from __future__ import annotations

import gzip
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctgrid.cli import main
from ctgrid.data import DataConfig, load_dataset, table_dataset
from ctgrid.data.table import MAX_CLASSES, MAX_LEVELS, MIN_ROWS
from ctgrid.errors import ConfigError, DataError
from ctgrid.grid.job import JobConfig

#: a hand-made file: 20 rows, one categorical column, an id to drop, a yes/no target
HAND = textwrap.dedent("""\
    id,age,colour,default
    0,21,red,no
    1,35,blue,yes
    2,47,green,no
    3,52,red,yes
    4,23,blue,no
    5,61,green,yes
    6,38,red,no
    7,44,blue,yes
    8,29,green,no
    9,57,red,yes
    10,33,blue,no
    11,49,green,yes
    12,26,red,no
    13,64,blue,yes
    14,41,green,no
    15,30,red,yes
    16,55,blue,no
    17,27,green,yes
    18,46,red,no
    19,39,blue,yes
    """)
HAND_DATA = {"name": "table", "target": "default", "categorical": ("colour",), "drop": ("id",)}


@pytest.fixture()
def hand(tmp_path) -> Path:
    path = tmp_path / "hand.csv"
    path.write_text(HAND)
    return path


def test_a_hand_made_csv_gives_the_one_hot_groups_and_training_split_standardisation(hand):
    ds = load_dataset(DataConfig(path=str(hand), **HAND_DATA))
    raw = pd.read_csv(hand)
    # 20 rows: test 20 - round(0.8 * 20) = 4, validation round(0.1 * 20) = 2, training 14
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (14, 2, 4)
    assert ds.feature_names == ("age", "colour=blue", "colour=green", "colour=red")
    assert ds.categorical_groups == ((1, 2, 3),) and ds.constraints.groups == ((1, 2, 3),)
    assert ds.meta["classes"] == ["no", "yes"] and ds.n_classes == 2
    for split in ("train", "val", "test"):
        rows = ds.meta["index"][split]
        X, y = getattr(ds, f"X_{split}"), getattr(ds, f"y_{split}")
        assert y.tolist() == [1 if v == "yes" else 0 for v in raw["default"].iloc[rows]]
        for j, colour in enumerate(("blue", "green", "red"), start=1):
            assert X[:, j].tolist() == [1.0 if c == colour else 0.0 for c in raw["colour"].iloc[rows]]
    # the age statistics of the 14 training rows alone, by hand (sample sd)
    ages = [float(a) for a in raw["age"].iloc[ds.meta["index"]["train"]]]
    mean = sum(ages) / 14
    sd = (sum((a - mean) ** 2 for a in ages) / 13) ** 0.5
    assert abs(mean - raw["age"].mean()) > 1e-6          # differs from the whole file's mean
    for split in ("train", "val", "test"):
        expect = [(float(a) - mean) / sd for a in raw["age"].iloc[ds.meta["index"][split]]]
        assert np.allclose(getattr(ds, f"X_{split}")[:, 0].numpy(), expect, atol=1e-6)
    assert ds.meta["feature_mean"][0] == pytest.approx(mean) and ds.meta["feature_std"][0] == pytest.approx(sd)
    assert sorted(np.concatenate(list(ds.meta["index"].values())).tolist()) == list(range(20))
    assert ds.decode(ds.X_test)["colour"].tolist() == raw["colour"].iloc[ds.meta["index"]["test"]].tolist()
    assert np.allclose(ds.decode(ds.X_test)["age"], raw["age"].iloc[ds.meta["index"]["test"]], atol=1e-4)


def test_the_job_id_follows_the_content_not_the_path(hand, tmp_path):
    elsewhere = tmp_path / "moved" / "renamed.csv"
    elsewhere.parent.mkdir()
    shutil.copy(hand, elsewhere)
    a, b = (JobConfig(data=DataConfig(path=str(p), **HAND_DATA)) for p in (hand, elsewhere))
    assert a.data.path != b.data.path and a.data.sha256 == b.data.sha256
    assert a.job_id == b.job_id and a.seed == b.seed
    changed = tmp_path / "changed.csv"
    changed.write_text(HAND.replace("3,52,red,yes", "3,53,red,yes"))
    c = JobConfig(data=DataConfig(path=str(changed), **HAND_DATA))
    assert c.job_id != a.job_id
    # a configuration that names the content refuses a file that changed since
    hand.write_text(HAND.replace("3,52,red,yes", "3,53,red,yes"))
    with pytest.raises(DataError, match="has changed"):
        load_dataset(a.data)
    assert JobConfig.from_dict(a.to_dict()).job_id == a.job_id     # config.yaml reads back


def test_builtin_job_ids_do_not_see_the_table_fields():
    """The table fields are left out of a built-in dataset's identity (job ids stay pinned)."""
    assert DataConfig(name="moons").identity() == {
        "name": "moons", "n_train": None, "n_val": None, "n_test": None, "data_seed": 42,
        "split_seed": 2025, "domain_nstd": 2.0, "domain": None, "mutability": []}


def test_gzip_and_parquet_give_the_same_dataset_as_csv(hand, tmp_path):
    gz, pq = tmp_path / "hand.csv.gz", tmp_path / "hand.parquet"
    gz.write_bytes(gzip.compress(hand.read_bytes()))
    pd.read_csv(hand).to_parquet(pq)
    sets = [load_dataset(DataConfig(path=str(p), **HAND_DATA)) for p in (hand, gz, pq)]
    for other in sets[1:]:
        assert other.feature_names == sets[0].feature_names
        for split in ("train", "val", "test"):
            assert (getattr(other, f"X_{split}") == getattr(sets[0], f"X_{split}")).all()


def test_labels_are_sorted_numbers_or_texts_and_multiclass_works(tmp_path):
    rng = np.random.default_rng(1)
    n = 60
    frame = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n),
                          "grade": rng.choice([2, 10, 1], n)})
    ds = table_dataset(frame, "grade")
    assert ds.meta["classes"] == [1, 2, 10] and ds.n_classes == 3     # 10 after 2: numbers, not text
    assert (ds.y_train == 2).sum() > 0
    frame["grade"] = frame["grade"].map({1: "b", 2: "a", 10: "c"})
    ds = table_dataset(frame, "grade")
    assert ds.meta["classes"] == ["a", "b", "c"]
    assert ds.meta["config"].sha256 != table_dataset(frame.iloc[::-1], "grade").meta["config"].sha256


def test_stratified_and_unstratified_splits(tmp_path):
    y = np.array([0] * 70 + [1] * 30)
    frame = pd.DataFrame({"x": np.arange(100.0), "w": np.arange(100.0) % 7, "y": y})
    strat = table_dataset(frame, "y")
    assert strat.y_test.tolist().count(1) == 6 and len(strat.y_test) == 20   # 30 % of 20, exactly
    free = table_dataset(frame, "y", stratify=False)
    assert not (free.meta["index"]["test"] == strat.meta["index"]["test"]).all()
    again = table_dataset(frame, "y", stratify=False, split_seed=2025)
    assert (again.meta["index"]["test"] == free.meta["index"]["test"]).all()


def test_na_drop_drops_the_rows_and_says_how_many(hand, tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text(HAND.replace("3,52,red,yes", "3,,red,yes").replace("9,57,red,yes", "9,57,,yes")
                    + "20,50,red,no\n21,22,blue,yes\n")
    with pytest.raises(DataError, match=r"column 'age': 1 \(line 5\); column 'colour': 1 \(line 11\)"):
        load_dataset(DataConfig(path=str(path), **HAND_DATA))
    ds = load_dataset(DataConfig(path=str(path), na="drop", **HAND_DATA))
    assert ds.meta["na_dropped"] == 2 and ds.meta["rows_used"] == 20
    assert 3 not in np.concatenate(list(ds.meta["index"].values()))


def test_group_mutability_and_table_options_apply(hand):
    ds = load_dataset(DataConfig(path=str(hand), mutability={"colour": "none", "age": "increase"}, **HAND_DATA))
    assert ds.constraints.mutability == ("increase", "none", "none", "none")
    with pytest.raises(ConfigError, match="data.target"):
        DataConfig(name="moons", target="y")
    with pytest.raises(ConfigError, match="data.target"):
        DataConfig(name="table", path=str(hand))


# ----------------------------------------------------------------------------- bad data

def _frame_text(**columns) -> str:
    return pd.DataFrame(columns).to_csv(index=False)


N = 60
BASE = {"age": list(range(20, 20 + N)), "income": [float(i % 9) for i in range(N)],
        "purpose": ["car", "home"] * (N // 2), "default": ["no", "yes", "no", "no"] * (N // 4)}
GOOD = {"target": "default", "categorical": ["purpose"]}


def _with(**changes) -> str:
    return _frame_text(**{**BASE, **changes})


#: (id, file name, file text or bytes (None: no file), data options, training options, needle)
BAD: list[tuple[str, str, str | bytes | None, dict, dict, str]] = [
    ("missing-file", "t.csv", None, GOOD, {}, "t.csv"),
    ("missing-target", "t.csv", _with(), {**GOOD, "target": "dflt"}, {}, "'dflt'"),
    ("missing-categorical", "t.csv", _with(), {**GOOD, "categorical": ["purpse"]}, {}, "'purpse'"),
    ("missing-drop", "t.csv", _with(), {**GOOD, "drop": ["idd"]}, {}, "'idd'"),
    ("one-class", "t.csv", _with(default=["no"] * N), GOOD, {}, "'default'"),
    ("too-many-classes", "t.csv", _with(default=[i * 0.5 for i in range(N)]), GOOD, {}, "'default'"),
    ("not-numeric", "t.csv", _with(), {"target": "default"}, {}, "'purpose'"),
    ("missing-values", "t.csv", _with(income=[None, *BASE["income"][1:]]), GOOD, {}, "'income'"),
    ("infinite-value", "t.csv", _with(income=[float("inf"), *BASE["income"][1:]]), GOOD, {}, "'income'"),
    ("constant", "t.csv", _with(income=[3.0] * N), GOOD, {}, "'income'"),
    ("categorical-cap", "t.csv", _frame_text(age=range(MAX_LEVELS + 1), purpose=[f"p{i}" for i in range(
        MAX_LEVELS + 1)], default=[i % 2 for i in range(MAX_LEVELS + 1)]), GOOD, {}, "'purpose'"),
    ("mutability-no-column", "t.csv", _with(), {**GOOD, "mutability": {"agee": "none"}}, {}, "'agee'"),
    ("mutability-target", "t.csv", _with(), {**GOOD, "mutability": {"default": "none"}}, {}, "'default'"),
    ("mutability-dropped", "t.csv", _with(), {**GOOD, "drop": ["age"], "mutability": {"age": "none"}}, {},
     "'age'"),
    ("mutability-category-direction", "t.csv", _with(), {**GOOD, "mutability": {"purpose": "increase"}}, {},
     "'purpose'"),
    ("too-small-for-n-val", "t.csv", _with(), {**GOOD, "n_val": 55}, {}, "data.n_val"),
    ("too-small-for-nce", "t.csv", _with(), GOOD, {"nce": 500}, "training.nce"),
    ("too-few-rows", "t.csv", _frame_text(**{k: v[:MIN_ROWS - 1] for k, v in BASE.items()}), GOOD, {},
     "data.path"),
    ("duplicate-header", "t.csv", "age,age,default\n" + "1,2,no\n" * 30, {"target": "default"}, {}, "'age'"),
    ("bad-suffix", "t.xlsx", _with(), GOOD, {}, "data.path"),
    ("not-parquet", "t.parquet", b"PAR1 this is not a parquet file", GOOD, {}, "data.path"),
    ("empty-file", "t.csv", "", GOOD, {}, "data.path"),
    ("target-not-given", "t.csv", _with(), {"categorical": ["purpose"]}, {}, "data.target"),
    ("table-field-on-builtin", "t.csv", _with(), {**GOOD, "name": "moons"}, {}, "data.name: table"),
]


def test_the_bad_data_corpus_covers_the_issue():
    assert MAX_CLASSES < N and MAX_LEVELS < 200 and len({c[0] for c in BAD}) == len(BAD) >= 20


def _grid(tmp_path: Path, case) -> tuple[Path, list[str]]:
    _, name, content, options, extra, _ = case
    data = tmp_path / name
    if isinstance(content, bytes):
        data.write_bytes(content)
    elif content is not None:
        data.write_text(content)
    opts = {"name": "table", "path": str(data), **options}
    grid = tmp_path / "grid.yaml"
    training = {"nepochs": 1, "nce": 10, **extra}
    grid.write_text(f"name: t\ndata: {json.dumps(opts)}\ntraining: {json.dumps(training)}\n"
                    "evaluation: {enabled: false}\n")
    return grid, sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_data_is_one_line_naming_the_column_exit_2_and_nothing_written(case, tmp_path, capsys):
    grid, before = _grid(tmp_path, case)
    for command in (["run", str(grid), "--results", str(tmp_path / "results")],
                    ["run", str(grid), "--results", str(tmp_path / "results"), "--dry-run"],
                    ["expand", str(grid)]):
        capsys.readouterr()
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ctgrid: error: "), err
        assert case[-1] in err[0], err[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_train_refuses_bad_data_before_writing(tmp_path, capsys):
    grid, before = _grid(tmp_path, BAD[6])        # a text column not declared categorical
    out = tmp_path / "out"
    assert main(["train", "--config", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'purpose'" in err[0] and not out.exists()


def test_train_and_run_on_a_table_record_the_file_and_agree(hand, tmp_path, capsys):
    """``ctgrid train`` with --data-path/--target, and a grid under an override moving the
    file: the same job id, the same weights, and provenance with the file's path and hash."""
    out = tmp_path / "trained"
    assert main(["train", "--data", "table", "--data-path", str(hand), "--target", "default",
                 "data.categorical=[colour]", "data.drop=[id]", "evaluation.enabled=false", "--objective", "vanilla",
                 "--nepochs", "2", "--out", str(out)]) == 0
    done = json.loads((out / "done.json").read_text())
    assert done["provenance"]["data_file"] == {"path": str(hand), "sha256": DataConfig(
        path=str(hand), **HAND_DATA).sha256}
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: g\ndata: {json.dumps({**HAND_DATA, 'path': 'elsewhere.csv'})}\n"
                    "training: {objective: vanilla, nepochs: 2}\nevaluation: {enabled: false}\n")
    moved = tmp_path / "moved.csv"
    shutil.copy(hand, moved)
    assert main(["run", str(grid), "--results", str(tmp_path / "r"), f"data.path={moved}"]) == 0
    job_dir = next((tmp_path / "r" / "g" / "jobs").iterdir())
    assert job_dir.name == _job_id(out)
    import torch
    a = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(job_dir / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((job_dir / "done.json").read_text())["provenance"]["data_file"]["path"] == str(moved)


def _job_id(model_dir: Path) -> str:
    return (model_dir / "config.yaml").read_text().split()[3]


def test_expand_of_a_table_grid_reads_the_file_without_torch(hand, tmp_path):
    import subprocess
    import sys
    grid = tmp_path / "g.yaml"
    grid.write_text(f"name: g\ndata: {json.dumps({**HAND_DATA, 'path': str(hand)})}\n"
                    "training: {objective: [vanilla, full], nce: 500}\n")
    code = ("import sys\nfrom ctgrid.cli import main\n"
            f"rc = main(['expand', {str(grid)!r}])\n"
            "assert rc == 2 and 'torch' not in sys.modules, rc\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "training.nce: got 500" in proc.stderr


def test_a_list_of_column_names_in_a_grid_is_one_value_and_a_list_of_lists_an_axis(hand, tmp_path):
    """``categorical: [colour, age]`` names two columns of ONE job (it used to expand into two
    jobs, one per column); an axis of column lists is a list of lists. The same for ``drop``
    and for a command-line override; one name is a list of one."""
    from ctgrid.grid import load_grid

    base = {"name": "table", "path": str(hand), "target": "default"}

    def jobs(data: dict, *overrides: str) -> list[JobConfig]:
        grid = tmp_path / "g.yaml"
        grid.write_text(f"name: g\ndata: {json.dumps(data)}\ntraining: {{objective: vanilla}}\n")
        return list(load_grid(grid, overrides))

    def columns(grid: list[JobConfig]) -> list[tuple]:
        return sorted((j.data.categorical, j.data.drop) for j in grid)

    assert columns(jobs({**base, "categorical": ["colour", "age"], "drop": ["id"]})) == [
        (("colour", "age"), ("id",))]
    assert columns(jobs({**base, "categorical": [["colour"], ["colour", "age"]], "drop": [["id"], []]})) == [
        (("colour",), ()), (("colour",), ("id",)), (("colour", "age"), ()), (("colour", "age"), ("id",))]
    assert columns(jobs(base, "data.categorical=[colour, age]", "data.drop=[id]")) == [(("colour", "age"), ("id",))]
    assert [j.job_id for j in jobs({**base, "categorical": "colour", "drop": "id"})] == \
        [j.job_id for j in jobs({**base, "categorical": ["colour"], "drop": ["id"]})]
