"""Reading grid YAML safely: YAML 1.2 floats (``1e-3``), duplicate keys refused, and a
bound on nesting depth and alias expansion checked before anything is built (a "billion
laughs" file is a few hundred bytes). Every problem is one :class:`ConfigError` line."""
from __future__ import annotations

import re
import typing
from typing import Any

import yaml

from ..errors import ConfigError


class Loader(yaml.SafeLoader):
    """Safe YAML that reads ``1e-3`` as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys from a `<<: *anchor` merge may be overridden
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


#: a grid nested deeper than this, or whose aliases expand to more nodes, is refused
#: before it is built (a "billion laughs" file is a few hundred bytes)
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 1_000_000


def check_node_graph(root: yaml.Node) -> None:
    """Depth and alias-expanded node count of a composed document, without expanding it
    (memoised per node: an alias is the same node object as its anchor)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if depth[key] > MAX_YAML_DEPTH:
                raise ConfigError(f"invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep")
            if size[key] > MAX_YAML_NODES:
                raise ConfigError(f"invalid YAML: its aliases expand to more than {MAX_YAML_NODES:,} "
                                  f"values (an alias bomb?)")
            continue
        if key in size:
            continue
        if key in open_:
            raise ConfigError("invalid YAML: an alias refers to a node that contains it (recursive)")
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)


def load_yaml(text: str) -> Any:
    try:
        loader = Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            check_node_graph(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except ConfigError:   # _check_node_graph's own message (ConfigError is a ValueError too)
        raise
    except RecursionError:
        raise ConfigError(f"invalid YAML: nested too deeply to parse (allowed: {MAX_YAML_DEPTH} "
                          f"levels)") from None
    except ValueError as exc:   # e.g. an integer of more than 4300 digits (Python's int limit)
        raise ConfigError(f"invalid YAML: {str(exc).splitlines()[0][:200]}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML{at}: {problem}") from None
