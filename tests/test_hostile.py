"""Hostile input and disk faults (issue #15).

A corpus of bad inputs, each given to ``ctgrid run`` (or the named command): exit code 2,
exactly one stderr line ``ctgrid: error: ...`` naming the key, nothing written, bounded time
and memory. Then write failures during a run: a full disk (a small tmpfs, where root may
mount one) and an unwritable job directory: one line, exit code 4, the other jobs unaffected
where possible, and a clean resume.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from ctgrid.cli import main
from ctgrid.grid import load_grid
from ctgrid.store import ResultStore

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = ("data: {name: moons, n_train: 80, n_val: 20, n_test: 40}\n"
         "generator: {name: ecco, maxiter: 5}\n"
         "training: {nepochs: 2, nce: 10}\n"
         "evaluation: {enabled: false}\n")


def _bomb(levels: int, where: str) -> str:
    lines = ["a0: &a0 [0.0, 1.0]"]
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\n{where}\n"


#: (id, grid text, extra arguments, what the one error line must contain)
CASES: list[tuple[str, str | None, list[str], str]] = [
    # --- the grid file itself
    ("missing-file", None, [], "not found"),
    ("description-not-string", "description: 5\n", [], "description"),
    ("not-a-mapping", "- a\n- b\n", [], "expected a mapping"),
    ("yaml-syntax", "data: {name: moons\n", [], "invalid YAML"),
    ("duplicate-key", "data: {name: moons}\ndata: {name: circles}\n", [], "data"),
    ("not-utf8", "data: {name: \udcff}\n", [], "utf-8"),
    ("deep-brackets", "training: {lr: " + "[" * 1000 + "]" * 1000 + "}\n", [], "nested"),
    ("deep-mappings", "x: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", [], "nested"),
    ("alias-bomb-domain", _bomb(9, "data: {name: moons, domain: *a8}"), [], "alias"),
    ("alias-bomb-axis", _bomb(9, "training: {lr: *a8}"), [], "alias"),
    ("recursive-alias", "a: &a [*a]\ntraining: {lr: *a}\n", [], "alias"),
    ("unknown-top-key", "trainig: {nepochs: 2}\n", [], "trainig"),
    ("unknown-group-key", "training: {lamda_reg: 0.1}\n", [], "lamda_reg"),
    ("unknown-data-key", "data: {nmae: moons}\n", [], "nmae"),
    ("group-not-mapping", "training: 5\n", [], "training"),
    ("bad-name", "name: '../x'\n", [], "name"),
    ("name-not-string", "name: [a]\n", [], "name"),
    ("bad-repeats", "repeats: 0\n", [], "repeats"),
    ("repeats-and-seed", "repeats: 2\ntraining: {seed: [1, 2]}\n", [], "training.seed"),
    ("subgrids-empty", "subgrids: []\n", [], "subgrids"),
    ("subgrids-not-list", "subgrids: {training: {lr: 0.1}}\n", [], "subgrids"),
    ("subgrid-unknown-key", "subgrids:\n  - trainig: {lr: 0.1}\n", [], "trainig"),
    ("empty-axis", "training: {lambda_reg: []}\n", [], "training.lambda_reg"),
    ("duplicate-axis-value", "training: {lambda_reg: [0.1, 0.1]}\n", [], "training.lambda_reg"),
    ("duplicate-axis-int-float", "training: {lambda_reg: [1, 1.0]}\n", [], "training.lambda_reg"),
    ("too-many-points", "training: {seed: {range: [0, 200]}, lambda_reg: {range: [0, 200]}}\n", [], "points"),
    ("range-too-long", "training: {seed: {range: [0, 1000000]}}\n", [], "training.seed"),
    ("range-bad-step", "training: {seed: {range: [0, 10, 0]}}\n", [], "training.seed"),
    ("range-not-ints", "training: {seed: {range: [0.5, 3]}}\n", [], "training.seed"),
    ("range-unknown-key", "training: {seed: {rnge: [0, 3]}}\n", [], "training.seed"),
    # --- types and ranges of values
    ("lr-string", "training: {lr: fast}\n", [], "training.lr"),
    ("lr-negative", "training: {lr: -0.1}\n", [], "training.lr"),
    ("lr-nan", "training: {lr: .nan}\n", [], "training.lr"),
    ("nepochs-zero", "training: {nepochs: 0}\n", [], "training.nepochs"),
    ("nepochs-float", "training: {nepochs: 2.5}\n", [], "training.nepochs"),
    ("nepochs-bool", "training: {nepochs: true}\n", [], "training.nepochs"),
    ("objective-typo", "training: {objective: ful}\n", [], "training.objective"),
    ("optimizer-choice", "training: {optimizer: rmsprop}\n", [], "training.optimizer"),
    ("burnin-above-one", "training: {burnin: 1.5}\n", [], "training.burnin"),
    ("patience-zero", "training: {nonfinite_patience: 0}\n", [], "training.nonfinite_patience"),
    ("leave-out-negative", "training: {leave_out: -2}\n", [], "training.leave_out"),
    ("tau-one", "generator: {tau: 1.0}\n", [], "generator.tau"),
    ("generator-name", "generator: {name: dice}\n", [], "generator.name"),
    ("maxiter-zero", "generator: {maxiter: 0}\n", [], "generator.maxiter"),
    ("dataset-typo", "data: {name: moon}\n", [], "data.name"),
    ("n-train-tiny", "data: {n_train: 3}\n", [], "data.n_train"),
    ("synthetic-billion-rows", "data: {n_train: 1.0e+9}\n", [], "data.n_train"),
    ("mnist-pool", "data: {name: mnist, n_train: 60000}\n", [], "data.n_train"),
    ("seed-negative", "training: {seed: -1}\n", [], "training.seed"),
    ("domain-lower-above-upper", "data: {domain: [[1, 0]]}\n", [], "data.domain"),
    ("domain-not-pairs", "data: {domain: [1, 2, 3]}\n", [], "data.domain"),
    ("mutability-kind", "data: {mutability: {0: sideways}}\n", [], "data.mutability"),
    ("mutability-string", "data: {mutability: none}\n", [], "data.mutability"),
    ("model-kind", "model: {kind: transformer}\n", [], "model.kind"),
    ("model-layers-zero", "model: {nlayers: 0}\n", [], "model.nlayers"),
    ("evaluation-tau", "evaluation: {tau: 2}\n", [], "evaluation"),
    ("evaluation-lambda-energy-empty", "evaluation: {lambda_energy: []}\n", [], "evaluation.lambda_energy"),
    # --- what needs the dataset's sizes or feature names
    ("nce-above-rows", SMALL.replace("nce: 10", "nce: 500"), [], "training.nce"),
    ("german-default-nce", "data: {name: german}\ntraining: {nepochs: 1}\n", [], "training.nce"),
    ("leave-out-above-rows", SMALL.replace("nce: 10", "nce: 10, leave_out: 80"), [], "training.leave_out"),
    ("domain-pairs", SMALL.replace("n_test: 40", "n_test: 40, domain: [[0, 1], [0, 1], [0, 1]]"), [],
     "data.domain"),
    ("cnn-on-tabular", "data: {name: german}\nmodel: {kind: cnn}\ntraining: {nce: 100}\n", [], "model"),
    ("n-val-above-pool", "data: {name: german, n_val: 900}\ntraining: {nce: 100}\n", [], "data.n_val"),
    ("n-train-above-pool", "data: {name: german, n_train: 900}\ntraining: {nce: 100}\n", [], "data.n_train"),
    ("n-test-above-split", "data: {name: german, n_test: 500}\ntraining: {nce: 100}\n", [], "data.n_test"),
    ("paper-mutability-german", "data: {name: german, mutability: paper}\ntraining: {nce: 100}\n", [],
     "data.mutability"),
    ("mutability-unknown-feature", "data: {name: adult, mutability: {agee: none}}\n", [], "data.mutability"),
    ("mutability-index-range", "data: {name: german, mutability: {30: none}}\ntraining: {nce: 100}\n", [],
     "data.mutability"),
    ("mutability-direction-on-category", "data: {name: adult, mutability: {sex: increase}}\n", [],
     "data.mutability['sex']"),
    ("evaluation-mutability-unknown", "data: {name: adult}\nevaluation: {mutability: {agee: none}}\n", [],
     "evaluation.mutability"),
    ("synthetic-feature-name", SMALL.replace("n_test: 40", "n_test: 40, mutability: {x9: none}"), [],
     "data.mutability"),
    ("missing-data-dir", "data: {name: german}\ntraining: {nce: 100}\n", ["--data-dir", "{tmp}/nodata"],
     "german"),
    ("seed-above-int64", "training: {seed: 9223372036854775808}\n", [], "training.seed"),
    ("int-of-5000-digits", "training: {nepochs: 1" + "0" * 5000 + "}\n", [], "invalid YAML"),
    ("range-beyond-int64", "training: {seed: {range: [0, 100000000000000000000]}}\n", [], "training.seed"),
    ("n-runs-huge", "evaluation: {n_runs: 99999999999}\n", [], "evaluation.n_runs"),
    ("nhidden-huge", "model: {nhidden: 10000000}\n", [], "model.nhidden"),
    # --- the command line
    ("override-unknown", SMALL, ["training.lamda=1"], "lamda"),
    ("override-bad-yaml", SMALL, ["training.lr=[1,"], "training.lr"),
    ("override-bad-value", SMALL, ["training.lr=-1"], "training.lr"),
    ("override-no-group", SMALL, ["lr=0.1"], "lr"),
    ("threads-zero", SMALL, ["--threads", "0"], "--threads"),
    ("pack-size-zero", SMALL, ["--pack-size", "0"], "--pack-size"),
    ("shard-size-serial", SMALL, ["--shard-size", "2"], "--shard-size"),
    ("mistyped-flag", SMALL, ["--retry-faild"], "--retry-faild"),
    ("threads-huge", SMALL, ["--threads", "99999"], "--threads"),
    ("array-size-huge", SMALL, ["--array-task", "0", "--array-size", "99999999999999999999"], "--array-size"),
    ("results-empty", SMALL, ["--results", ""], "--results"),
    ("override-int-beyond-int64", SMALL, ["training.seed=1111111111111111111111111111111"], "training.seed"),
]


def _run_case(tmp_path: Path, text: str | None, extra: list[str], capsys) -> tuple[int, list[str], float, int]:
    grid = tmp_path / "grid.yaml"
    if text is not None:
        grid.write_bytes(text.encode("utf-8", "surrogateescape"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    capsys.readouterr()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    try:
        code = main(["run", str(grid), "--results", str(tmp_path / "results"), *args])
    except SystemExit as exc:   # argparse
        code = int(exc.code or 0)
    seconds = time.monotonic() - t0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) // 1024
    return code, capsys.readouterr().err.strip().splitlines(), seconds, grown_mb


def test_the_corpus_covers_every_class_of_the_issue():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CTGRID_DATA", str(SHARED))
    _, text, extra, key = case
    code, err, seconds, grown_mb = _run_case(tmp_path, text, extra, capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("ctgrid: error: "), err
    assert key in err[0], err[0]
    assert len(err[0]) < 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if text is None else ["grid.yaml"])
    assert seconds < 30 and grown_mb < 500, (seconds, grown_mb)   # a hang / blow-up guard, not a benchmark


def test_the_run_refuses_before_writing_what_only_the_files_show_and_the_dry_run_agrees(tmp_path, capsys,
                                                                                      monkeypatch):
    """A truncated data file, a results directory with a damaged jobs.parquet, a symlinked grid
    directory, a --results that is a file: exit 2 from the dry run and from the run, one line,
    nothing written (an outside review found these)."""
    data = tmp_path / "data"
    data.mkdir()
    raw = (SHARED / "german_credit_numeric.csv.gz").read_bytes()
    (data / "german_credit_numeric.csv.gz").write_bytes(raw[:500])
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndata: {name: german}\ntraining: {nce: 100, nepochs: 1}\n"
                    "evaluation: {enabled: false}\n")
    damaged = tmp_path / "damaged"
    (damaged / "g").mkdir(parents=True)
    (damaged / "g" / "grid.yaml").write_text("x\n")
    (damaged / "g" / "jobs.parquet").write_bytes(b"garb")
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (linked / "g").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("CTGRID_DATA", str(SHARED))
    cases = [(["--results", str(tmp_path / "r1"), "--data-dir", str(data)], "malformed data file"),
             (["--results", str(damaged)], "holds results of a different grid"),
             (["--results", str(linked)], "is a symbolic link"),
             (["--results", str(tmp_path / "afile")], "cannot write the results directory")]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for args, needle in cases:
        for dry in (["--dry-run"], []):
            assert main(["run", str(grid), *args, *dry]) == 2, (args, dry)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and needle in err[0], (args, dry, err)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_expand_makes_the_same_data_checks_without_torch(tmp_path):
    """``ctgrid expand`` refuses what the run refuses (sizes, feature names) and stays torch-free."""
    grid = tmp_path / "g.yaml"
    grid.write_text("data: {name: adult, mutability: {agee: none}}\n")
    code = ("import sys\nfrom ctgrid.cli import main\n"
            f"rc = main(['expand', {str(grid)!r}])\n"
            "assert rc == 2 and 'torch' not in sys.modules, rc\n")
    env = {**os.environ, "CTGRID_DATA": str(SHARED)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "ctgrid: error: data.mutability: no feature named 'agee'; did you mean 'age'?"


@pytest.mark.parametrize("name", ["german", "credit", "adult"])
def test_training_rows_from_the_specs_equal_what_loading_gives(name):
    from ctgrid.data.config import DataConfig
    from ctgrid.data.loaders import load_splits
    from ctgrid.data.specs import dataset_defaults
    from ctgrid.grid.checks import training_rows
    spec = dataset_defaults(name)
    for n_val in (None, 0, 37):
        data = DataConfig(name=name, n_val=n_val)
        assert training_rows(data, spec) == len(load_splits(data, SHARED).y_train), (name, n_val)


# ----------------------------------------------------------------------------- disk faults

IO_GRID = textwrap.dedent("""\
    name: io
    data: {name: moons, n_train: 200, n_val: 20, n_test: 40}
    model: {nhidden: 256, nlayers: 2}
    training: {nepochs: 3, objective: vanilla, seed: [0, 1, 2, 3, 4, 5]}
    evaluation: {enabled: false}
    """)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "SLURM", "HYDRA"))}
    return subprocess.run([sys.executable, "-m", "ctgrid", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _histories(root: Path) -> dict[str, pd.DataFrame]:
    return {p.parent.name: pd.read_parquet(p).drop(columns=["t_ce", "t_update"])
            for p in sorted(root.glob("jobs/*/history.parquet"))}


@pytest.fixture()
def tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine does not let root mount a tmpfs (container without CAP_SYS_ADMIN)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_stops_the_run_with_one_line_and_the_next_run_resumes(tmpfs, tmp_path):
    grid = tmp_path / "io.yaml"
    grid.write_text(IO_GRID)
    proc = _cli("run", str(grid), "--results", str(tmpfs), "--pack-size", "1", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ctgrid: error: no space left on device writing {tmpfs}/io/"), err
    store = ResultStore(tmpfs / "io")
    counts = store.status().counts
    assert counts["failed"] == 0 and counts["done"] < 6          # nothing blamed on the jobs
    assert not list((tmpfs / "io").rglob("*.tmp"))                # no half-written file left
    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs)], check=True)
    proc = _cli("run", str(grid), "--results", str(tmpfs), "--pack-size", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert store.status().counts["done"] == 6
    ref = _cli("run", str(grid), "--results", str(tmp_path / "ref"), "--pack-size", "1", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    got, want = _histories(tmpfs / "io"), _histories(tmp_path / "ref" / "io")
    assert got.keys() == want.keys() and all(got[k].equals(want[k]) for k in got)


def _chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and \
        subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_an_unwritable_job_directory_fails_that_job_alone_and_resumes(tmp_path):
    grid = tmp_path / "io.yaml"
    grid.write_text(IO_GRID.replace("[0, 1, 2, 3, 4, 5]", "[0, 1, 2]"))
    store = ResultStore.for_grid(tmp_path / "results", "io")
    loaded = load_grid(str(grid))
    store.initialise(loaded)
    blocked, other, recorded = list(loaded.jobs())
    (store.job(recorded).dir / "model.pt").write_bytes(b"")
    if not _chattr("+i", store.job(blocked).dir):
        pytest.skip("chattr +i is not available here (needs root and a file system that supports it)")
    try:
        _chattr("+i", store.job(recorded).dir / "model.pt")
        proc = _cli("run", str(grid), "--results", str(tmp_path / "results"), "--pack-size", "1", cwd=tmp_path)
        assert proc.returncode == 4, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ctgrid: error: operation not permitted writing "), err
        assert f"/{blocked}/" in err[0]
        assert store.job(other).status == "done"                       # the others are unaffected
        assert store.job(recorded).status == "failed"                  # its record could be written
        assert "model.pt" in store.job(recorded).error_record()["message"]
        assert store.job(blocked).status == "pending"                   # not blamed: left for the next run
    finally:
        _chattr("-i", store.job(blocked).dir)
        _chattr("-i", store.job(recorded).dir / "model.pt")
    done_before = store.job(other).done.stat().st_mtime_ns
    proc = _cli("run", str(grid), "--results", str(tmp_path / "results"), "--pack-size", "1", "--retry-failed",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert store.status().counts["done"] == 3 and store.job(other).done.stat().st_mtime_ns == done_before


def test_symlinks_in_the_results_directory_are_never_written_through(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: link\n" + SMALL.replace("nepochs: 2", "nepochs: 1"))
    outside = tmp_path / "outside"
    outside.mkdir()
    job_id = next(iter(load_grid(str(grid)).jobs()))
    jobs = tmp_path / "results" / "link" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / job_id).symlink_to(outside, target_is_directory=True)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    (jobs.parent / ".lock").symlink_to(precious)
    assert main(["run", str(grid), "--results", str(tmp_path / "results")]) == 0
    assert list(outside.iterdir()) == [] and not (jobs / job_id).is_symlink()
    assert precious.read_text() == "keep me\n" and not (jobs.parent / ".lock").is_symlink()
    assert ResultStore(tmp_path / "results" / "link").job(job_id).status == "done"


def test_a_reader_that_leaves_the_pipe_does_not_stop_the_run(tmp_path):
    """`ctgrid run GRID | head -1`: the progress reader leaves; every job still runs, exit 0."""
    grid = tmp_path / "g.yaml"
    grid.write_text("name: pipe\n" + SMALL.replace("nepochs: 2", "nepochs: 1, seed: [0, 1, 2]"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "SLURM", "HYDRA"))}
    proc = subprocess.Popen([sys.executable, "-m", "ctgrid", "run", str(grid), "--results", str(tmp_path),
                             "--pack-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    assert ResultStore(tmp_path / "pipe").status().counts["done"] == 3
