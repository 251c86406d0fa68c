"""A grid's description with ``{group.key}`` placeholders filled in from its points.

``description: CT loss weights for each generator on {data.name}`` reads "... on lin_sep,
over, circles, moons" for the shipped grid and "... on moons" under the override
``data.name=moons``, so a description never names datasets (or values) the grid no
longer has. A placeholder is replaced by the distinct values of that parameter among
the grid's points, in order of first appearance, joined by ", ".
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from .._validate import unknown_key
from ..errors import ConfigError
from .job import GROUPS

_FIELD = re.compile(r"\{([A-Za-z_]+)\.([A-Za-z_]+)\}")


def _text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def render_description(template: str, points: Sequence[Any]) -> str:
    """``template`` with each ``{group.key}`` replaced by the points' distinct values of it."""
    def fill(m: re.Match) -> str:
        group, key = m.group(1), m.group(2)
        if group not in GROUPS:
            raise unknown_key(group, list(GROUPS), f"description: placeholder {m.group(0)}")
        fields = [f.name for f in dataclasses.fields(GROUPS[group])]
        if key not in fields:
            raise unknown_key(key, fields, f"description: placeholder {m.group(0)}: {group}")
        values = dict.fromkeys(_text(getattr(getattr(p, group), key)) for p in points)
        return ", ".join(values)
    if not isinstance(template, str):
        raise ConfigError(f"description: got {template!r}; expected a string")
    return _FIELD.sub(fill, template)
