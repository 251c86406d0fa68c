"""Per-job log files: the ``ctgrid`` logger and Python warnings appended to each job's ``log.txt``."""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator, Mapping


class _ForJob(logging.Filter):
    """Pass records of one job (``extra={"job": id}``) and records of no job in particular."""

    def __init__(self, job_id: str):
        super().__init__()
        self.job_id = job_id

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "job", self.job_id) == self.job_id


class _QuietFileHandler(logging.FileHandler):
    """A job log that loses lines on a full or unwritable disk instead of printing logging's
    traceback for every record (the failure itself reaches the run as a WriteError)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


@contextlib.contextmanager
def job_log(paths: Mapping[str, Path]) -> Iterator[logging.Logger]:
    """Append the ``ctgrid`` logger and Python warnings to the jobs' ``log.txt`` meanwhile:
    a record with ``extra={"job": id}`` goes to that job's log only, others to every log."""
    logger = logging.getLogger("ctgrid.job")
    if not paths:
        yield logger
        return
    root = logging.getLogger("ctgrid")
    handlers: list[logging.Handler] = [logging.NullHandler()]   # a job without a log: not stderr
    root.addHandler(handlers[0])
    for job_id, path in paths.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():   # not ctgrid's: never append through a link out of the results directory
                path.unlink()
            handler: logging.FileHandler = _QuietFileHandler(path, mode="a", encoding="utf-8")
        except OSError:   # unwritable: the job runs without a log; its result files say the rest
            continue
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.addFilter(_ForJob(job_id))
        handlers.append(handler)
        root.addHandler(handler)
    old_level, old_prop = root.level, root.propagate
    root.setLevel(logging.INFO)
    root.propagate = False
    old_show = warnings.showwarning
    warnings.showwarning = (lambda msg, cat, fn, ln, *a, **k:
                            root.warning("%s: %s (%s:%s)", cat.__name__, msg, fn, ln))
    try:
        yield logger
    finally:
        warnings.showwarning = old_show
        for done in handlers:
            root.removeHandler(done)
            done.close()
        root.setLevel(old_level)
        root.propagate = old_prop
