"""YAML loading that remembers where every key came from.

Inventory errors must name `file:line` of the offending key, so the document is composed into
nodes (which carry marks) and turned into plain Python data by hand, recording the line of every
mapping key and sequence item under its path.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import yaml

Path = tuple[str | int, ...]
# libyaml's parser when available: same nodes and marks, several times faster on big inventories.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Located:
    data: object
    lines: dict[Path, int] = field(default_factory=dict)
    problems: list[tuple[Path, int, str]] = field(default_factory=list)


def load_located(text: str) -> Located:
    """Parse one YAML document; raise yaml.YAMLError (with its own mark) on syntax errors."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        out = Located(None)
        out.data = {} if root is None else _walk(loader, root, (), out)
        out.lines.setdefault((), 1)
        return out
    finally:
        loader.dispose()


def _walk(loader, node: yaml.Node, path: Path, out: Located) -> object:
    out.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            sub = path + (key,)
            line = key_node.start_mark.line + 1
            if key in result:
                out.problems.append((sub, line, f"duplicate key '{key}'"))
            out.lines[sub] = line
            result[key] = _walk(loader, value_node, sub, out)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            out.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_walk(loader, item, path + (i,), out))
        return items
    return loader.construct_object(node, deep=True)
