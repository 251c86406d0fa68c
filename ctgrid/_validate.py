"""Declarative validation for frozen config dataclasses.

Every config field is declared with :func:`param`, which records the allowed
range or choices as data. ``check(self, group)`` (called from ``__post_init__``)
coerces YAML-ish values (lists -> tuples, ints -> floats) and raises one
:class:`~ctgrid.errors.ConfigError` naming ``group.key``, the value and what is
allowed. :func:`build` turns a mapping into the dataclass and rejects unknown
keys with the closest valid name.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any, Callable, Mapping, TypeVar

from .errors import ConfigError

T = TypeVar("T")
V = TypeVar("V")


def param(default: Any, *, choices: tuple | None = None, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None,
          doc: str = "", only: tuple[str, ...] = (), since: str = "") -> Any:
    """A dataclass field with a default and its allowed values (checked by :func:`check`).

    ``only`` names the uses in which the field matters (e.g. the generators or loss terms
    that read it); :func:`reset_unused` resets it to its default everywhere else, which is
    how a job's canonical configuration (and so its id) ignores parameters it does not use.
    ``since``: the release that added the field; :func:`seed_dict` leaves it out while it
    holds its default, so the training seeds of existing jobs do not move.
    """
    meta = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc, "only": only,
            "since": since}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults")
    return dataclasses.field(default=default, metadata=meta)


def _range_text(meta: Mapping) -> str:
    parts = []
    if meta.get("gt") is not None:
        parts.append(f"> {meta['gt']}")
    if meta.get("ge") is not None:
        parts.append(f">= {meta['ge']}")
    if meta.get("lt") is not None:
        parts.append(f"< {meta['lt']}")
    if meta.get("le") is not None:
        parts.append(f"<= {meta['le']}")
    return " and ".join(parts)


def _type_name(tp: Any) -> str:
    """Human names: ``tuple[float, ...]`` -> ``a list of number``, ``None`` -> ``null``."""
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    return {float: "number", int: "integer", str: "string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp).replace("typing.", "")))


#: the largest integer a config may hold (int64: Parquet, numpy and torch)
MAX_INT = 2**63 - 1


def _short_int(value: int) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"


@functools.lru_cache(maxsize=None)
def _origin_args(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``typing.get_origin`` / ``get_args`` of an annotation, once per annotation (a grid of
    20,000 points coerces millions of values)."""
    return typing.get_origin(tp), typing.get_args(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise ConfigError."""
    origin, args = _origin_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        allowed = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{where}: got {value!r}; expected {allowed}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: got {value!r}; allowed: {', '.join(map(repr, args))}")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r}; expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: got {value!r}; expected a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: got {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{where}: got {value!r}; expected an integer")
        if not -MAX_INT <= value <= MAX_INT:   # Parquet, torch and numpy hold 64-bit integers
            raise ConfigError(f"{where}: got {_short_int(value)}; allowed: an integer in "
                              f"-{MAX_INT}..{MAX_INT}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: got {value!r}; expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: got {value!r}; expected a finite number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: got {value!r}; expected a string")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return build(tp, value, where)
        raise ConfigError(f"{where}: got {value!r}; expected a mapping")
    return value


def _check_meta(value: Any, meta: Mapping, where: str) -> None:
    choices = meta.get("choices")
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if item is None:
            continue
        if choices is not None and item not in choices:
            close = difflib.get_close_matches(str(item), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: got {item!r}; allowed: {', '.join(map(str, choices))}{hint}")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            ok = ((meta.get("gt") is None or item > meta["gt"])
                  and (meta.get("ge") is None or item >= meta["ge"])
                  and (meta.get("lt") is None or item < meta["lt"])
                  and (meta.get("le") is None or item <= meta["le"]))
            if not ok:
                raise ConfigError(f"{where}: got {item!r}; allowed: {_range_text(meta)}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, cached per class."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def check(obj: Any, group: str) -> None:
    """Coerce and validate every field of the frozen dataclass ``obj`` in place."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        where = f"{group}.{f.name}"
        value = _coerce(getattr(obj, f.name), hints[f.name], where)
        _check_meta(value, f.metadata, where)
        object.__setattr__(obj, f.name, value)


def reset_unused(cfg: T, used: set[str] | frozenset[str]) -> T:
    """``cfg`` with every field declared ``only`` for uses outside ``used`` reset to its default."""
    unused = {f.name: f.default for f in dataclasses.fields(cfg)  # type: ignore[arg-type]
              if f.metadata.get("only") and not set(f.metadata["only"]) & used}
    return dataclasses.replace(cfg, **unused) if unused else cfg  # type: ignore[type-var]


def unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    """The error for an unknown key, suggesting the closest valid name."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (valid: {', '.join(sorted(valid))})")


def build(cls: type[T], mapping: Mapping[str, Any] | None, group: str) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{group}: expected a mapping of key: value, got {mapping!r}")
    mapping = dict(mapping)
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]  # T is a dataclass
    for key in mapping:
        if key not in valid:
            raise unknown_key(str(key), valid, group)
    return cls(**mapping)


def memo(obj: Any, name: str, compute: Callable[[], V]) -> V:
    """``compute()`` once per (frozen, immutable) config instance, kept on the instance: grid
    expansion asks every point for its canonical form, job id and plain dict many times."""
    cache = obj.__dict__
    if name not in cache:
        cache[name] = compute()
    return cache[name]


def plain_dict(cfg: Any) -> dict[str, Any]:
    """:func:`to_dict` of a frozen config, computed once per instance (do not modify it)."""
    return memo(cfg, "_plain_dict", lambda: to_dict(cfg))


def seed_dict(cfg: Any) -> dict[str, Any]:
    """:func:`plain_dict` without the fields added after 0.2 (``param(since=...)``) that hold
    their default: what training seeds hash. (Job ids hash only non-default values anyway; the
    seeds of 0.2 hashed every field, so a new field must not enter them at its default.)"""
    def make() -> dict[str, Any]:
        later = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("since")
                 and getattr(cfg, f.name) == f.default}
        return {k: v for k, v in plain_dict(cfg).items() if k not in later}
    return memo(cfg, "_seed_dict", make)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain (YAML/JSON-friendly) dict of a config dataclass, tuples as lists."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    return plain(obj)
