"""Run one job: load data, train (resuming from the job's checkpoint), evaluate, store.

Every outcome is a record, never a crash of the run (submitit's
``("error", trace)``): an exception or a non-finite model becomes ``error.json``
and the scheduler goes on with the other jobs. ``done.json`` is written last,
with the job's timings, so a job is finished exactly when its marker exists.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import pandas as pd
import torch

from .. import __version__, _atomic
from ..errors import JobFailedError
from ..store import JobPaths, ResultStore, now

if TYPE_CHECKING:
    from ..data import Dataset
    from ..grid.job import JobConfig
    from ..training.loop import SearchWrapper, TrainResult

log = logging.getLogger("ctgrid")

#: ``(evaluation, performance)`` of one model (``evaluation`` is None when disabled)
Tables = tuple[Optional[pd.DataFrame], pd.DataFrame]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RunSettings:
    """What every rank needs to run jobs (the same on all ranks: it comes from the command line)."""

    results: Path
    data_dir: str | None = None
    threads: int = 1
    shard_size: int = 1


@dataclass
class JobOutcome:
    """What a worker reports back about one job."""

    job_id: str
    status: str                  # done | failed | interrupted
    seconds: float = 0.0
    error_type: str | None = None
    message: str | None = None
    rank: int = 0
    epochs_done: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Role:
    """How this rank takes part in a job (one per job; the default: a rank running it alone).

    A sharded group's leader and members all train the job (``stop`` is then a
    collective over the group and ``wrap_search`` splits the CE search over it); only
    the ``leader`` writes into the results, a member trains from ``checkpoint``, its
    private copy of the leader's.
    """

    rank: int = 0
    leader: bool = True
    checkpoint: Path | None = None
    stop: Callable[[], bool] = _never               # between epochs
    local_stop: Callable[[], bool] | None = None    # before the evaluation (default: stop)
    wrap_search: SearchWrapper | None = None


class NonFiniteError(JobFailedError):
    """Training ended with non-finite weights or losses."""


def warm_up() -> None:
    """Import what a job needs before the first job starts, so its timing is the job's alone."""
    from .. import data, training  # noqa: F401
    from ..evaluation import evaluate  # noqa: F401


def torch_threads(threads: int) -> None:
    """Intra-op threads of this process (one process per core is the grid's unit of work)."""
    torch.set_num_threads(max(1, int(threads)))


def default_threads() -> int:
    """``$SLURM_CPUS_PER_TASK`` when set, else 1."""
    try:
        return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
    except ValueError:
        return 1


@contextlib.contextmanager
def job_log(path: Path | None) -> Iterator[logging.Logger]:
    """Append the ``ctgrid`` logger and Python warnings to the job's ``log.txt`` meanwhile."""
    logger = logging.getLogger("ctgrid.job")
    if path is None:
        yield logger
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("ctgrid")
    old_level, old_prop = root.level, root.propagate
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    old_show = warnings.showwarning
    warnings.showwarning = (lambda msg, cat, fn, ln, *a, **k:
                            root.warning("%s: %s (%s:%s)", cat.__name__, msg, fn, ln))
    try:
        yield logger
    finally:
        warnings.showwarning = old_show
        root.removeHandler(handler)
        root.setLevel(old_level)
        root.propagate = old_prop
        handler.close()


def _epoch_line(row: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    keys = ("loss", "acc_train", "acc_val", "converged", "search_steps", "skipped")
    return f"epoch {row.get('epoch')}: " + " ".join(f"{k}={fmt(row[k])}" for k in keys if k in row)


def check_finite(model: torch.nn.Module, history: pd.DataFrame) -> None:
    """Raise :class:`NonFiniteError` for NaN/inf weights or a last epoch without any update."""
    for name, p in model.state_dict().items():
        if torch.is_floating_point(p) and not bool(torch.isfinite(p).all()):
            raise NonFiniteError(f"non-finite weights in {name!r} after training")
    if len(history) and "loss" in history and not math.isfinite(float(history["loss"].iloc[-1])):
        raise NonFiniteError(f"every mini-batch loss of epoch {int(history['epoch'].iloc[-1])} "
                             f"was non-finite (no update)")


def evaluate(model: torch.nn.Module, dataset: Dataset, job: JobConfig, cache_dir: Path) -> Tables:
    """``(evaluation, performance)`` tables of a trained model. With
    ``evaluation.enabled: false`` only the (cheap) predictive performance is computed
    (Tables 3–5 need it for every job) and ``evaluation`` is ``None``."""
    from ..evaluation.evaluate import evaluate_model, evaluation_constraints, performance_frame
    if job.evaluation.enabled:
        # No training generator: a baseline (whose canonical generator is the default) and its
        # CT models must get the identical test-time search (paired design).
        return evaluate_model(model, dataset, job.evaluation, cache_dir=cache_dir)
    return None, performance_frame(model, dataset, job.evaluation,
                                   evaluation_constraints(dataset, job.evaluation))


def _train(job: JobConfig, dataset: Dataset, store: ResultStore, checkpoint: Path, role: Role,
           logger: logging.Logger) -> tuple[TrainResult, int]:
    from ..training import train
    ran = []

    def progress(row: dict[str, Any]) -> None:
        ran.append(row["epoch"])
        logger.info(_epoch_line(row))

    result = train(dataset, job.model, job.generator, replace(job.training, seed=job.seed),
                   checkpoint_path=checkpoint, cache_dir=store.cache_dir, progress=progress,
                   stop=role.stop, wrap_search=role.wrap_search)
    return result, result.epochs_done - len(ran)


def _write_results(paths: JobPaths, job: JobConfig, result: TrainResult, tables: Tables) -> None:
    from ..modeldir import write_model
    write_model(paths, job, result)
    evaluation, performance = tables
    if evaluation is not None:
        _atomic.write_parquet(paths.evaluation, evaluation)
    _atomic.write_parquet(paths.performance, performance)


@dataclass
class _Attempt:
    """One execution of one job on one rank (what the steps of :func:`run_job` share)."""

    store: ResultStore
    job_id: str
    job: JobConfig
    settings: RunSettings
    role: Role
    logger: logging.Logger
    t0: float = field(default_factory=time.perf_counter)
    started: str = field(default_factory=now)

    def outcome(self, status: str, seconds: float, epochs: int = 0) -> JobOutcome:
        return JobOutcome(self.job_id, status, seconds, rank=self.role.rank, epochs_done=epochs)

    def train(self) -> tuple[Dataset, TrainResult, int]:
        from ..data import load_dataset
        if self.role.leader:
            self.store.begin(self.job_id)
            self.store.write_config(self.job_id, self.job)
        self.logger.info("job %s (%s) on rank %d of %s, seed %d", self.job_id, self.job.name,
                         self.role.rank, socket.gethostname(), self.job.seed)
        dataset = load_dataset(self.job.data, self.settings.data_dir)
        checkpoint = self.role.checkpoint or self.store.job(self.job_id).checkpoint
        result, resumed = _train(self.job, dataset, self.store, checkpoint, self.role, self.logger)
        return dataset, result, resumed

    def finish(self, dataset: Dataset, result: TrainResult, resumed: int, t_train: float) -> JobOutcome:
        """Evaluate, write the results, then the ``done.json`` marker (last)."""
        tables = evaluate(result.model, dataset, self.job, self.store.cache_dir)
        _write_results(self.store.job(self.job_id), self.job, result, tables)
        seconds = time.perf_counter() - self.t0
        self.store.mark_done(self.job_id, {
            "name": self.job.name, "started": self.started, "seconds": seconds,
            "train_seconds": t_train, "eval_seconds": seconds - t_train,
            "epochs": result.epochs_done, "resumed_from_epoch": resumed, "rank": self.role.rank,
            "host": socket.gethostname(), "shard_size": self.settings.shard_size,
            "threads": self.settings.threads, "data_summary": dataset.summary(),
            "ctgrid_version": __version__})
        self.logger.info("done in %.1fs (train %.1fs)", seconds, t_train)
        return self.outcome("done", seconds, result.epochs_done)

    def fail(self, exc: Exception) -> JobOutcome:
        seconds = time.perf_counter() - self.t0
        self.logger.error("failed: %s: %s", type(exc).__name__, exc, exc_info=True)
        if self.role.leader:
            self.store.mark_failed(self.job_id, exc, {"rank": self.role.rank, "seconds": seconds,
                                                      "started": self.started},
                                   drop_checkpoint=isinstance(exc, NonFiniteError))
        out = self.outcome("failed", seconds)
        out.error_type, out.message = type(exc).__name__, (str(exc).strip().splitlines() or [""])[0]
        return out


def run_job(store: ResultStore, job_id: str, job: JobConfig, settings: RunSettings,
            role: Role = Role()) -> JobOutcome:
    """Run ``job`` to completion, failure or interruption and record the result.

    ``role.stop`` is the training's between-epoch check; ``role.local_stop`` (default
    ``role.stop``) is checked once more before the evaluation. A non-leader (sharded
    member) trains from ``role.checkpoint`` and writes nothing into the results.
    """
    paths = store.job(job_id)
    local_stop = role.stop if role.local_stop is None else role.local_stop
    with job_log(paths.log if role.leader else None) as logger:
        run = _Attempt(store, job_id, job, settings, role, logger)
        try:
            dataset, result, resumed = run.train()
            t_train = time.perf_counter() - run.t0
            if not result.completed:
                logger.info("interrupted after epoch %d (checkpoint kept)", result.epochs_done)
                return run.outcome("interrupted", t_train, result.epochs_done)
            check_finite(result.model, result.history)
            if not role.leader:
                return run.outcome("done", t_train, result.epochs_done)
            if local_stop():
                logger.info("interrupted before the evaluation (training complete, checkpoint kept)")
                return run.outcome("interrupted", t_train, result.epochs_done)
            return run.finish(dataset, result, resumed, t_train)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a failed job is a record, not a crash
            return run.fail(exc)
