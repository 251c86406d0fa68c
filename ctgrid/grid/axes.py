"""The axes of a grid block: which values one ``group.key`` of a grid file takes.

A list is an axis and anything else one value; for list-typed fields (``data.domain``,
``evaluation.lambda_energy``, ...) the nesting depth of the field's annotation decides;
``{range: [start, stop, step]}`` is an integer axis. Format: ``docs/grids.md``.
"""
from __future__ import annotations

import typing
from functools import lru_cache
from typing import Any

from .._validate import unknown_key
from ..errors import ConfigError
from .job import GROUPS

#: A grid with more points than this is almost surely a typo. Expanding costs ~0.3 ms a point
#: (validated configs, canonical forms, job ids), so the largest allowed grid expands in ~8 s
#: and dry-runs in ~10 s on 2 cores; bigger studies are several grids (docs/grids.md).
MAX_POINTS = 20_000

Block = dict[str, tuple]  # "group.key" -> axis values (a fixed value is a 1-tuple)


def _depth(tp: Any) -> int:
    """How many list levels one value of a field with annotation ``tp`` has (0 for scalars)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        inner = [a for a in args if a is not Ellipsis]
        return 1 + max((_depth(a) for a in inner), default=0)
    if args and origin is not typing.Literal:
        return max(_depth(a) for a in args)  # Union / Optional
    return 0


@lru_cache(maxsize=None)
def _field_depths(group: str) -> dict[str, int]:
    hints = typing.get_type_hints(GROUPS[group])
    return {name: _depth(hints[name]) for name in hints}


@lru_cache(maxsize=None)
def _name_lists(group: str) -> frozenset[str]:
    """The fields that hold a list of names (``tuple[str, ...]``: ``data.categorical``,
    ``data.drop``): a flat list of strings there is one value (the columns), not an axis."""
    hints = typing.get_type_hints(GROUPS[group])
    return frozenset(name for name, tp in hints.items() if tp == tuple[str, ...])


def _nested(x: Any, k: int) -> bool:
    """``x`` is a scalar (k = 0) or a k-level list of scalars."""
    if k == 0:
        return not isinstance(x, (list, dict))
    return isinstance(x, list) and all(_nested(y, k - 1) for y in x)


def _is_one_value(v: Any, depth: int) -> bool:
    """``v`` looks like one complete value of a list-typed field of that depth."""
    return v is None or isinstance(v, (str, dict)) or (
        isinstance(v, list) and all(_nested(x, depth - 1) for x in v))


def _axis(value: Any, depth: int, where: str, names: bool = False) -> tuple:
    """The values of one grid key: a list is an axis, anything else one value.

    For list-typed fields (``depth >= 1``: ``evaluation.lambda_energy``, ``data.domain``,
    ``data.mutability``, ...) a list is an axis only when each element is itself a
    complete value (a list, mapping, string or null); ``[]`` is then the empty value.
    For a list of names (``names``: ``data.categorical: [purpose, home]``) a flat list of
    strings is one value; an axis of them is a list of lists (``[[purpose], [purpose, home]]``).
    """
    if depth == 0 and isinstance(value, dict) and "range" in value:
        return _range_axis(value, where)
    if not isinstance(value, list) or (names and all(isinstance(v, str) for v in value)):
        return (value,)
    if depth == 0 or (value and all(_is_one_value(v, depth) for v in value)):
        if not value:
            raise ConfigError(f"{where}: an axis needs at least one value, got []")
        seen: set[str] = set()
        for v in value:   # 1 and 1.0 are one value (either coerces to the other)
            key = repr(int(v)) if isinstance(v, float) and v.is_integer() else repr(v)
            if key in seen:
                raise ConfigError(f"{where}: the axis lists {v!r} twice")
            seen.add(key)
        return tuple(value)
    return (value,)


def _range_axis(value: dict, where: str) -> tuple:
    """``{range: [start, stop]}`` or ``{range: [start, stop, step]}``: the integer axis
    ``start, start + step, ...`` below ``stop`` (Python's ``range``; for ``training.seed`` or
    ``training.leave_out`` = "100 retrained models" without listing 100 numbers)."""
    bounds = value["range"]
    usage = "expected {range: [start, stop]} or {range: [start, stop, step]} with integers"
    if set(value) != {"range"} or not isinstance(bounds, list) or len(bounds) not in (2, 3) \
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"{where}: got {short(value)}; {usage}")
    if len(bounds) == 3 and bounds[2] == 0:
        raise ConfigError(f"{where}: got {short(value)}; the step must not be 0")
    axis = range(*bounds)
    if not axis:
        raise ConfigError(f"{where}: got {short(value)}; the range is empty ({usage})")
    count = (abs(bounds[1] - bounds[0]) + abs(axis.step) - 1) // abs(axis.step)   # len() overflows past 2**63
    if count > MAX_POINTS:
        raise ConfigError(f"{where}: got {short(value)}: {count} values; allowed: at most {MAX_POINTS}")
    return tuple(axis)


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_block(mapping: dict, where: str) -> Block:
    """Parse the groups of one mapping (the top level or a subgrid block)."""
    out: Block = {}
    for group, params in mapping.items():
        if group not in GROUPS or params is None:
            continue
        if not isinstance(params, dict):
            raise ConfigError(f"{where}{group}: expected a mapping of parameters, got {params!r}")
        depths, names = _field_depths(group), _name_lists(group)
        for key, value in params.items():
            if key not in depths:
                raise unknown_key(str(key), list(depths), f"{where}{group}")
            out[f"{group}.{key}"] = _axis(value, depths[key], f"{where}{group}.{key}", key in names)
    return out
