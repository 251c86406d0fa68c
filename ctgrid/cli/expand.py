"""``ctgrid expand GRID``: validate a grid and show its points and distinct jobs.

Runs nothing and writes nothing. Prints ``NAME: P grid points -> J jobs`` and the
job table (job id, name, how many points map to it, the varied parameters; ``*``
where a job's points differ in a parameter the job does not use), or with
``--points`` one row per grid point.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any

from ..grid.spec import load_grid, shipped_grids
from ._grid_args import add_overrides, grid_and_overrides


def add_expand_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "expand", help="list a grid's points and distinct jobs (runs nothing)",
        description="Validate a grid and print its number of points, its distinct jobs after "
                    "de-duplication and the job table. Runs nothing and writes nothing.")
    parser.add_argument("grid", help=f"grid file, or a shipped grid's name ({', '.join(shipped_grids())})")
    add_overrides(parser)
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="output format (default: table); csv prints the summary line on stderr")
    parser.add_argument("--data-dir", default=None,
                        help="data directory (default: $CTGRID_DATA); read only to check feature names "
                             "that data.mutability / evaluation.mutability give")
    parser.add_argument("--points", action="store_true",
                        help="one row per grid point instead of one per distinct job")
    return parser


def _text_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """Right-aligned columns, as pandas' ``to_string(index=False)`` (without importing pandas)."""
    def text(v: Any) -> str:
        return "None" if v is None else str(v)
    cells = [[text(r[c]) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = [" ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += [" ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    grid = load_grid(*grid_and_overrides(args))
    from ..grid.checks import check_features, check_sizes
    check_sizes(grid.jobs())
    check_features(grid.jobs(), getattr(args, "data_dir", None))   # reads data only where features are named
    n_jobs = len(grid.jobs())
    summary = f"{grid.name}: {_plural(len(grid), 'grid point')} -> {_plural(n_jobs, 'job')}"
    rows = grid.point_rows() if args.points else grid.job_rows()
    columns = ["point", "job_id"] if args.points else ["job_id", "name", "points"]
    columns += list(grid.varied)
    try:
        if args.format == "json":
            doc = {"name": grid.name, "description": grid.description, "points": len(grid),
                   "jobs": n_jobs, "rows": rows}
            print(json.dumps(doc, indent=1))
        elif args.format == "csv":
            print(summary, file=sys.stderr)
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([["" if r[c] is None else r[c] for c in columns] for r in rows])
        else:
            print(summary)
            print(_text_table(columns, rows))
        sys.stdout.flush()
    except BrokenPipeError:  # `ctgrid expand ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
