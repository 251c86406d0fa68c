"""How constraint settings are written (mutability kinds, one-hot modes) and their
normalisation — the torch-free half of :mod:`ctgrid.constraints`, which the configs (and
so ``ctgrid expand`` / ``config`` / ``--help``) need without importing torch."""
from __future__ import annotations

from typing import Any, Mapping

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
