"""``ctgrid expand GRID``: validate a grid and show its points and distinct jobs.

Runs nothing and writes nothing. Prints ``NAME: P grid points -> J jobs`` and the
job table (job id, name, how many points map to it, the varied parameters; ``*``
where a job's points differ in a parameter the job does not use), or with
``--points`` one row per grid point.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..grid.spec import load_grid, shipped_grids


def add_expand_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "expand", help="list a grid's points and distinct jobs (runs nothing)",
        description="Validate a grid and print its number of points, its distinct jobs after "
                    "de-duplication and the job table. Runs nothing and writes nothing.")
    parser.add_argument("grid", help=f"grid file, or a shipped grid's name ({', '.join(shipped_grids())})")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="output format (default: table); csv prints the summary line on stderr")
    parser.add_argument("--points", action="store_true",
                        help="one row per grid point instead of one per distinct job")
    return parser


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid)
    n_jobs = len(grid.jobs())
    summary = f"{grid.name}: {_plural(len(grid), 'grid point')} -> {_plural(n_jobs, 'job')}"
    table = grid.point_table() if args.points else grid.job_table()
    try:
        if args.format == "json":
            doc = {"name": grid.name, "description": grid.description, "points": len(grid),
                   "jobs": n_jobs, "rows": table.to_dict(orient="records")}
            print(json.dumps(doc, indent=1))
        elif args.format == "csv":
            print(summary, file=sys.stderr)
            sys.stdout.write(table.to_csv(index=False))
        else:
            print(summary)
            print(table.to_string(index=False))
        sys.stdout.flush()
    except BrokenPipeError:  # `ctgrid expand ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
