"""Grid files -> Grid: expansion counts, ordering, validation, de-duplication, ``ctgrid expand``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctgrid.errors import ConfigError
from ctgrid.grid import JobConfig, load_grid, parse_grid, resolve_grid_path, shipped_grids
from ctgrid.grid.spec import MAX_POINTS, PACKAGED_GRIDS

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "grids"

# Expected (grid points, distinct jobs) of every shipped grid, derived by hand.
# A vanilla point's job ignores the generator and the CT-only training parameters
# (lambda_div/reg/adv, nce, burnin); Generic and REVISE ignore generator.lambda_energy.
EXPECTED = {
    # 3 gen x 3 lambda_adv x 3 lambda_div x 5 lambda_reg x 2 objectives = 270 points.
    # full: 3 x 3 x 3 x 5 = 135 points, all different (the generator name and the three
    # weights all matter; the evaluation is the same for all). vanilla: the 135 points differ
    # only in parameters vanilla ignores -> 1 job. 135 + 1 = 136 per dataset; the paper ran it
    # on each of the four synthetic sets: 4 x 270 = 1080 points, 4 x 136 = 544 jobs.
    "penalties": (1080, 544),
    # 3 gen x 3 tau x 5 lambda_energy x 3 maxiter x 2 = 270. full ecco: 3 x 5 x 3 = 45;
    # full generic/revise: lambda_energy unused -> 3 tau x 3 maxiter = 9 each; vanilla 1.
    # 45 + 9 + 9 + 1 = 64 per dataset; x 4 synthetic sets: 1080 points, 256 jobs.
    "gen_params": (1080, 256),
    # 3 gen x 2 burnin x 2 nce x 2 nepochs x 2 = 48. full: 24 distinct; vanilla ignores
    # generator, burnin and nce but not nepochs -> 2. 24 + 2 = 26 per dataset; x 4: 192, 104.
    "training_params": (192, 104),
    # 9 datasets x 3 tau x 3 lambda_reg x 2 = 162; per dataset 9 full + 1 vanilla -> 90.
    "tune": (162, 90),
    # 9 datasets x 3 lr x 3 lambda_reg x 2 = 162; per dataset 9 full + 1 vanilla -> 90.
    "tune_lr": (162, 90),
    # 9 dataset blocks x {full, vanilla}; every point is its own job.
    "final": (18, 18),
    "mutability": (18, 18),
    # 9 dataset blocks x {full, energy, adversarial, vanilla}.
    "ablation": (36, 36),
    "quickstart": (2, 2),
    # 2 datasets x 2 objectives x 3 seeds x (2 generators x {plain, sns, control} base (4 points,
    # 3 jobs) + 100 init seeds + 100 left-out rows).
    "consistency": (2496, 2472),
}

_cache: dict[str, object] = {}


def grid(name: str):
    if name not in _cache:
        _cache[name] = load_grid(GRIDS / f"{name}.yaml")
    return _cache[name]


def err(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_grid(text, "g")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("g: "), msg
    return msg


# ----------------------------------------------------------------------------- shipped grids

def test_every_shipped_grid_is_listed():
    assert sorted(p.stem for p in GRIDS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_grid_counts(name):
    g = grid(name)
    points, jobs = EXPECTED[name]
    assert g.name == name
    assert (len(g), len(g.jobs())) == (points, jobs)
    assert all(isinstance(p, JobConfig) for p in g)
    assert all(p.model.kind == "mlp" for p in g)


def test_packaged_copies_equal_repository_grids():
    """ctgrid/grids/*.yaml ship in the wheel; they must be byte-identical copies of grids/*.yaml
    (after editing a grid run: cp grids/*.yaml ctgrid/grids/)."""
    assert shipped_grids() == sorted(EXPECTED)
    for name in EXPECTED:
        assert (PACKAGED_GRIDS / f"{name}.yaml").read_bytes() == (GRIDS / f"{name}.yaml").read_bytes(), name


def test_penalties_values_and_dedup():
    g = grid("penalties")
    assert set(g.varied) == {"data.name", "generator.name", "training.objective", "training.lambda_adv",
                             "training.lambda_div", "training.lambda_reg"}
    vanilla = {jid for jid, p in zip(g.job_ids, g) if p.training.objective == "vanilla"}
    assert len(vanilla) == 4  # one per dataset
    assert {p.data.name for p in g} == {"lin_sep", "over", "circles", "moons"}
    assert {p.training.lambda_reg for p in g} == {0.0, 0.01, 0.1, 0.25, 0.5}
    # sorted-key order: data.name is the first key (slowest), training.objective the last (fastest)
    assert [g[0].training.objective, g[1].training.objective] == ["full", "vanilla"]
    assert g[0].generator.name == g[1].generator.name == "ecco" and g[0].data.name == "lin_sep"


def test_final_grid_follows_table_2():
    g = grid("final")
    full = {p.data.name: p for p in g if p.training.objective == "full"}
    table2 = {"adult": (0.75, 5000, 0.25), "cali": (0.5, 5000, 0.25), "circles": (0.5, 1000, 0.5),
              "credit": (0.5, 5000, 0.25), "gmsc": (0.5, 5000, 0.5), "lin_sep": (0.5, 1000, 0.01),
              "mnist": (0.5, 5000, 0.01), "moons": (0.9, 1000, 0.25), "over": (0.5, 1000, 0.25)}
    assert {k: (p.generator.tau, p.training.nce, p.training.lambda_reg) for k, p in full.items()} == table2
    individuals = {k: p.evaluation.n_individuals for k, p in full.items()}
    assert individuals["moons"] == 250 and individuals["adult"] == 100 and individuals["mnist"] == 25
    assert all(p.evaluation.test_time and p.evaluation.n_runs == 100 for p in g)


def test_mutability_and_tuning_grids():
    assert {p.data.mutability for p in grid("mutability")} == {"paper"}
    assert {p.evaluation.tau for p in grid("mutability")} == {0.5}
    assert {p.generator.lr for p in grid("tune_lr")} == {0.1, 0.5, 1.0}
    assert {p.training.batch_size for p in grid("tune")} == {None}
    assert len({p.data.name for p in grid("tune")}) == 9


def test_quickstart_is_small():
    """Two jobs at the paper's final moons settings, with a bounded evaluation (~30 s on one core)."""
    g = grid("quickstart")
    assert len(g.jobs()) == 2
    for p in g:
        assert p.data.name == "moons"
        assert p.training.nepochs <= 100 and p.training.nce <= 1000
        assert p.evaluation.n_runs * p.evaluation.n_individuals <= 500
        assert len(p.evaluation.lambda_energy) == 2


# ----------------------------------------------------------------------------- Grid protocol

def test_iterate_equals_index_and_fixed_order():
    g = grid("gen_params")
    assert list(g) == [g[i] for i in range(len(g))]
    assert g[-1] == g[len(g) - 1]
    with pytest.raises(IndexError):
        g[len(g)]
    again = load_grid(GRIDS / "gen_params.yaml")
    assert again.job_ids == g.job_ids


def test_empty_grid_is_one_default_point():
    g = parse_grid("", "empty")
    assert len(g) == 1 and g[0] == JobConfig() and g.name == "empty" and g.varied == ()


def test_jobs_are_canonical_first_seen():
    g = parse_grid("training: {objective: [vanilla, full], lambda_reg: [0.1, 0.5]}", "t")
    # points (sorted keys: lambda_reg slower than objective):
    # (0.1, vanilla) (0.1, full) (0.5, vanilla) (0.5, full) -> vanilla collapses
    assert [p.training.objective for p in g] == ["vanilla", "full", "vanilla", "full"]
    assert g.job_ids[0] == g.job_ids[2] != g.job_ids[1] != g.job_ids[3]
    jobs = g.jobs()
    assert list(jobs) == [g.job_ids[0], g.job_ids[1], g.job_ids[3]]
    assert jobs[g.job_ids[0]] == g[0].canonical()


def test_job_id_is_pinned():
    """Job ids name result files: if this changes, existing results are no longer found.
    Only non-default values are hashed, so adding a config field with a default keeps this pin;
    change it only on purpose, knowing old results are orphaned."""
    job = JobConfig.from_dict({"data": {"name": "moons"}, "generator": {"name": "ecco", "tau": 0.9},
                               "training": {"objective": "full", "lambda_reg": 0.25, "nce": 1000}})
    assert job.job_id == "446b3e8e08ad8d9d"
    g = parse_grid("data: {name: moons}\ngenerator: {tau: 0.9}\ntraining: {lambda_reg: 0.25}", "p")
    assert g.job_ids == ("446b3e8e08ad8d9d",)


@pytest.mark.parametrize("name, first, last", [
    ("final", ("a5fe129609021f5c", "33547dd260d1d19c"), "93ad3cfcd9bf0888"),
    ("mutability", ("166fedb0ed51f71c", "3d10b6b1e748bb75"), "2188fa86b9c41014"),
    ("penalties:moons", ("f7879b7bbc3e7dd6", "68bcb1dc462c3829"), "68bcb1dc462c3829"),
    ("gen_params:moons", ("b834ebee07e34365", "68bcb1dc462c3829"), "68bcb1dc462c3829"),
    ("ablation", ("a5fe129609021f5c", "2563d3caaa7f239c"), "fd8e1935c6622ec7"),
])
def test_shipped_grid_job_ids_are_pinned(name, first, last):
    """The ids the committed reproduction (docs/results) and users' result stores were made
    with: a refactor of how configs declare their used fields must not move them."""
    name, _, dataset = name.partition(":")   # the moons runs of the four-dataset grids
    ids = load_grid(name, [f"data.name={dataset}"] if dataset else []).job_ids
    assert ids[:2] == first and ids[-1] == last


def test_job_id_ignores_values_equal_to_their_defaults():
    """Spelling out a default (or a future field added with a default) does not change the id."""
    plain = JobConfig.from_dict({"training": {"objective": "full"}})
    explicit = JobConfig.from_dict({"training": {"objective": "full", "lambda_reg": 0.1, "shuffle": True},
                                    "evaluation": {"lambda_energy": [0.1, 0.5, 1.0, 5.0, 10.0]}})
    assert plain.job_id == explicit.job_id
    assert plain.job_id != JobConfig.from_dict({"training": {"lambda_reg": 0.2}}).job_id


def test_point_and_job_tables_are_json_able():
    g = parse_grid("training: {objective: [full, vanilla], batch_size: [null, 100]}\n"
                   "evaluation: {lambda_energy: [[0.5], [1.0, 5.0]]}", "t")
    pt = g.point_table()
    assert list(pt.columns) == ["point", "job_id", "training.objective", "training.batch_size",
                                "evaluation.lambda_energy"]
    assert len(pt) == 8 and list(pt["point"]) == list(range(8))
    rows = json.loads(json.dumps(pt.to_dict(orient="records")))
    assert rows[0]["training.batch_size"] is None and rows[0]["evaluation.lambda_energy"] == "[0.5]"
    mixed = parse_grid("data: {mutability: [paper, {age: none}]}", "t").point_table()
    assert list(mixed["data.mutability"]) == ["paper", '[["age", "none"]]']
    import pyarrow as pa  # the store writes the point table to Parquet
    for table in (pt, mixed, grid("final").point_table()):
        assert pa.Table.from_pandas(table).num_rows == len(table)
    jt = g.job_table()
    assert len(jt) == len(g.jobs()) == 8  # batch_size and evaluation matter for vanilla too
    jt = grid("penalties").job_table()
    vanilla = jt[jt["training.objective"] == "vanilla"].iloc[0]
    assert len(jt[jt["training.objective"] == "vanilla"]) == 4  # one per dataset
    assert vanilla["points"] == 135 and vanilla["generator.name"] == "*" and vanilla["training.lambda_reg"] == "*"


# ----------------------------------------------------------------------------- format features

def test_subgrids_union_and_override():
    text = """
training: {objective: [full, vanilla], nce: 1000}
subgrids:
  - {data: {name: moons}, generator: {tau: [0.5, 0.9]}}
  - {data: {name: adult}, training: {nce: 5000}}
"""
    g = parse_grid(text, "s")
    assert len(g) == 2 * 2 + 2
    assert [(p.data.name, p.generator.tau, p.training.nce) for p in g[:4]] == [
        ("moons", 0.5, 1000), ("moons", 0.5, 1000), ("moons", 0.9, 1000), ("moons", 0.9, 1000)]
    assert {(p.data.name, p.training.nce, p.generator.tau) for p in g[4:]} == {("adult", 5000, 0.75)}
    assert len(g.jobs()) == 2 + 1 + 2  # moons: 2 full + 1 vanilla; adult: full + vanilla


def test_repeats_is_a_seed_axis():
    g = parse_grid("repeats: 3\ntraining: {objective: [full, vanilla]}", "r")
    assert len(g) == 6 and len(g.jobs()) == 6
    assert sorted({p.training.seed for p in g}) == [0, 1, 2]
    assert "training.seed" in g.varied
    assert "repeats" in err("repeats: 2\ntraining: {seed: [0, 1]}")
    assert "repeats" in err("repeats: 0")


@pytest.mark.parametrize("text, expected", [
    # list-typed fields: a flat list is ONE value, a list of lists an axis
    ("evaluation: {lambda_energy: [0.1, 1.0]}", [(0.1, 1.0)]),
    ("evaluation: {lambda_energy: [[0.1, 1.0], [5.0]]}", [(0.1, 1.0), (5.0,)]),
    ("evaluation: {pgd_eps: []}", [()]),
    ("evaluation: {pgd_eps: [[], [0.1]]}", [(), (0.1,)]),
])
def test_tuple_field_axis_rule(text, expected):
    g = parse_grid(text, "t")
    field = text.split("{")[1].split(":")[0]
    assert [getattr(p.evaluation, field) for p in g] == expected


def test_domain_and_mutability_axis_rule():
    one = parse_grid("data: {domain: [[-1, 1]]}", "t")
    assert [p.data.domain for p in one] == [((-1.0, 1.0),)]
    axis = parse_grid("data: {domain: [[[-1, 1]], [[-2, 2], [0, 1]], null]}", "t")
    assert [p.data.domain for p in axis] == [((-1.0, 1.0),), ((-2.0, 2.0), (0.0, 1.0)), None]
    assert [p.data.mutability for p in parse_grid("data: {mutability: {0: none}}", "t")] == [(("0", "none"),)]
    assert [p.data.mutability for p in parse_grid("data: {mutability: [[x1, none]]}", "t")] == [(("x1", "none"),)]
    muts = [p.data.mutability for p in parse_grid("data: {mutability: [paper, {age: none}, {}]}", "t")]
    assert muts == ["paper", (("age", "none"),), ()]
    ev = [p.evaluation.mutability for p in parse_grid("evaluation: {mutability: [null, {1: increase}]}", "t")]
    assert ev == [None, (("1", "increase"),)]


def test_yaml_details():
    assert parse_grid("training: {lr: 1e-3}", "t")[0].training.lr == 0.001
    assert "duplicate key 'nce'" in err("training:\n  nce: 10\n  nce: 20")
    assert "invalid YAML at line" in err("training: {nce: [1, 2}")
    assert parse_grid("name: other\ndescription: d", "t").name == "other"
    assert "name" in err("name: 'a b'")


# ----------------------------------------------------------------------------- errors

def test_unknown_keys_suggest_the_closest_name():
    assert "unknown key 'lamda_reg'; did you mean 'lambda_reg'?" in err("training: {lamda_reg: [0.1]}")
    assert "unknown key 'trainig'; did you mean 'training'?" in err("trainig: {nce: 10}")
    assert "did you mean 'repeats'" in err("repeat: 3")
    msg = err("subgrids:\n  - {generator: {tua: 0.5}}")
    assert "subgrids[0]" in msg and "did you mean 'tau'" in msg
    assert "did you mean 'data'" in err("subgrids:\n  - {dta: {name: moons}}")


def test_wrong_type_and_out_of_range():
    msg = err("training: {nepochs: [10, ten]}")
    assert "training.nepochs" in msg and "'ten'" in msg and "integer" in msg
    msg = err("generator: {tau: [0.5, 1.5]}")
    assert "generator.tau" in msg and "1.5" in msg and "< 1" in msg
    msg = err("generator: {name: ecoo}")
    assert "generator.name" in msg and "'ecco'" in msg
    assert "evaluation.lambda_energy" in err("evaluation: {lambda_energy: 0.5}")
    assert "training: expected a mapping" in err("training: [nce]")
    assert "subgrids" in err("subgrids: []")
    msg = err("subgrids:\n  - {training: {nce: 0}}")
    assert msg.startswith("g: subgrids[0]: training.nce") and ">= 1" in msg
    assert "data" in err("data: {mutability: [0, 1]}")


def test_empty_axis_and_too_many_points():
    assert "an axis needs at least one value" in err("training: {lambda_reg: []}")
    assert "twice" in err("training: {lambda_reg: [0.1, 0.1]}")
    big = "training: {seed: %s, nce: %s}" % (list(range(400)), list(range(1, 400)))
    assert f"at most {MAX_POINTS}" in err(big)


def test_load_grid_by_name_and_errors(tmp_path):
    assert resolve_grid_path("quickstart") == PACKAGED_GRIDS / "quickstart.yaml"
    assert load_grid("quickstart.yaml").name == "quickstart"
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        load_grid("quickstrat")
    with pytest.raises(ConfigError, match="not found"):
        load_grid(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {nepochs: -1}")
    with pytest.raises(ConfigError, match=r"bad\.yaml: training\.nepochs"):
        load_grid(bad)
    ok = tmp_path / "mine.yaml"
    ok.write_text("# a comment\ntraining: {nepochs: 3}\n")
    g = load_grid(ok)
    assert g.name == "mine" and g.source_text.startswith("# a comment") and g.path == ok


# ----------------------------------------------------------------------------- ctgrid expand

def test_expand_json_in_process(capsys):
    from ctgrid.cli import expand
    args = argparse.Namespace(grid=str(GRIDS / "training_params.yaml"), format="json", points=False)
    assert expand.run(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["name"], doc["points"], doc["jobs"], len(doc["rows"])) == ("training_params", 192, 104, 104)
    assert sum(r["points"] for r in doc["rows"]) == 192
    args = argparse.Namespace(grid="quickstart", format="csv", points=True)
    assert expand.run(args) == 0
    out = capsys.readouterr()
    assert out.err.strip() == "quickstart: 2 grid points -> 2 jobs"
    assert out.out.splitlines()[0] == "point,job_id,training.objective"


def _ctgrid(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "ctgrid", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_expand_cli(tmp_path):
    proc = _ctgrid("expand", str(GRIDS / "penalties.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first == "penalties: 1080 grid points -> 544 jobs"
    assert len(proc.stdout.splitlines()) == 1 + 1 + 544  # summary, header, one row per job
    assert os.listdir(tmp_path) == []


def test_expand_cli_bad_grid_exits_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("training:\n  objective: [full, vanilla]\n  lamda_reg: [0.1]\n")
    proc = _ctgrid("expand", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctgrid: error: bad.yaml: training:")
    assert "did you mean 'lambda_reg'" in lines[0]
    assert os.listdir(tmp_path) == ["bad.yaml"]


def test_each_config_resets_what_its_generator_or_objective_ignores():
    from ctgrid.generators.config import GeneratorConfig
    from ctgrid.training.config import TrainingConfig
    gen = GeneratorConfig(name="generic", lambda_energy=9.0, latent_dim=3, tau=0.6)
    assert gen.canonical() == GeneratorConfig(name="generic", tau=0.6)
    assert GeneratorConfig(name="ecco", lambda_energy=9.0, latent_dim=3).canonical() == \
        GeneratorConfig(name="ecco", lambda_energy=9.0)
    tr = TrainingConfig(objective="energy", lambda_adv=1.0, adv_eps=0.1, adv_label="predicted",
                        lambda_reg=0.5, nce=10)
    assert tr.canonical() == TrainingConfig(objective="energy", lambda_reg=0.5, nce=10)
    van = TrainingConfig(objective="vanilla", lambda_div=2.0, nce=10, burnin=0.5, nonconverged="drop",
                         nepochs=7)
    assert van.canonical() == TrainingConfig(objective="vanilla", nepochs=7)


def test_range_axis_is_an_integer_axis():
    g = parse_grid("training: {seed: {range: [1, 4]}, leave_out: {range: [0, 6, 3]}}", "r")
    assert [(p.training.seed, p.training.leave_out) for p in g] == [
        (s, i) for i in (0, 3) for s in (1, 2, 3)]
    assert len(parse_grid("training: {seed: {range: [1, 101]}}", "r")) == 100


@pytest.mark.parametrize("value, needle", [
    ("{range: [1]}", "expected {range: [start, stop]}"),
    ("{range: [1, 2.5]}", "with integers"),
    ("{range: [5, 1]}", "the range is empty"),
    ("{range: [0, 9, 0]}", "the step must not be 0"),
    ("{range: [0, 2], step: 1}", "expected {range"),
    ("{range: [0, 1000000]}", "1000000 values; allowed: at most 20000"),
])
def test_range_axis_errors_name_the_key(value, needle):
    msg = err(f"training: {{seed: {value}}}")
    assert msg.startswith("g: training.seed: got ") and needle in msg


BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
               for p, a in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh")) + "data: {domain: *h}\n"


@pytest.mark.parametrize("text, needle", [
    (BOMB, "aliases expand to more than 1,000,000 values"),               # 9^8 = 43 million leaves
    ("data: " + "[" * 1000 + "]" * 1000, "nested too deeply"),
    ("data: " + "{a: " * 100 + "1" + "}" * 100, "nested more than 64 levels deep"),
    ("a: &a [1, *a]\n", "invalid YAML"),
])
def test_hostile_yaml_is_refused_in_one_line(text, needle):
    msg = err(text)
    assert needle in msg
    assert msg.count("invalid YAML") == 1, msg   # said once (the alias checks' message was wrapped again)


def test_long_values_are_truncated_in_messages():
    msg = err("data: {name: " + "x" * 100_000 + "}")
    assert len(msg) < 800 and "characters]..." in msg and msg.startswith("g: data.name: got 'xxx")


@pytest.mark.parametrize("name, job_id, seed", [
    ("quickstart", "43da6bab05a6c532", 1269060133),
    ("final", "2cb34226505ce26d", 252271381),
    ("final", "33547dd260d1d19c", 1680159949),
])
def test_training_seeds_of_shipped_jobs_are_pinned(name, job_id, seed):
    """The training seed (initial weights, batch order, CT's draws) of the release that made the
    committed results: a field added later (``param(since=...)``) must not enter it at its
    default, or the same job id would train other weights."""
    assert grid(name).jobs()[job_id].seed == seed
    from ctgrid.models.config import ModelConfig
    from ctgrid.data import DataConfig
    plain = JobConfig(data=DataConfig(name="moons"), model=ModelConfig())
    spelled = JobConfig(data=DataConfig(name="moons", na="error", stratify=True),
                        model=ModelConfig(hidden=(), factory=None))
    assert plain.seed == spelled.seed and plain.job_id == spelled.job_id
