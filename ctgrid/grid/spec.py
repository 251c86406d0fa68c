"""Grid files (YAML) -> :class:`Grid`, a fixed-order sequence of :class:`JobConfig`.

A grid file has the groups of a job (``data``, ``model``, ``generator``,
``training``, ``evaluation``); in a group a list is an *axis* and anything else a
fixed value, absent keys keep their defaults. ``repeats: N`` adds the axis
``training.seed = 0..N-1``; ``subgrids`` is a list of blocks of parameters that
only make sense together, and the grid is the union over blocks of base x block
(sklearn ``ParameterGrid`` with a list of dicts). The format is documented in
``docs/grids.md``.

Everything is validated when the file is read, before any work: unknown keys
(with the closest valid name), wrong types, out-of-range values and empty axes
raise one-line :class:`~ctgrid.errors.ConfigError`s. The points come in a fixed
order: blocks in file order, within a block the product over the sorted
``group.key`` names (last key fastest), values in file order.
"""
from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, overload

from .._validate import build, plain_dict, unknown_key
from ..errors import ConfigError
from .axes import MAX_POINTS, Block, parse_block
from .describe import render_description
from .job import GROUPS, JobConfig
from .yamlfile import load_yaml

__all__ = ["ANY", "DEFAULT_GRID", "MAX_POINTS", "PACKAGED_GRIDS", "TOP_KEYS", "Grid", "load_grid",
           "parse_grid", "resolve_grid_path", "shipped_grids"]

TOP_KEYS = ("name", "description", "repeats", "subgrids", *GROUPS)
#: The grid ``ctgrid run`` uses when none is given.
DEFAULT_GRID = "quickstart"
#: Grids shipped inside the package (copies of the repository's ``grids/*.yaml``).
PACKAGED_GRIDS = Path(__file__).resolve().parent.parent / "grids"
#: Marks a job-table cell whose grid points disagree (the parameter does not affect the job).
ANY = "*"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


# ----------------------------------------------------------------------------- expansion

def _n_points(block: Block) -> int:
    return math.prod(len(v) for v in block.values())


def _group_config(group: str, params: dict[str, Any], cache: dict, where: str) -> Any:
    key = (group, repr(sorted(params.items())))
    if key not in cache:
        try:
            cache[key] = build(GROUPS[group], params, group)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
        except TypeError as exc:  # a malformed structure a config's __post_init__ trips on
            raise ConfigError(f"{where}{group}: invalid value in {params!r} ({exc})") from None
    return cache[key]


def _expand(blocks: list[tuple[str, Block]]) -> tuple[JobConfig, ...]:
    cache: dict = {}
    points = []
    for where, block in blocks:
        keys = sorted(block)
        for combo in itertools.product(*(block[k] for k in keys)):
            params: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
            for k, v in zip(keys, combo):
                group, name = k.split(".", 1)
                params[group][name] = v
            points.append(JobConfig(**{g: _group_config(g, p, cache, where) for g, p in params.items()}))
    return tuple(points)


def _grid_meta(raw: dict, default_name: str) -> tuple[str, str, int | None]:
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        origin = "" if "name" in raw else " (from the file name; set `name:` in the file)"
        raise ConfigError(f"name: got {name!r}{origin}; allowed: letters, digits, '_', '.', '-' "
                          f"(it names the results directory)")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"description: got {description!r}; expected a string")
    repeats = raw.get("repeats")
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise ConfigError(f"repeats: got {repeats!r}; allowed: an integer >= 1")
    return name, description, repeats


def _subgrids(raw: dict, base: Block) -> list[tuple[str, Block]]:
    if "subgrids" not in raw:
        return [("", base)]
    subgrids = raw["subgrids"]
    if not isinstance(subgrids, list) or not subgrids:
        raise ConfigError(f"subgrids: got {subgrids!r}; expected a non-empty list of blocks "
                          f"(each a mapping of groups)")
    blocks = []
    for i, sub in enumerate(subgrids):
        where = f"subgrids[{i}]: "
        sub = {} if sub is None else sub
        if not isinstance(sub, dict):
            raise ConfigError(f"{where}expected a mapping of groups, got {sub!r}")
        for key in sub:
            if key not in GROUPS:
                raise unknown_key(str(key), list(GROUPS), f"subgrids[{i}]")
        blocks.append((where, {**base, **parse_block(sub, where)}))  # a block's key replaces the base's
    return blocks


def _parse(raw: Any, default_name: str) -> tuple[str, str, tuple[JobConfig, ...]]:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping with keys {', '.join(TOP_KEYS)}; got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key(str(key), list(TOP_KEYS), "top level")
    name, description, repeats = _grid_meta(raw, default_name)
    blocks = _subgrids(raw, parse_block(raw, ""))
    if repeats is not None:
        for where, block in blocks:
            if "training.seed" in block:
                raise ConfigError(f"{where}training.seed: repeats: {repeats} already sets "
                                  f"training.seed = 0..{repeats - 1}; give one or the other")
            block["training.seed"] = tuple(range(repeats))
    total = sum(_n_points(b) for _, b in blocks)
    if total > MAX_POINTS:
        raise ConfigError(f"the grid has {total} points; allowed: at most {MAX_POINTS} "
                          f"(is a list meant as one value?)")
    return name, description, _expand(blocks)


# ----------------------------------------------------------------------------- Grid

def _flat(job: JobConfig) -> dict[str, Any]:
    return {f"{g}.{k}": v for g in GROUPS for k, v in plain_dict(getattr(job, g)).items()}


def _cell(value: Any) -> Any:
    """A table cell: scalars as they are, lists as JSON text (hashable, Parquet-friendly)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _same(values: list[Any]) -> bool:
    """All equal, and of one type (``1`` and ``1.0`` or ``True`` differ, as in JSON)."""
    first = values[0]
    kind = type(first)
    if kind in (list, dict):
        text = json.dumps(first, sort_keys=True)
        return all(json.dumps(v, sort_keys=True) == text for v in values[1:])
    return all(v == first and type(v) is kind for v in values[1:])


def _frame(rows: list[dict[str, Any]], columns: list[str], int_column: str) -> Any:
    """A DataFrame of Python objects (keeps None, ints and lists as they are: JSON-able)."""
    import pandas as pd
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    return frame.astype({int_column: "int64"})


class Grid(Sequence):
    """The points of a grid file: ``len(grid)``, ``grid[i] -> JobConfig``, fixed order.

    Several points can map to one job (the vanilla points of a grid differ only in
    CT-only parameters): ``grid.job_ids[i]`` is point ``i``'s job, ``grid.jobs()``
    the distinct canonical jobs to run.
    """

    def __init__(self, name: str, points: Sequence[JobConfig], *, description: str = "",
                 source_text: str = "", path: Path | None = None):
        self.name = name
        self.description = description
        self.source_text = source_text
        self.path = path
        self._points = tuple(points)

    def __len__(self) -> int:
        return len(self._points)

    @overload
    def __getitem__(self, index: int) -> JobConfig: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[JobConfig, ...]: ...

    def __getitem__(self, index: int | slice) -> JobConfig | tuple[JobConfig, ...]:
        return self._points[index]

    def __iter__(self) -> Iterator[JobConfig]:
        return iter(self._points)

    def __repr__(self) -> str:
        return f"Grid({self.name!r}, {len(self)} points, {len(self.jobs())} jobs)"

    @cached_property
    def job_ids(self) -> tuple[str, ...]:
        """The job id of every point, in point order."""
        return tuple(p.job_id for p in self._points)

    def jobs(self) -> dict[str, JobConfig]:
        """The distinct canonical jobs, by job id, in the order first seen."""
        return dict(self._jobs)

    @cached_property
    def _jobs(self) -> dict[str, JobConfig]:
        out: dict[str, JobConfig] = {}
        for jid, point in zip(self.job_ids, self._points):
            if jid not in out:
                out[jid] = point.canonical()
        return out

    @cached_property
    def varied(self) -> tuple[str, ...]:
        """The ``group.key`` parameters that differ between points (declaration order)."""
        if not self._points:
            return ()
        flats = self._flats
        return tuple(k for k in flats[0] if not _same([f[k] for f in flats]))

    @cached_property
    def _flats(self) -> list[dict[str, Any]]:
        return [_flat(p) for p in self._points]

    def point_table(self, *, all_parameters: bool = False) -> "Any":
        """A pandas DataFrame: ``point``, ``job_id`` and the varied parameters (every
        parameter, as the point sets it, with ``all_parameters``), one row per point; list
        values (``evaluation.lambda_energy``, ``data.mutability``...) as JSON text."""
        keys = list(self._flats[0]) if all_parameters and self._points else list(self.varied)
        rows = self.point_rows(keys)
        if all_parameters:
            for row, point in zip(rows, self._points):
                row["name"] = point.name
            keys = ["name", *keys]
        return _frame(rows, ["point", "job_id", *keys], "point")

    def job_table(self) -> "Any":
        """A pandas DataFrame, one row per distinct job: ``job_id``, ``name``, ``points``
        (how many grid points map to it) and the varied parameters: the job's value, or
        ``"*"`` where its points have other values (a parameter the job does not use)."""
        return _frame(self.job_rows(), ["job_id", "name", "points", *self.varied], "points")

    def point_rows(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The rows of :meth:`point_table` as dicts (no pandas); ``keys``: the parameters
        (default: the varied ones)."""
        keys = self.varied if keys is None else keys
        return [{"point": i, "job_id": jid, **{k: _cell(f[k]) for k in keys}}
                for i, (jid, f) in enumerate(zip(self.job_ids, self._flats))]

    def job_rows(self) -> list[dict[str, Any]]:
        """The rows of :meth:`job_table` as dicts (no pandas)."""
        members: dict[str, list[int]] = {}
        for i, jid in enumerate(self.job_ids):
            members.setdefault(jid, []).append(i)
        rows = []
        for jid, idx in members.items():
            canon = _flat(self._points[idx[0]].canonical())
            row: dict[str, Any] = {"job_id": jid, "name": self._points[idx[0]].name, "points": len(idx)}
            for k in self.varied:
                row[k] = _cell(canon[k]) if _same([canon[k]] + [self._flats[i][k] for i in idx]) else ANY
            rows.append(row)
        return rows


# ----------------------------------------------------------------------------- loading

def parse_grid(text: str, name: str = "grid", *, source: str | None = None,
               path: Path | None = None) -> Grid:
    """Parse and validate grid YAML ``text``; ``name`` is the grid name unless the text
    sets one. Errors are one-line ConfigErrors prefixed with ``source`` (default ``name``)."""
    try:
        grid_name, description, points = _parse(load_yaml(text), name)
        description = render_description(description, points)
    except ConfigError as exc:
        raise ConfigError(f"{source or name}: {exc}") from None
    return Grid(grid_name, points, description=description, source_text=text, path=path)


def shipped_grids() -> list[str]:
    """Names of the grids packaged with ctgrid (``ctgrid run NAME`` works anywhere)."""
    return sorted(p.stem for p in PACKAGED_GRIDS.glob("*.yaml"))


def resolve_grid_path(ref: str | os.PathLike) -> Path:
    """``ref`` if it is a file; else a bare name (``quickstart`` or ``quickstart.yaml``)
    of a shipped grid; else a ConfigError."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"grid {str(ref)!r}: not a file")
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    shipped = shipped_grids()
    if len(path.parts) == 1 and stem in shipped:
        return PACKAGED_GRIDS / f"{stem}.yaml"
    close = difflib.get_close_matches(stem, shipped, n=1) if len(path.parts) == 1 else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"grid {str(ref)!r} not found: no such file and no shipped grid of that "
                      f"name{hint} (shipped: {', '.join(shipped)})")


def load_grid(ref: str | os.PathLike, overrides: Sequence[str] = ()) -> Grid:
    """Read and validate a grid file (a path, or the name of a shipped grid), with
    command-line ``overrides`` (``group.key=VALUE``; :mod:`ctgrid.grid.overrides`) applied."""
    path = resolve_grid_path(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"grid {str(ref)!r}: cannot read ({exc})") from None
    if overrides:
        from .overrides import apply_overrides, overridden_text
        try:
            raw = load_yaml(text)
        except ConfigError as exc:
            raise ConfigError(f"{ref}: {exc}") from None
        text = overridden_text(str(ref), apply_overrides(raw, overrides), overrides)
        return parse_grid(text, path.stem, source=f"{ref} (with overrides)", path=path)
    return parse_grid(text, path.stem, source=str(ref), path=path)
