"""The ``GRID [KEY=VALUE ...]`` arguments of ``run`` and ``expand`` (overrides:
:mod:`ctgrid.grid.overrides`)."""
from __future__ import annotations

import argparse
from pathlib import Path

OVERRIDE_HELP = ("override a grid key for every point: group.key=VALUE, VALUE read as YAML "
                 "(a list is an axis), e.g. training.nepochs=5 'training.lambda_reg=[0.1,0.5]'")


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)


def grid_and_overrides(args: argparse.Namespace, default: str | None = None) -> tuple[str, tuple[str, ...]]:
    """``(grid, overrides)``; with an optional GRID, a first argument ``key=value`` that is
    not a file is an override of the default grid (``ctgrid run training.nepochs=5``)."""
    grid, overrides = str(args.grid), tuple(getattr(args, "overrides", None) or ())
    if default is not None and "=" in grid and not Path(grid).exists():
        return default, (grid, *overrides)
    return grid, overrides
