"""A finished job's files are verified (issue 26): ``done.json`` records each result file's
size and SHA-256; ``ctgrid verify`` reports damage, ``--repair`` and ``ctgrid run`` re-run the
damaged jobs to the same results, ``ctgrid aggregate`` refuses them in one line (or skips them).

One tiny real grid (moons, 2 epochs, a small evaluation with saved counterfactuals: all six
kinds of result file) is run once per module; every test damages a copy of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctgrid import _atomic
from ctgrid.aggregate import Results
from ctgrid.cli import main
from ctgrid.grid import load_grid
from ctgrid.parallel.array import ArrayTask, share
from ctgrid.store import JobPaths, ResultStore

from test_mpi import HAVE_MPI, MPIEXEC
from test_scheduler import ENV, SMALL_EVAL

GRID = textwrap.dedent(f"""\
    name: verify
    data: {{name: moons, n_train: 80, n_val: 20, n_test: 40}}
    generator: {{name: ecco, maxiter: 5}}
    training: {{nepochs: 2, nce: 10, objective: [full, vanilla]}}
    {SMALL_EVAL.replace("}", ", save_counterfactuals: true}")}
    """)
KINDS = ("config.yaml", "model.pt", "history.parquet", "evaluation.parquet", "performance.parquet",
         "counterfactuals.parquet")
TIMINGS = ["t_ce", "t_update"]   # history's per-epoch seconds: the only values a re-run may change


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A directory holding ``grid.yaml`` and ``results/verify``: the grid, run once in-process."""
    base = tmp_path_factory.mktemp("verify")
    (base / "grid.yaml").write_text(GRID)
    assert main(["run", str(base / "grid.yaml"), "--results", str(base / "results")]) == 0
    return base


def copy_of(original: Path, tmp_path: Path) -> ResultStore:
    shutil.copytree(original / "results", tmp_path / "results", symlinks=True)
    return ResultStore(tmp_path / "results" / "verify")


def rerun(original: Path, tmp_path: Path, *extra: str) -> int:
    return main(["run", str(original / "grid.yaml"), "--results", str(tmp_path / "results"), *extra])


def table(out: str) -> dict[tuple[str, str], str]:
    """verify's table of one results directory: (job, file) -> problem."""
    rows = [re.split(r"\s{2,}", line) for line in out.splitlines() if re.match(r"[0-9a-f]{16}  ", line)]
    return {(r[0], r[1]): r[2] for r in rows}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def assert_same_files(a: JobPaths, b: JobPaths) -> None:
    """The same results: config bytes, Parquet contents (history but its timings), model tensors."""
    assert a.config.read_bytes() == b.config.read_bytes()
    for kind in ("history", "evaluation", "performance", "counterfactuals"):
        x, y = pd.read_parquet(getattr(a, kind)), pd.read_parquet(getattr(b, kind))
        if kind == "history":
            x, y = x.drop(columns=TIMINGS), y.drop(columns=TIMINGS)
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=f"{b.dir.name} {kind}")
    x, y = (torch.load(p.model, map_location="cpu", weights_only=True) for p in (a, b))
    assert x["job_id"] == y["job_id"] and x["config"] == y["config"]
    assert x["state_dict"].keys() == y["state_dict"].keys()
    assert all(torch.equal(x["state_dict"][k], y["state_dict"][k]) for k in x["state_dict"])


def test_done_json_records_every_result_file_with_its_size_and_sha256(original, tmp_path):
    store = ResultStore(original / "results" / "verify")
    for job_id in store.job_ids():
        paths = store.job(job_id)
        files = paths.done_record()["files"]
        assert sorted(files) == sorted(KINDS)   # log.txt (appended to) and done.json itself are not
        for name, entry in files.items():
            data = (paths.dir / name).read_bytes()
            assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    # ctgrid train --out records the files of its model directory the same way
    out = tmp_path / "model"
    assert main(["train", "--data", "moons", "--objective", "vanilla", "--nepochs", "1", "--out", str(out)]) == 0
    files = json.loads((out / "done.json").read_text())["files"]
    assert sorted(files) == ["config.yaml", "history.parquet", "model.pt"]
    assert all(files[n]["bytes"] == (out / n).stat().st_size for n in files)


def test_each_atomic_writer_returns_the_size_and_hash_of_the_bytes_it_wrote(tmp_path):
    import pyarrow as pa
    written = [_atomic.write_text(tmp_path / "a.txt", "grüße\n" * 1000),
               _atomic.save_torch(tmp_path / "b.pt", {"w": torch.arange(1000.0)}),
               _atomic.write_parquet(tmp_path / "c.parquet", pa.table({"x": list(range(5000))}))]
    for w in written:
        data = w.path.read_bytes()
        assert (w.size, w.sha256) == (len(data), hashlib.sha256(data).hexdigest()), w.path
    assert written[0].size == len("grüße\n".encode()) * 1000
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["w"], torch.arange(1000.0))
    fh = _atomic.HashingWriter(open(tmp_path / "d", "wb"))
    fh.write(b"abc")
    assert fh.seek(0, os.SEEK_CUR) == 3 == fh.tell()
    with pytest.raises(OSError, match="written in order"):   # going back would make the digest lie
        fh.seek(0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_file_is_reported_refused_by_aggregate_and_rerun_to_identical_results(
        original, tmp_path, capsys, kind):
    """Job a: verify reports it, aggregate refuses it, verify --repair sets it aside. Job b (the
    same damage after the repair): left to the run's own size check. One run re-runs both."""
    store = copy_of(original, tmp_path)
    a, b = store.job_ids()
    truncate(store.job(a).dir / kind)
    capsys.readouterr()
    assert main(["verify", str(store.root.parent)]) == 1          # a results root, like status
    rows = table(capsys.readouterr().out)
    assert list(rows) == [(a, kind)] and rows[a, kind].startswith("is 100 bytes, done.json recorded ")

    assert main(["aggregate", str(store.root), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ctgrid: error: {store.job(a).dir / kind} is 100 bytes"), err
    assert f"ctgrid verify {store.root}" in err[0]

    assert main(["verify", str(store.root), "--repair"]) == 1
    assert store.job(a).status == "pending" and len(list(store.job(a).dir.glob("done.damaged.*.json"))) == 1
    assert main(["verify", str(store.root)]) == 0                 # the set-aside job is no longer done
    truncate(store.job(b).dir / kind)
    capsys.readouterr()
    assert rerun(original, tmp_path) == 0
    out = capsys.readouterr().out
    assert f"ctgrid: job {b}: {kind} is 100 bytes, done.json recorded " in out and "; re-running it" in out
    assert f"ctgrid: job {a}:" not in out and "2/2 jobs done" in out
    reference = ResultStore(original / "results" / "verify")
    for job_id in (a, b):
        assert_same_files(reference.job(job_id), store.job(job_id))
    assert main(["verify", str(store.root), "--full"]) == 0


def test_aggregate_skip_damaged_leaves_the_job_out_and_lists_it_in_the_notes(original, tmp_path, capsys):
    store = copy_of(original, tmp_path)
    a, b = store.job_ids()
    (store.job(a).dir / "model.pt").unlink()
    assert [j for j in Results.load([store.root], skip_damaged=True).jobs["job_id"]] == [b]
    out = tmp_path / "agg"
    assert main(["aggregate", str(store.root), "--no-figures", "--skip-damaged", "--bootstrap", "10",
                 "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert f"verify: job {a} skipped (--skip-damaged): model.pt is missing" in summary
    assert f"ctgrid verify {store.root}" in summary


def test_same_size_damage_is_found_by_full_and_an_unreadable_parquet_is_one_line(original, tmp_path, capsys):
    store = copy_of(original, tmp_path)
    a, b = store.job_ids()
    model = store.job(a).model
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    ev = store.job(b).evaluation
    ev.write_bytes(ev.read_bytes()[:-4] + b"XXXX")                # same size, no Parquet footer
    assert main(["verify", str(store.root)]) == 0                 # sizes agree
    assert main(["aggregate", str(store.root), "--no-figures"]) == 2   # pyarrow's error, named in one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ctgrid: error: {ev}: not a readable Parquet file"), err
    assert "--full" in err[0]
    assert main(["verify", str(store.root), "--full", "--repair"]) == 1
    rows = table(capsys.readouterr().out)
    assert list(rows) == [(a, "model.pt"), (b, "evaluation.parquet")], rows
    assert all(p.startswith("has the recorded size but other content") for p in rows.values())
    assert rerun(original, tmp_path) == 0
    reference = ResultStore(original / "results" / "verify")
    for job_id in (a, b):
        assert_same_files(reference.job(job_id), store.job(job_id))


def test_a_done_json_without_file_records_stays_done_and_is_checked_where_it_can_be(original, tmp_path, capsys):
    """An earlier ctgrid's done.json (no files): never re-run by itself; verify notes it and checks Parquet footers."""
    store = copy_of(original, tmp_path)
    a, b = store.job_ids()
    for job_id in (a, b):
        record = store.job(job_id).done_record()
        del record["files"]
        store.job(job_id).done.write_text(json.dumps(record))
    assert main(["verify", str(store.root)]) == 0
    assert "2 record no files (done.json of an earlier ctgrid)" in capsys.readouterr().out
    truncate(store.job(a).performance)
    assert rerun(original, tmp_path, "--dry-run") == 0
    assert "2 done, 0 failed" in capsys.readouterr().out             # not re-run automatically
    assert main(["verify", str(store.root)]) == 1
    rows = table(capsys.readouterr().out)
    assert list(rows) == [(a, "performance.parquet")] and rows[a, "performance.parquet"].startswith(
        "is not a whole Parquet file (100 bytes")
    assert main(["aggregate", str(store.root), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(store.job(a).performance) in err[0], err


def test_the_dry_run_shows_a_damaged_job_and_an_array_task_reruns_only_its_own(original, tmp_path, capsys):
    store = copy_of(original, tmp_path)
    a, b = store.job_ids()
    truncate(store.job(a).history)
    store.job(b).done.write_text("{not json")                      # an unreadable marker is damage too
    capsys.readouterr()
    assert rerun(original, tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"ctgrid: job {a}: history.parquet is 100 bytes, done.json recorded" in out
    assert f"ctgrid: job {b}: done.json is unreadable" in out and "the run would re-run it" in out
    assert "0 done" in out and not list(store.root.glob("jobs/*/done.damaged.*"))   # wrote nothing
    jobs = load_grid(str(original / "grid.yaml")).jobs()
    task = next(i for i in range(2) if a in share(jobs, 16, ArrayTask(i, 2)))
    assert rerun(original, tmp_path, "--array-task", str(task), "--array-size", "2") == 0
    out = capsys.readouterr().out
    assert f"ctgrid: job {a}:" in out and f"ctgrid: job {b}:" not in out and "re-running it" in out
    assert store.job(b).done.read_text() == "{not json"              # the other task's job is left alone
    assert rerun(original, tmp_path, "--array-task", str(1 - task), "--array-size", "2") == 0
    assert f"ctgrid: job {b}: done.json is unreadable" in capsys.readouterr().out
    reference = ResultStore(original / "results" / "verify")
    for job_id in (a, b):
        assert_same_files(reference.job(job_id), store.job(job_id))


@pytest.mark.mpi
@pytest.mark.skipif(not HAVE_MPI, reason="needs mpiexec and mpi4py (the mpich extra)")
def test_under_mpi_rank_0_reruns_a_damaged_job_to_identical_results(original, tmp_path):
    store = copy_of(original, tmp_path)
    a, b = store.job_ids()
    truncate(store.job(b).counterfactuals)
    proc = subprocess.run([str(MPIEXEC), "-n", "3", sys.executable, "-m", "ctgrid", "run", str(original / "grid.yaml"),
                           "--results", str(tmp_path / "results")], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(f"ctgrid: job {b}: counterfactuals.parquet is 100 bytes, done.json recorded ") == 1
    assert f"ctgrid: job {a}:" not in proc.stdout and "2/2 jobs done" in proc.stdout
    assert store.job(b).done_record()["rank"] != 0                 # rank 0 planned it, a worker re-ran it
    reference = ResultStore(original / "results" / "verify")
    for job_id in (a, b):
        assert_same_files(reference.job(job_id), store.job(job_id))


def test_the_log_is_complete_before_done_json_is_written(tmp_path, monkeypatch):
    """A kill right after done.json loses no log line: 'done in' is already in log.txt."""
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID.replace("objective: [full, vanilla]", "objective: vanilla"))
    seen = []
    real = ResultStore.mark_done

    def spy(self, job_id, record, files=()):
        seen.append(self.job(job_id).log.read_text().rstrip().splitlines()[-1])
        real(self, job_id, record, files)
    monkeypatch.setattr(ResultStore, "mark_done", spy)
    assert main(["run", str(grid), "--results", str(tmp_path)]) == 0
    assert len(seen) == 1 and " done in " in seen[0], seen


def test_links_are_followed_above_the_grid_directory_and_refused_at_it_by_repair(original, tmp_path, capsys):
    """The rule (README, results layout): --results / RESULTS may be a symbolic link (followed);
    the grid directory, jobs/ and cache/ must be real for anything that writes (run, verify
    --repair); reading commands follow links anywhere."""
    store = copy_of(original, tmp_path)
    link = tmp_path / "linked-root"
    link.symlink_to(tmp_path / "results", target_is_directory=True)
    truncate(store.job(store.job_ids()[0]).evaluation)
    capsys.readouterr()
    assert main(["run", str(original / "grid.yaml"), "--results", str(link)]) == 0
    assert "re-running it" in capsys.readouterr().out and link.is_symlink()
    assert store.job(store.job_ids()[0]).done_record()["files"]["evaluation.parquet"]["bytes"] > 100
    assert main(["verify", str(link)]) == 0 and main(["status", str(link / "verify")]) == 0
    grid_link = tmp_path / "other" / "verify"
    grid_link.parent.mkdir()
    grid_link.symlink_to(store.root, target_is_directory=True)
    truncate(store.job(store.job_ids()[0]).evaluation)
    assert main(["verify", str(grid_link)]) == 1                                   # reading follows it
    capsys.readouterr()
    assert main(["verify", str(grid_link), "--repair"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symbolic link" in err[0], err
    assert store.job(store.job_ids()[0]).status == "done"                          # nothing set aside


def test_verify_never_imports_torch_and_refuses_repair_while_a_run_holds_the_lock(original, tmp_path):
    store = copy_of(original, tmp_path)
    code = ("import sys\nfrom ctgrid.cli import main\n"
            f"rc = main(['verify', {str(store.root)!r}])\n"
            "assert rc == 0 and 'torch' not in sys.modules and 'pandas' not in sys.modules, rc\n")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    truncate(store.job(store.job_ids()[0]).model)
    with store.lock():
        proc = subprocess.run([sys.executable, "-m", "ctgrid", "verify", str(store.root), "--repair"], env=ENV,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "in use by another run" in proc.stderr
    assert store.job(store.job_ids()[0]).status == "done"


def test_verify_of_no_results_is_one_line_exit_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ctgrid: error: no results directory at "), err
