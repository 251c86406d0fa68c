"""``ctgrid`` command line: one module per subcommand, each with ``add_parser`` and ``run``.

Bad input (:class:`~ctgrid.errors.ConfigError`, :class:`~ctgrid.errors.DataError`)
prints one line ``ctgrid: error: ...`` and exits with code 2; results that cannot be
written (read-only or full disk) print one line naming the path and exit with code 4.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn, Sequence

from ..errors import ConfigError, DataError, StoreError

#: subcommand -> module under ctgrid.cli
SUBCOMMANDS = ("train", "evaluate", "run", "expand", "config", "status", "verify", "aggregate", "slurm")
_MODULES = {"train": "train", "evaluate": "evaluate", "run": "grid", "expand": "expand",
            "config": "config", "status": "grid", "verify": "verify", "aggregate": "aggregate",
            "slurm": "slurm"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``ctgrid: error: ...``, exit 2) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ctgrid: error: {self.prog.removeprefix('ctgrid ') if self.prog != 'ctgrid' else ''}"
                     f"{': ' if self.prog != 'ctgrid' else ''}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctgrid", description=(
        "Counterfactual Training (Altmeyer et al. 2025) and hyper-parameter grids of it, "
        "in one process or under mpirun/srun."))
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"ctgrid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f".{_MODULES[name]}", __name__)
        adder = getattr(module, f"add_{name}_parser", None) or module.add_parser
        sp = adder(sub)
        if sp is not None and sp.get_default("func") is None:
            sp.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (under a batch script of ``ctgrid slurm``, the
    run's code goes to ``$CTGRID_EXIT_FILE`` instead: :mod:`ctgrid.slurm.exitfile`)."""
    from ..slurm import exitfile
    if not os.environ.get(exitfile.VARIABLE):
        return _main(argv)
    try:
        code = _main(argv)
    except SystemExit as exc:   # argparse's usage errors (2) count as the run's outcome too
        if not isinstance(exc.code, int):
            raise
        code = exc.code
    return exitfile.hand_over(code)


def program() -> NoReturn:
    """The ``ctgrid`` executable (console script, ``python -m ctgrid``): :func:`main`, then
    :func:`~ctgrid.cli._exit.exit_now` (the interpreter's teardown skipped once torch is
    loaded: 0.5-1 s off every command that trains or evaluates, and off every MPI rank)."""
    from ._exit import exit_code, exit_now
    try:
        code = main()
    except SystemExit as exc:   # argparse: --help, --version, usage errors
        code = exit_code(exc.code)
    exit_now(code)


def _main(argv: Sequence[str] | None) -> int:
    from ..provenance import set_command
    argv = list(sys.argv[1:] if argv is None else argv)
    set_command(["ctgrid", *argv])
    parser = build_parser()
    passthrough: list[str] = []
    if argv[:1] == ["slurm"] and "--" in argv:   # `ctgrid slurm submit ... -- SBATCH ARGS`
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "sbatch_args"):
        args.sbatch_args = tuple(passthrough)
        args.argv_seen = [*argv[2:], *(["--", *passthrough] if passthrough else [])]
    if extra:  # KEY=VALUE overrides may follow options: `ctgrid run GRID --dry-run a.b=1`
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            parser.exit(2, f"ctgrid: error: {args.command}: unrecognized arguments: {' '.join(extra)} "
                           f"(see ctgrid {args.command} --help)\n")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, StoreError) as exc:
        print(f"ctgrid: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # `ctgrid run --dry-run | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("ctgrid: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # cannot write results: one line, not a traceback
        from .._atomic import io_message
        from ..parallel.signals import EXIT_IO
        print(f"ctgrid: error: {io_message(exc)}", file=sys.stderr)
        return EXIT_IO


if __name__ == "__main__":  # pragma: no cover
    program()
