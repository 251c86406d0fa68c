"""The options of ``ctgrid slurm submit``: one frozen dataclass, validated once.

Every value that ends up in the batch script is checked here, before anything is
written or submitted, so that a typo costs a one-line ``ctgrid: error: --OPTION: got
...; allowed: ...`` (exit 2) on the login node instead of a job that fails in the queue.
The formats are Slurm's (``sbatch --time``, ``--mem-per-cpu``, partition and account
names); free text (``--setup``) is the user's shell code and is only checked for
characters that cannot be in a script line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigError

#: seconds between Slurm's warning signal (SIGUSR1) and the time limit
SIGNAL_LEAD = 120
#: how often a job interrupted by its time limit requeues itself, by default
DEFAULT_MAX_REQUEUES = 3

# Slurm's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)")
_MEM = re.compile(r"[1-9]\d*[KMGT]?")
_NAME = re.compile(r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*")
_JOB_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,128}")


def time_seconds(text: str) -> int:
    """Seconds of a Slurm ``--time`` value (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``;
    ``UNLIMITED``/``INFINITE``: a very large number)."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return 2**31
    m = _TIME.fullmatch(text)
    if m is None:
        raise ConfigError(f"--time: got {text!r}; allowed: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM "
                          f"or D-HH:MM:SS (Slurm's formats), e.g. 02:00:00, or UNLIMITED")
    d, dh, dm, ds, m1, m2, m3 = (int(g) if g else 0 for g in m.groups())
    if m.group(1) is not None:
        return ((d * 24 + dh) * 60 + dm) * 60 + ds
    if m.group(7) is not None:   # H:M:S
        return (m1 * 60 + m2) * 60 + m3
    return m1 * 60 + m2          # M or M:S


@dataclass(frozen=True)
class SubmitOptions:
    """What ``ctgrid slurm submit`` puts into the batch script and onto sbatch's command line.

    ``run_args`` are the arguments of ``ctgrid run`` (grid, overrides, ``--results`` ...)
    exactly as the job will pass them; ``python`` is the interpreter the job runs.
    """

    job_name: str
    python: str
    run_args: tuple[str, ...]
    state_dir: str                      # scripts, logs and exit-code files (shared file system)
    ntasks: int = 2
    cpus_per_task: int = 1
    time: str = "01:00:00"
    mem_per_cpu: str | None = None      # None: the cluster's default (a small node refuses 2G)
    partition: str | None = None
    account: str | None = None
    setup: tuple[str, ...] = ()         # shell lines run before ctgrid (module load ...)
    array: int | None = None            # N independent tasks, each a share of the grid (no MPI)
    requeue: bool = True
    max_requeues: int = DEFAULT_MAX_REQUEUES
    overcommit: bool = False
    sbatch_args: tuple[str, ...] = field(default=())   # after ``--``: given to sbatch as they are
    device: str = "cpu"                 # ctgrid run --device (also in run_args)
    gpus_per_task: int | None = None    # #SBATCH --gpus-per-task (every task; rank 0 leaves its idle)

    def __post_init__(self) -> None:
        _positive("--ntasks", self.ntasks)
        _positive("--cpus-per-task", self.cpus_per_task)
        from ..parallel.settings import max_threads   # each task's torch threads: ctgrid run refuses more
        if self.cpus_per_task > max_threads():
            raise ConfigError(f"--cpus-per-task: got {self.cpus_per_task}; allowed: an integer in "
                              f"1..{max_threads()} (the torch threads of each task)")
        if self.array is not None:
            _positive("--array", self.array)
            from ..parallel.array import MAX_ARRAY_SIZE
            if self.array > MAX_ARRAY_SIZE:
                raise ConfigError(f"--array: got {self.array}; allowed: an integer in 1..{MAX_ARRAY_SIZE} "
                                  f"(no more tasks than a grid may have jobs)")
            if self.ntasks != 1:
                raise ConfigError(f"--ntasks: got {self.ntasks} with --array; allowed: 1 (each array "
                                  f"task is one process that runs its share of the grid, no MPI)")
        elif self.ntasks < 2:
            raise ConfigError(f"--ntasks: got {self.ntasks}; allowed: an integer >= 2 (rank 0 "
                              f"schedules, the others run jobs), or --array N for single-process tasks")
        if time_seconds(self.time) <= SIGNAL_LEAD:
            raise ConfigError(f"--time: got {self.time!r}; allowed: more than {SIGNAL_LEAD} s (the "
                              f"warning signal comes {SIGNAL_LEAD} s before the limit)")
        if self.mem_per_cpu is not None and not _MEM.fullmatch(self.mem_per_cpu):
            raise ConfigError(f"--mem-per-cpu: got {self.mem_per_cpu!r}; allowed: a positive integer "
                              f"with an optional unit K, M, G or T (e.g. 1900M), or leave it out for "
                              f"the cluster's default")
        for name, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not _NAME.fullmatch(value):
                raise ConfigError(f"{name}: got {value!r}; allowed: letters, digits, '_.+-' "
                                  f"(several partitions separated by commas)")
        if not _JOB_NAME.fullmatch(self.job_name):
            raise ConfigError(f"--job-name: got {self.job_name!r}; allowed: 1-128 letters, digits, '_.+-'")
        for line in self.setup:
            if not line.strip() or any(c in line for c in "\n\r\0"):
                raise ConfigError(f"--setup: got {line!r}; allowed: one non-empty shell line per "
                                  f"--setup (repeat the option for several)")
        if self.max_requeues < 0:
            raise ConfigError(f"--max-requeues: got {self.max_requeues}; allowed: an integer >= 0")
        self._check_gpus()

    def _check_gpus(self) -> None:
        """``--device`` and ``--gpus-per-task`` must agree: CUDA needs GPUs in the allocation
        (``--gpus-per-task``, or sbatch's own ``--gres=gpu``/``--gpus*`` after ``--``), and GPUs
        for a CPU run would sit idle."""
        from ..device import parse_device
        device = parse_device(self.device)
        if self.gpus_per_task is not None:
            _positive("--gpus-per-task", self.gpus_per_task)
            if device == "cpu":
                raise ConfigError(f"--gpus-per-task: got {self.gpus_per_task} with --device cpu; allowed: "
                                  f"--device cuda (or auto) with GPUs, or no --gpus-per-task")
        by_sbatch = any(a.startswith(("--gres=gpu", "--gpus", "-G")) for a in self.sbatch_args)
        if device.startswith("cuda") and self.gpus_per_task is None and not by_sbatch:
            raise ConfigError(f"--device: got {device!r} without GPUs in the allocation; allowed: "
                              f"--gpus-per-task N (or sbatch's --gres=gpu:N after --), or --device cpu|auto")
        index = device.partition(":")[2]
        if index and self.gpus_per_task is not None and int(index) >= self.gpus_per_task:
            raise ConfigError(f"--device: got {device!r} but each task sees {self.gpus_per_task} GPU(s) "
                              f"(--gpus-per-task); allowed: cuda:0..cuda:{self.gpus_per_task - 1} or cuda")

    @property
    def requeues(self) -> int:
        """How often the job may requeue itself (0 with ``--no-requeue``)."""
        return self.max_requeues if self.requeue else 0


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: got {value!r}; allowed: an integer >= 1")
