"""Run one job: load data, train (resuming from the job's checkpoint), evaluate, store.

Every outcome is a record, never a crash of the run (submitit's
``("error", trace)``): an exception or a non-finite model becomes ``error.json``
and the scheduler goes on with the other jobs. ``done.json`` is written last,
with the job's timings and the size and SHA-256 of every result file written
(:mod:`ctgrid.integrity`), so a job is finished exactly when its marker exists
(the log's last line comes before it).
"""
from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import pandas as pd
import torch

from .. import __version__
from .._atomic import FATAL_ERRNOS, WriteError, Written, io_message
from ..data.config import data_provenance
from ..errors import JobFailedError
from ..provenance import provenance
from ..store import JobPaths, ResultStore, now, write_job_parquet
from .joblog import job_log
from .settings import JobOutcome, Role, RunSettings

if TYPE_CHECKING:
    from ..data import Dataset
    from ..grid.job import JobConfig
    from ..training.loop import TrainResult

log = logging.getLogger("ctgrid")

#: ``(evaluation, performance)`` of one model (``evaluation`` is None when disabled)
Tables = tuple[Optional[pd.DataFrame], pd.DataFrame, Optional[pd.DataFrame]]


#: a finished job whose last epoch's loss exceeds this many times its lowest is flagged
DIVERGED_FACTOR = 100.0


def divergence_warning(history: pd.DataFrame) -> str | None:
    """A warning when training ended far above its best loss (it diverged but stayed finite)."""
    if "loss" not in history or len(history) < 2:
        return None
    loss = history["loss"].astype(float)
    last, best = float(loss.iloc[-1]), float(loss.min())
    if math.isfinite(last) and last > max(DIVERGED_FACTOR * max(best, 0.0), 1e3):
        return f"loss {last:.3g} at the last epoch (lowest {best:.3g}): training diverged?"
    return None


class NonFiniteError(JobFailedError):
    """Training ended with non-finite weights or losses."""


def warm_up() -> None:
    """Import what a job needs before the first job starts, so its timing is the job's alone."""
    from .. import data, training  # noqa: F401
    from ..evaluation import evaluate  # noqa: F401


def torch_threads(threads: int) -> None:
    """Intra-op threads of this process (one process per core is the grid's unit of work)."""
    torch.set_num_threads(max(1, int(threads)))


def _epoch_line(row: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    keys = ("loss", "acc_train", "acc_val", "converged", "search_steps", "skipped")
    return f"epoch {row.get('epoch')}: " + " ".join(f"{k}={fmt(row[k])}" for k in keys if k in row)


def check_finite(model: torch.nn.Module, history: pd.DataFrame, diverged: str | None = None) -> None:
    """Raise :class:`NonFiniteError` for a run training gave up on (``diverged``), NaN/inf
    weights or a last epoch without any update."""
    if diverged is not None:
        raise NonFiniteError(diverged)
    for name, p in model.state_dict().items():
        if torch.is_floating_point(p) and not bool(torch.isfinite(p).all()):
            raise NonFiniteError(f"non-finite weights in {name!r} after training")
    if len(history) and "loss" in history and not math.isfinite(float(history["loss"].iloc[-1])):
        raise NonFiniteError(f"every mini-batch loss of epoch {int(history['epoch'].iloc[-1])} "
                             f"was non-finite (no update)")


def evaluate(model: torch.nn.Module, dataset: Dataset, job: JobConfig, cache_dir: Path) -> Tables:
    """``(evaluation, performance, counterfactuals)`` tables of a trained model. With
    ``evaluation.enabled: false`` only the (cheap) predictive performance is computed
    (Tables 3–5 need it for every job) and ``evaluation`` is ``None``; ``counterfactuals``
    is ``None`` unless ``evaluation.save_counterfactuals``."""
    from ..evaluation.evaluate import evaluate_model, evaluation_constraints, performance_frame
    if job.evaluation.enabled:
        # No training generator: a baseline (whose canonical generator is the default) and its
        # CT models must get the identical test-time search (paired design).
        return tuple(evaluate_model(model, dataset, job.evaluation, cache_dir=cache_dir))
    return None, performance_frame(model, dataset, job.evaluation,
                                   evaluation_constraints(dataset, job.evaluation)), None


#: members of a pack are evaluated in one search while (members x grid rows x features)
#: stays under this many values on a CPU (the paper's synthetic grids; big ones go one by
#: one); per device kind in :data:`ctgrid.grid.packs.DEVICE_BOUNDS`
JOINT_EVALUATION_VALUES = 2**21


def evaluate_jointly(models: list[torch.nn.Module], dataset: Dataset, job: JobConfig,
                     cache_dir: Path) -> list[Tables] | None:
    """The tables of several models under ``job``'s evaluation in one search, or ``None``
    when that would be too large (or there is nothing to share)."""
    from ..evaluation.evaluate import evaluate_models
    from ..evaluation.grid import CHUNK_ROWS, lambda_settings
    ev = job.evaluation
    rows = min(CHUNK_ROWS, ev.n_runs * ev.n_individuals * len(lambda_settings(ev)))
    from ..grid.packs import device_bounds
    limit = device_bounds(dataset.device.type).joint_evaluation
    if len(models) < 2 or not ev.enabled or len(models) * rows * dataset.n_features > limit:
        return None
    return [tuple(e) for e in evaluate_models(models, dataset, ev, cache_dir=cache_dir)]


def _write_results(paths: JobPaths, job: JobConfig, result: TrainResult, tables: Tables,
                   record: dict[str, Any]) -> list[Written]:
    """Every result file of a finished job but its config (written before training); their records."""
    from ..modeldir import write_model
    written = write_model(paths, job, result, record)
    from ..evaluation.evaluate import points_table
    evaluation, performance, points = tables
    for path, table in ((paths.evaluation, evaluation),
                        (paths.counterfactuals, None if points is None else points_table(points)),
                        (paths.performance, performance)):
        if table is not None:
            written.append(write_job_parquet(path, table, paths.job_id, record))
    return written


@dataclass
class _Attempt:
    """One execution of one pack on one rank (what the steps of :func:`run_pack` share)."""

    store: ResultStore
    jobs: dict[str, JobConfig]
    settings: RunSettings
    role: Role
    logger: logging.Logger
    t0: float = field(default_factory=time.perf_counter)
    started: str = field(default_factory=now)
    configs: dict[str, Written] = field(default_factory=dict)   # each job's config.yaml, as written

    def outcome(self, job_id: str, status: str, seconds: float, epochs: int = 0) -> JobOutcome:
        return JobOutcome(job_id, status, seconds, rank=self.role.rank, epochs_done=epochs)

    def train(self) -> tuple[Dataset, list[TrainResult], int]:
        from ..data import load_dataset
        from ..training.loop import PackMember, train_pack
        ids = list(self.jobs)
        if self.role.leader:
            for job_id, job in self.jobs.items():
                self.store.begin(job_id)
                config = self.store.write_config(job_id, job, refresh=True)
                if config is not None:
                    self.configs[job_id] = config
        for job_id, job in self.jobs.items():
            self.logger.info("job %s (%s) on rank %d of %s, seed %d%s%s", job_id, job.name,
                             self.role.rank, socket.gethostname(), job.seed,
                             f", in a pack of {len(ids)}" if len(ids) > 1 else "",
                             "" if self.role.device == "cpu" else f", on {self.role.device}",
                             extra={"job": job_id})
            if job.model.kind == "module":
                self.logger.info("model: the user's factory %s; it trains alone (not in a pack)",
                                 job.model.factory, extra={"job": job_id})
        first = self.jobs[ids[0]]
        from ..device import configure, training_device
        device = torch.device(self.role.device)
        configure(device)
        dataset = load_dataset(first.data, self.settings.data_dir).to(device)
        members = [PackMember(j.model, j.generator, j.run_training,
                              self.role.checkpoint or self.store.job(i).checkpoint)
                   for i, j in self.jobs.items()]
        ran = [0] * len(ids)

        def progress(k: int, row: dict[str, Any]) -> None:
            ran[k] += 1
            self.logger.info(_epoch_line(row), extra={"job": ids[k]})

        results = train_pack(dataset.to(training_device(device)), members, cache_dir=self.store.cache_dir,
                             progress=progress, stop=self.role.stop, wrap_search=self.role.wrap_search)
        for result in results:   # evaluated where the data are (a no-op where it trained)
            result.model.to(device)
        return dataset, results, results[0].epochs_done - ran[0]

    def finish(self, job_id: str, dataset: Dataset, result: TrainResult, resumed: int,
               t_train: float, evaluated: tuple[Tables, float] | None = None) -> JobOutcome:
        """Evaluate one member (unless ``evaluated``: its tables and seconds from a joint
        evaluation), write its results, then its ``done.json`` marker (last)."""
        t_eval = time.perf_counter()
        job = self.jobs[job_id]
        if evaluated is None:
            tables = evaluate(result.model, dataset, job, self.store.cache_dir)
            t_eval_s = time.perf_counter() - t_eval
        else:
            tables, t_eval_s = evaluated
        record = provenance(seed=job.seed, **data_provenance(job.data))
        t_write = time.perf_counter()
        written = _write_results(self.store.job(job_id), job, result, tables, record)
        t_write_s = time.perf_counter() - t_write
        seconds = t_train + t_eval_s + t_write_s   # the job's time: its share of the pack, its evaluation and files
        warning = divergence_warning(result.history)
        self.logger.info("done in %.1fs (train %.1fs)", seconds, t_train, extra={"job": job_id})
        if warning:   # the log is complete before done.json: a kill after it loses no line
            self.logger.warning(warning, extra={"job": job_id})
        hint = None
        if tables[0] is not None:
            from ..evaluation.evaluate import convergence_hint
            hint = convergence_hint(tables[0], dataset, job.evaluation)
        files = [self.configs[job_id], *written] if job_id in self.configs else written
        self.store.mark_done(job_id, {
            "name": job.name, "started": self.started, "seconds": seconds,
            "train_seconds": t_train, "eval_seconds": t_eval_s, "write_seconds": t_write_s,
            "epochs": result.epochs_done, "resumed_from_epoch": resumed, "rank": self.role.rank,
            "host": socket.gethostname(), "shard_size": self.settings.shard_size,
            "pack_size": len(self.jobs), "threads": self.settings.threads, "device": self.role.device,
            "data_summary": dataset.summary(), "ctgrid_version": __version__,
            "versions": record["versions"], "provenance": record,
            "warning": warning}, files)
        return replace(self.outcome(job_id, "done", seconds, result.epochs_done), warning=warning, hint=hint)

    def fail(self, job_id: str, exc: Exception, seconds: float) -> JobOutcome:
        """Record the job failed (``error.json``). A full disk (or read-only file system) is
        not the job's failure: it stays unrecorded, its checkpoint kept, and the run stops
        (``io_error``, fatal); an error record that cannot be written is an ``io_error`` too."""
        self.logger.error("failed: %s: %s", type(exc).__name__, exc, exc_info=True, extra={"job": job_id})
        if isinstance(exc, WriteError) and exc.fatal:
            return self.io_error(job_id, exc, seconds)
        if self.role.leader:
            try:
                self.store.mark_failed(job_id, exc, {"rank": self.role.rank, "seconds": seconds,
                                                     "started": self.started},
                                       drop_checkpoint=isinstance(exc, NonFiniteError))
            except OSError as failure:
                return self.io_error(job_id, failure, seconds)
        out = self.outcome(job_id, "failed", seconds)
        out.error_type, out.message = type(exc).__name__, (str(exc).strip().splitlines() or [""])[0]
        return out

    def io_error(self, job_id: str, exc: OSError, seconds: float) -> JobOutcome:
        out = self.outcome(job_id, "io_error", seconds)
        out.error_type, out.message = type(exc).__name__, io_message(exc)
        out.fatal = isinstance(exc, WriteError) and exc.fatal or exc.errno in FATAL_ERRNOS
        return out



def _joint_evaluations(run: _Attempt, dataset: Dataset,
                       results: dict[str, TrainResult]) -> dict[str, tuple[Tables, float]]:
    """Members sharing one evaluation configuration, evaluated in one search where small
    enough; any error there leaves them to be evaluated one by one (each failing alone)."""
    groups: dict[Any, list[str]] = {}
    for job_id in results:
        groups.setdefault(run.jobs[job_id].evaluation, []).append(job_id)
    out: dict[str, tuple[Tables, float]] = {}
    for ids in groups.values():
        t0 = time.perf_counter()
        try:
            tables = evaluate_jointly([results[i].model for i in ids], dataset, run.jobs[ids[0]],
                                      run.store.cache_dir)
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            run.logger.warning("joint evaluation failed (%s: %s); evaluating one by one",
                               type(exc).__name__, exc)
            continue
        if tables is not None:
            share = (time.perf_counter() - t0) / len(ids)
            out.update({i: (t, share) for i, t in zip(ids, tables)})
    return out


def _checkpoint_epoch(path: Path) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state.get("epoch", 0)) if isinstance(state, dict) else 0
    except FileNotFoundError:
        return 0
    except Exception:  # noqa: BLE001 - unreadable: the training starts it afresh (and says so)
        return 0


def _by_checkpoint_epoch(store: ResultStore, jobs: dict[str, JobConfig]) -> list[dict[str, JobConfig]]:
    """The pack split by the epoch its members' checkpoints reached (one part when they agree)."""
    if len(jobs) == 1:
        return [jobs]
    parts: dict[int, dict[str, JobConfig]] = {}
    for job_id, job in jobs.items():
        parts.setdefault(_checkpoint_epoch(store.job(job_id).checkpoint), {})[job_id] = job
    return [parts[e] for e in sorted(parts)]


def run_job(store: ResultStore, job_id: str, job: JobConfig, settings: RunSettings,
            role: Role = Role()) -> JobOutcome:
    """:func:`run_pack` of one job."""
    return run_pack(store, {job_id: job}, settings, role)[0]


def run_pack(store: ResultStore, jobs: Mapping[str, JobConfig], settings: RunSettings,
             role: Role = Role()) -> list[JobOutcome]:
    """Train the compatible ``jobs`` as one pack, then evaluate and record each; one outcome per job.

    Every outcome is the job's own: a member with non-finite weights or an error in its
    evaluation fails alone (``error.json``), the others finish. An error while loading
    the data or training fails every member. ``role.stop`` is the training's
    between-epoch check; ``role.local_stop`` (default ``role.stop``) is checked once more
    before the evaluations. A non-leader (sharded member) trains from ``role.checkpoint``
    and writes nothing into the results.
    """
    jobs = dict(jobs)
    parts = _by_checkpoint_epoch(store, jobs) if role.checkpoint is None else [jobs]
    if len(parts) > 1:   # members interrupted at different epochs resume as separate packs
        return [o for part in parts for o in run_pack(store, part, settings, role)]
    paths = {i: store.job(i).log for i in jobs} if role.leader else {}
    local_stop = role.stop if role.local_stop is None else role.local_stop
    with job_log(paths) as logger:
        run = _Attempt(store, jobs, settings, role, logger)
        try:
            dataset, results, resumed = run.train()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a failed job is a record, not a crash
            seconds = time.perf_counter() - run.t0
            return [run.fail(i, exc, seconds) for i in jobs]
        t_train = (time.perf_counter() - run.t0) / len(jobs)
        if not results[0].completed:
            for i in jobs:
                logger.info("interrupted after epoch %d (checkpoint kept)", results[0].epochs_done,
                            extra={"job": i})
            return [run.outcome(i, "interrupted", t_train, r.epochs_done) for i, r in zip(jobs, results)]
        outcomes: dict[str, JobOutcome] = {}
        ready: list[str] = []
        for job_id, result in zip(jobs, results):
            try:
                check_finite(result.model, result.history, result.diverged)
                if not role.leader:
                    outcomes[job_id] = run.outcome(job_id, "done", t_train, result.epochs_done)
                else:
                    ready.append(job_id)
            except Exception as exc:  # noqa: BLE001 - one member's failure is its own record
                outcomes[job_id] = run.fail(job_id, exc, t_train)
        evaluated = {} if local_stop() else _joint_evaluations(
            run, dataset, {i: r for i, r in zip(jobs, results) if i in ready})
        for job_id, result in zip(jobs, results):
            if job_id not in ready:
                continue
            try:
                if local_stop():
                    logger.info("interrupted before the evaluation (training complete, checkpoint kept)",
                                extra={"job": job_id})
                    outcomes[job_id] = run.outcome(job_id, "interrupted", t_train, result.epochs_done)
                else:
                    outcomes[job_id] = run.finish(job_id, dataset, result, resumed, t_train,
                                                  evaluated.get(job_id))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - one member's failure is its own record
                outcomes[job_id] = run.fail(job_id, exc, t_train)
        return [outcomes[i] for i in jobs]
