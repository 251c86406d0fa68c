"""``ctgrid config GRID [KEY=VALUE ...] [--job ID]``: every resolved setting, with its default.

With ``--job`` (a job id or a unique prefix; needless when the grid has one job) it prints
that job's canonical configuration as YAML — usable as ``ctgrid train --config`` — with
``# default: ...`` beside each value that differs from its default. Without, every field
of the grid with the values its jobs take (a list where they differ). Runs and writes
nothing; never imports torch.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from typing import Any

from ._grid_args import add_overrides, grid_and_overrides


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("config", help="print every resolved setting of a grid or one of its jobs",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("grid", metavar="GRID", help="grid file, or the name of a shipped grid")
    add_overrides(p)
    p.add_argument("--job", metavar="ID", help="one job: its id, or a unique prefix of it")
    return p


def _text(value: Any) -> str:
    """``value`` as inline YAML (``moons``, ``0.1``, ``[0.5, 5.0]``, ``null``)."""
    import yaml
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _lines(configs: list[Any]) -> list[str]:
    """``group: / key: value  # default: d`` for configs of one group (several: their values)."""
    out = []
    for f in fields(configs[0]):
        default = getattr(type(configs[0])(), f.name)
        values: list[Any] = []
        for c in configs:
            v = getattr(c, f.name)
            if v not in values:
                values.append(v)
        shown = values[0] if len(values) == 1 else values

        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, tuple) else v
        note = "" if values == [default] else f"  # default: {_text(plain(default))}"
        out.append(f"  {f.name}: {_text(plain(shown))}{note}")
    return out


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..grid import load_grid
    from ..grid.job import GROUPS
    grid = load_grid(*grid_and_overrides(args))
    jobs = grid.jobs()
    if args.job is not None and not args.job.strip():
        raise ConfigError("--job: got an empty id; allowed: a job id or a unique prefix of one "
                          "(ctgrid expand lists them)")
    if args.job or len(jobs) == 1:
        ids = [j for j in jobs if j.startswith(args.job or "")]
        if len(ids) != 1:
            what = "no job" if not ids else f"{len(ids)} jobs ({', '.join(sorted(ids)[:5])}...)"
            raise ConfigError(f"--job: {args.job!r} matches {what} of grid {grid.name} (ctgrid expand "
                              f"{args.grid} lists them)")
        job = jobs[ids[0]]
        print(f"# grid {grid.name}, job {ids[0]} ({job.name}), training seed {job.seed}")
        selected = [job]
    else:
        print(f"# grid {grid.name}: {len(jobs)} jobs; a list where their values differ (a job shows the "
              f"default for a parameter it does not use)")
        selected = list(jobs.values())
    try:
        for group in GROUPS:
            print(f"{group}:")
            print("\n".join(_lines([getattr(j, group) for j in selected])))
        sys.stdout.flush()
    except BrokenPipeError:  # `ctgrid config ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
