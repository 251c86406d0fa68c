"""The modules of ``ctgrid`` import each other without cycles, so each module's imports point
down the layer order (data -> models -> generators -> training -> evaluation -> grid ->
parallel -> store -> aggregate -> cli). Every import counts, read with ``ast`` from the source:
module level, inside functions (lazy) and under ``if TYPE_CHECKING:`` alike."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ctgrid"


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, str]]:
    """``{dotted module name: (file, the package its relative imports start from)}``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = ".".join(parts)
        else:
            package = ".".join(parts[:-1])
        out[".".join(parts)] = (path, package)
    return out


def _owner(name: str, known: dict) -> str:
    """The module that defines ``name`` (``a.b.c`` -> ``a.b`` when ``c`` is an attribute)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(path: Path, package: str, known: dict) -> set[str]:
    """The ``ctgrid`` modules that ``path`` imports anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_owner(a.name, known) for a in node.names if a.name.split(".")[0] == "ctgrid"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ctgrid":
                continue
            for alias in node.names:   # ``from . import x``: the submodule x, else the package
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else _owner(target, known))
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports_of(path, pkg, known) - {name} for name, (path, pkg) in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_cycles_through_lazy_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "ctgrid"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from ..c import X\n")
    (pkg / "c.py").write_text("import ctgrid.a\nX = 1\n")
    (pkg / "d.py").write_text("from ctgrid.c import X\n")
    graph = import_graph(pkg)
    assert graph["ctgrid.a"] == {"ctgrid.sub.b"} and graph["ctgrid.d"] == {"ctgrid.c"}
    assert cycles(graph) == [["ctgrid.a", "ctgrid.c", "ctgrid.sub.b"]]


def test_ctgrid_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles inside ctgrid: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("module", ["ctgrid.grid.spec", "ctgrid.store", "ctgrid.parallel.scheduler"])
def test_modules_that_once_formed_cycles_are_still_analysed(module):
    """The modules of the three cycles issue 22 resolved import ctgrid modules the graph sees
    (a parser that sees nothing would pass the cycle test trivially)."""
    assert import_graph()[module]
