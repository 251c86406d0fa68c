"""Command-line overrides of a grid file: ``group.key=VALUE`` (Hydra-style).

``ctgrid run GRID training.nepochs=5 'training.lambda_reg=[0.1,0.5]' data.name=circles``:
``VALUE`` is read as YAML, so a list makes an axis exactly as in the file (and a list-valued
parameter takes ``[[...], [...]]`` for an axis; docs/grids.md). An override replaces the key
at the top level *and* in every ``subgrids`` block, so it holds for every point of the grid.
Top-level keys work too (``name=mygrid``, ``repeats=3``). The grid with its overrides is
recorded as YAML text (header: the file and the overrides), which is what the results
directory stores as ``grid.yaml`` and what a later run compares against.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import yaml

from .._validate import unknown_key
from ..errors import ConfigError
from .job import GROUPS
from .yamlfile import load_yaml

META_KEYS = ("name", "description", "repeats")


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. training.nepochs=5 or "
                          f"'training.lambda_reg=[0.1,0.5]'")
    key, value = item.split("=", 1)
    return key.strip(), value


def _value(item: str, text: str, load: Any) -> Any:
    try:
        return load(text) if text.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"override {item!r}: {exc}") from None


def apply_overrides(raw: Any, overrides: Sequence[str], *, meta: bool = True) -> dict:
    """``raw`` (a parsed grid file) with each ``KEY=VALUE`` of ``overrides`` applied.

    Values are read by the grid's YAML loader. Unknown groups and keys raise a one-line
    ConfigError naming the override and the closest valid key; ``meta=False`` (one job,
    ``ctgrid train``) allows only ``group.key``."""
    out: dict = dict(raw or {}) if isinstance(raw, dict) else {}
    if raw is not None and not isinstance(raw, dict):
        return raw  # the grid parser reports the malformed file
    for item in overrides:
        key, text = _split(item)
        value = _value(item, text, load_yaml)
        if key in META_KEYS and meta:
            out[key] = value
            continue
        group, _, name = key.partition(".")
        if group not in GROUPS:
            raise unknown_key(group, [*GROUPS, *(META_KEYS if meta else ())], f"override {item!r}")
        fields = [f.name for f in dataclasses.fields(GROUPS[group])]
        if not name or name not in fields:
            raise unknown_key(name, fields, f"override {item!r}: {group}")
        out[group] = {**(out.get(group) or {}), name: value}
        if isinstance(out.get("subgrids"), list):
            out["subgrids"] = [_without(block, group, name) for block in out["subgrids"]]
    return out


def _without(block: Any, group: str, name: str) -> Any:
    """A subgrid block without ``group.name`` (so the top-level override applies to it)."""
    if not isinstance(block, dict) or not isinstance(block.get(group), dict) or name not in block[group]:
        return block
    params = {k: v for k, v in block[group].items() if k != name}
    return {**block, group: params}


def overridden_text(source: str, raw: dict, overrides: Sequence[str]) -> str:
    """The YAML text of a grid with overrides, with a header saying where it came from."""
    header = f"# {source} with overrides: {' '.join(overrides)}\n"
    return header + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=100)
