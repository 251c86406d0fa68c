"""A `ctgrid train` process killed (SIGKILL), resumed, stopped (SIGTERM) and resumed again
ends with bitwise the same weights and history as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from ctgrid.data import DataConfig, load_dataset
from ctgrid.generators import GeneratorConfig
from ctgrid.grid.job import JobConfig
from ctgrid.models import ModelConfig
from ctgrid.training import TrainingConfig, train

REPO = Path(__file__).resolve().parents[1]
NEPOCHS = 8
ARGS = ["--data", "moons", "--objective", "full", "--nepochs", str(NEPOCHS), "--nce", "300",
        "--maxiter", "10", "--tau", "0.9", "--lambda-reg", "0.25", "--seed", "5", "--threads", "1"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "ctgrid", "train", *ARGS, "--out", str(out)]


def _epoch(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, weights_only=True)["epoch"]) if checkpoint.exists() else 0


def _interrupt(out: Path, sig: int, after_epoch: int) -> tuple[int, str]:
    """Run the command and send ``sig`` as soon as the checkpoint holds ``after_epoch`` epochs."""
    proc = subprocess.Popen(_cmd(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while _epoch(out / "checkpoint.pt") < after_epoch:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=300)
    return proc.returncode, proc.stderr.read()


def test_sigusr1_stops_ctgrid_train_like_ctgrid_run(tmp_path):
    """One stop flag for both commands: SLURM's early warning signal (USR1) checkpoints and exits 3."""
    out = tmp_path / "usr1"
    rc, err = _interrupt(out, signal.SIGUSR1, after_epoch=1)
    assert rc == 3, err
    assert "SIGUSR1 received" in err and (out / "checkpoint.pt").exists()
    assert not (out / "model.pt").exists()


def _reference():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # ctgrid train's --seed is the replicate number: the torch seed derives from it as in a grid
        seed = JobConfig(data=DataConfig(name="moons"), training=TrainingConfig(seed=5)).seed
        cfg = TrainingConfig(objective="full", nepochs=NEPOCHS, nce=300, lambda_reg=0.25, seed=seed,
                             batch_size=30)
        return train(load_dataset(DataConfig(name="moons")), ModelConfig(),
                     GeneratorConfig(maxiter=10, tau=0.9), cfg)
    finally:
        torch.set_num_threads(before)


def test_killed_then_stopped_run_resumes_to_identical_weights(tmp_path):
    out = tmp_path / "run"
    rc, _ = _interrupt(out, signal.SIGKILL, after_epoch=2)
    killed_at = _epoch(out / "checkpoint.pt")
    assert rc == -signal.SIGKILL and 2 <= killed_at < NEPOCHS and not (out / "model.pt").exists()

    rc, err = _interrupt(out, signal.SIGTERM, after_epoch=killed_at + 1)
    stopped_at = _epoch(out / "checkpoint.pt")
    assert rc == 3, err   # EXIT_INTERRUPTED, as ctgrid run
    assert "run the same command again to resume" in err
    assert killed_at < stopped_at < NEPOCHS and not (out / "model.pt").exists()
    assert len(pd.read_parquet(out / "history.parquet")) == stopped_at

    done = subprocess.run(_cmd(out), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ref = _reference()
    got = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    want = ref.model.state_dict()
    assert list(want) == list(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    history = pd.read_parquet(out / "history.parquet")
    assert history["epoch"].tolist() == list(range(1, NEPOCHS + 1))
    timing = ["t_ce", "t_update"]
    assert set(history.pop("job_id")) == {torch.load(out / "model.pt", weights_only=True)["job_id"]}
    pd.testing.assert_frame_equal(history.drop(columns=timing), ref.history.drop(columns=timing))
