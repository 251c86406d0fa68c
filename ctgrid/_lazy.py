"""Lazy package exports (PEP 562): a package's public names are imported from their
submodules on first use, so that importing a config (``ctgrid.evaluation.config``) or
running ``ctgrid --help`` does not import torch."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose name ``n`` lives in ``exports[n]``
    (a submodule, relative: ``".loop"``)."""
    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)
    return __getattr__, __dir__
