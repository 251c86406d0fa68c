"""How constraint settings are written (mutability kinds, one-hot modes) and their
normalisation — the torch-free half of :mod:`ctgrid.constraints`, which the configs (and
so ``ctgrid expand`` / ``config`` / ``--help``) need without importing torch."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .errors import ConfigError

MUTABILITY_KINDS = ("both", "increase", "decrease", "none")
#: How a search treats one-hot groups: ``none`` as continuous features (the reference's
#: training searches); ``project`` the state is argmax-projected after every step (the
#: reference's evaluation, which reconstructs the encoding at every decode: a group moves
#: only when one step carries another category past the current one); ``step`` the model
#: sees the projected point at every step while the state stays continuous
#: (straight-through gradient, so small steps accumulate); ``final`` projected once at the end.
CATEGORICAL_MODES = ("none", "project", "step", "final")


def mutability_pairs(value: Any, where: str) -> Any:
    """A mutability setting as written in YAML or code -> ``((feature, kind), ...)``.

    A mapping ``{age: none}`` or a list of ``[feature, kind]`` pairs is normalised and every
    kind checked; anything else (``None``, ``"paper"``, a value of the wrong type) is returned
    as is for the config's type check. ``where`` names the key in error messages.
    """
    if isinstance(value, Mapping):
        value = tuple((str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        if not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in value):
            raise ConfigError(f"{where}: got {value!r}; allowed: a mapping feature -> kind "
                              "(e.g. {age: none})")
        value = tuple(tuple(x) for x in value)
    if isinstance(value, tuple):
        for item in value:
            if isinstance(item, tuple) and len(item) == 2 and item[1] not in MUTABILITY_KINDS:
                raise ConfigError(f"{where}[{item[0]!r}]: got {item[1]!r}; "
                                  f"allowed: {', '.join(MUTABILITY_KINDS)}")
    return value


def resolve_mutability(spec: Mapping[Any, str], names: Sequence[str],
                       groups: Sequence[Sequence[int]], where: str) -> dict[int, str]:
    """``{feature index: kind}`` for a mutability mapping by feature name or 0-based index.

    A one-hot group is named by its variable (``sex`` for ``sex=Male``, ``sex=Female``) or by
    any of its columns, and the kind applies to the whole group: ``both`` or ``none`` (a
    category has no direction). ConfigError names ``where[key]`` for an unknown name, an index
    out of range or a direction on a category. Torch-free: ``ctgrid expand`` and the run's
    preflight check the grid's names with the data's feature names before anything runs.
    """
    mutability_pairs(tuple((k, v) for k, v in spec.items()), where)
    names = list(names)
    out: dict[int, str] = {}
    for key, kind in spec.items():
        group = _group_named(key, names, groups)
        if group is None:
            out[_feature_index(key, names, where)] = kind
            continue
        if kind not in ("both", "none"):
            raise ConfigError(f"{where}[{key!r}]: got {kind!r} for a categorical "
                              "variable (one-hot group); allowed: both, none")
        out.update(dict.fromkeys(group, kind))
    return out


def _group_named(key: Any, names: list[str], groups: Sequence[Sequence[int]]) -> Sequence[int] | None:
    """The one-hot group that ``key`` names (its variable or one of its columns), if any."""
    idx = None
    if isinstance(key, int) or str(key).lstrip("-").isdigit():
        idx = int(key)
    elif key in names:
        idx = names.index(key)
    for g in groups:
        if idx is not None and idx in g:
            return g
        if idx is None and all(names[i].startswith(f"{key}=") for i in g):
            return g
    return None


def _feature_index(key: Any, names: list[str], where: str) -> int:
    if isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit()):
        idx = int(key)
        if not 0 <= idx < len(names):
            raise ConfigError(f"{where}: feature index {idx} out of range; allowed: 0..{len(names) - 1}")
        return idx
    if key in names:
        return names.index(key)
    import difflib
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{where}: no feature named {key!r}{hint}")
