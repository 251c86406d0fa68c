"""Grids of jobs: a YAML grid file -> :class:`Grid` (a fixed-order sequence of
:class:`JobConfig`); several grid points may share one canonical job."""
from __future__ import annotations

from .job import GROUPS, JobConfig
from .spec import DEFAULT_GRID, Grid, load_grid, parse_grid, resolve_grid_path, shipped_grids

__all__ = ["DEFAULT_GRID", "GROUPS", "Grid", "JobConfig", "load_grid", "parse_grid",
           "resolve_grid_path", "shipped_grids"]
