"""What a run is doing right now: ``run.json`` (written by the scheduler), live-run detection
and per-job epoch progress read from the job logs — for ``ctgrid status`` and the run's
heartbeat lines. Standard library only (``ctgrid status`` never imports torch).

``run.json`` (grid directory, replaced atomically on every scheduler event): ``pid``,
``host``, ``started``, ``updated``, ``workers``, ``running`` (job id -> rank and start time),
``done``, ``failed``, ``pending``, ``busy_seconds`` and ``cost_done`` (for an ETA from the
measured rate) and ``finished`` once the run has ended. A run is *live* while it holds the
results directory's lock; jobs of a run that is not live and have a checkpoint are
*interrupted* (the next run resumes them).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _atomic
from ..store import JobPaths, ResultStore, now

#: array tasks' lock and live-state files in the grid's results directory (:mod:`.array`)
LOCK_PREFIX = ".lock.array-"
RUN_PREFIX = "run.array-"

_EPOCH = re.compile(r"epoch (\d+): loss=(\S+) acc_train=\S+ acc_val=(\S+)")
_TAIL_BYTES = 4096


def run_file(store: ResultStore, name: str = "run.json") -> Path:
    return store.root / name


def write_run_file(store: ResultStore, record: dict[str, Any], name: str = "run.json") -> None:
    _atomic.write_text(run_file(store, name), json.dumps({**record, "updated": now()}, indent=1))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def read_run_file(store: ResultStore) -> dict[str, Any] | None:
    """``run.json``; while array tasks run, their ``run.array-I.json`` merged into one record
    (workers, running jobs, measured rate and cost left summed over the live tasks)."""
    tasks = live_tasks(store) if store.root.is_dir() else {}
    parts = [r for r in (_read_json(run_file(store, f"{RUN_PREFIX}{t}.json")) for t in tasks) if r]
    if not parts:   # no live array task: the last whole run's record, else the last task's
        ended = [r for r in (_read_json(p) for p in sorted(store.root.glob(f"{RUN_PREFIX}*.json"))) if r]
        return _read_json(run_file(store)) or max(ended, key=lambda r: str(r.get("updated", "")), default=None)
    merged: dict[str, Any] = {"running": {}, "updated": max(str(r.get("updated", "")) for r in parts)}
    for rec in parts:
        merged["running"].update(rec.get("running") or {})
        for key in ("workers", "busy_seconds", "cost_done", "cost_left"):
            merged[key] = merged.get(key, 0) + (rec.get(key) or 0)
    return merged


def live_tasks(store: ResultStore) -> dict[int, str]:
    """Array tasks running now: index -> holder line (probed like ``live_holder``)."""
    out: dict[int, str] = {}
    for path in sorted(store.root.glob(f"{LOCK_PREFIX}*")):
        suffix = path.name[len(LOCK_PREFIX):]
        if not suffix.isdigit():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            with open(fd, encoding="utf-8", closefd=False) as fh:
                out[int(suffix)] = fh.read().strip() or f"array task {suffix}"
        finally:
            os.close(fd)
    return out


def live_holder(store: ResultStore) -> str | None:
    """The lock's holder line (``pid ... on host since ...``) while a run holds it, else None.

    Probes with a shared, non-blocking flock on the existing lock file (never creates one);
    array tasks hold it shared, so their own locks are probed too (:mod:`.array`)."""
    tasks = live_tasks(store) if store.root.is_dir() else {}
    if tasks:
        return "; ".join(tasks.values())
    try:
        fd = os.open(store.lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            with open(fd, encoding="utf-8", closefd=False) as fh:
                return fh.read().strip() or "a run"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class EpochProgress:
    epoch: int
    loss: str
    acc_val: str


def job_progress(paths: JobPaths) -> EpochProgress | None:
    """The last ``epoch N: loss=... acc_val=...`` line of the job's log (its tail only)."""
    try:
        with open(paths.log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = _EPOCH.findall(tail)
    if not found:
        return None
    epoch, loss, acc = found[-1]
    return EpochProgress(int(epoch), loss, acc)


def duration(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def eta_seconds(busy_seconds: float, cost_done: float, cost_left: float, workers: int) -> float | None:
    """Remaining wall time from the measured seconds per unit of expected cost."""
    if cost_done <= 0 or busy_seconds <= 0 or workers < 1:
        return None
    return busy_seconds / cost_done * cost_left / workers


def running_lines(store: ResultStore, running: dict[str, Any], nepochs: dict[str, int]) -> list[str]:
    """``<job> epoch e/E loss l acc_val a (since ...)`` per running job."""
    lines = []
    for job_id, info in sorted(running.items()):
        prog = job_progress(store.job(job_id))
        total = nepochs.get(job_id)
        where = f"rank {info.get('rank')}" if isinstance(info, dict) else ""
        if prog is None:
            lines.append(f"{job_id}  starting ({where})")
        else:
            lines.append(f"{job_id}  epoch {prog.epoch}/{total or '?'}  loss {prog.loss}  "
                         f"acc_val {prog.acc_val}  ({where})")
    return lines


def heartbeat_text(store: ResultStore, running: dict[str, Any], nepochs: dict[str, int]) -> str:
    """One line for the run's heartbeat: each running job's epoch."""
    parts = []
    for job_id in sorted(running):
        prog = job_progress(store.job(job_id))
        total = nepochs.get(job_id, "?")
        parts.append(f"{job_id[:8]} {'epoch ' + str(prog.epoch) if prog else 'starting'}/{total}")
    return "running: " + ", ".join(parts) if parts else "waiting"


def status_text(store: ResultStore, nepochs: dict[str, int]) -> list[str]:
    """The live part of ``ctgrid status``: the run holding the directory, its running jobs
    with their epochs, its ETA; or that no run is live (started jobs are interrupted)."""
    holder = live_holder(store)
    rec = read_run_file(store) or {}
    if holder is None:
        when = rec.get("finished") or rec.get("updated")
        last = f" (last run ended {when})" if when else ""
        return [f"  no live run{last}"]
    lines = [f"  live run: {holder}; {rec.get('workers', '?')} worker(s)"]
    running = rec.get("running") or {}
    lines += [f"  running {line}" for line in running_lines(store, running, nepochs)]
    eta = eta_seconds(float(rec.get("busy_seconds", 0)), float(rec.get("cost_done", 0)),
                      float(rec.get("cost_left", 0)), int(rec.get("workers", 1) or 1))
    if eta is not None:
        lines.append(f"  ETA {duration(eta)} (from the measured rate; run.json updated {rec.get('updated')})")
    return lines


def watch(render: Any, interval: float) -> None:
    """Call ``render()`` every ``interval`` seconds until Ctrl-C."""
    try:
        while True:
            render()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
