"""YAML loading that remembers where every key came from, and that a hostile file cannot exhaust.

Inventory errors must name `file:line` of the offending key, so the document is composed into
nodes (which carry marks) and turned into plain Python data by hand, recording the line of every
mapping key and sequence item under its path.

Every amount of work is bounded before it is done (docs/limits.md): nesting depth (libyaml's
composer recurses in C and crashes the process on ~10^5 levels, so depth is measured on the event
stream first), alias uses and the number of values aliases expand to (a few hundred bytes of
`&a [*a, *a, ...]` otherwise expand to gigabytes), the digits of an integer. Merge keys
(`<<: *base`) are applied as YAML defines them: the mapping's own keys win, then earlier merged
mappings over later ones. A scalar that cannot be read (`!!int x`) is a problem at its path, not a
traceback.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import excerpt

Path = tuple[str | int, ...]
# libyaml's parser when available: same nodes and marks, several times faster on big inventories.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_DEPTH = 32            # nested mappings/sequences; real inventories use < 8
MAX_ALIASES = 10_000      # `*name` uses in one file
MAX_VALUES = 200_000      # values after alias expansion (keys, items and scalars)
MAX_INT_DIGITS = 20       # beyond that the value cannot be in range anyway
INT_RANGE = 2 ** 63       # integers must be in [-2^63, 2^63)

_TAG = "tag:yaml.org,2002:"
_SCALARS = {f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")}


class LimitError(Exception):
    """A bound of the loader was hit; `line` is where (1-based) when known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class Located:
    data: object
    lines: dict[Path, int] = field(default_factory=dict)
    problems: list[tuple[Path, int, str]] = field(default_factory=list)
    # How the file spelled each bool/int/float scalar (`True`, `0x10`, `1.50`), by path.
    raw: dict[Path, str] = field(default_factory=dict)


def load_located(text: str) -> Located:
    """Parse one YAML document; raise yaml.YAMLError (with its own mark) on syntax errors and
    LimitError when a bound is exceeded."""
    anchors = _scan(text)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        out = Located(None)
        out.data = {} if root is None else _Walker(loader, out, anchors).walk(root, ())
        out.lines.setdefault((), 1)
        return out
    finally:
        loader.dispose()



def _line(mark: Any) -> int:  # yaml.Mark, from the C or the Python parser
    """The 1-based line of a mark (0 when the parser gave none)."""
    return mark.line + 1 if mark is not None else 0


def _scan(text: str) -> dict[tuple[int, int], str]:
    """One pass over the events: depth and alias count bounded; anchor names by mark."""
    loader = _Loader(text)
    anchors: dict[tuple[int, int], str] = {}
    uses: Counter[str] = Counter()
    first_use: dict[str, int] = {}
    depth = 0
    try:
        while loader.check_event():
            ev = loader.get_event()
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise LimitError(f"nesting deeper than {MAX_DEPTH} levels", _line(ev.start_mark))
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(ev, yaml.AliasEvent) and ev.anchor is not None:
                uses[ev.anchor] += 1
                first_use.setdefault(ev.anchor, _line(ev.start_mark))
                if sum(uses.values()) > MAX_ALIASES:
                    name, n = uses.most_common(1)[0]
                    raise LimitError(f"more than {MAX_ALIASES} alias uses (anchor &{name} is used "
                                     f"{n} times)", first_use[name])
            anchor = getattr(ev, "anchor", None)
            if anchor is not None and not isinstance(ev, yaml.AliasEvent):
                anchors[(ev.start_mark.line, ev.start_mark.column)] = anchor
    finally:
        loader.dispose()
    return anchors


class _Walker:
    def __init__(self, loader, out: Located, anchors: dict[tuple[int, int], str]):
        self.loader = loader
        self.out = out
        self.anchors = anchors
        self.count = 0
        self.seen: set[int] = set()     # nodes walked once: a second visit is an alias use
        self.active: set[int] = set()   # nodes on the current path: a cycle is a recursive alias
        self.expanding: list[yaml.Node] = []

    def _anchor(self, node: yaml.Node) -> str:
        name = self.anchors.get((node.start_mark.line, node.start_mark.column), "?")
        return f"&{name}"

    def _problem(self, path: Path, node: yaml.Node, message: str) -> None:
        self.out.problems.append((path, node.start_mark.line + 1, message))

    def walk(self, node: yaml.Node, path: Path) -> object:
        self.count += 1
        if self.count > MAX_VALUES:
            culprit = self.expanding[0] if self.expanding else node
            raise LimitError(f"anchor {self._anchor(culprit)}: aliases expand to more than "
                             f"{MAX_VALUES} values", culprit.start_mark.line + 1)
        key = id(node)
        if key in self.active:
            raise LimitError(f"anchor {self._anchor(node)} refers to itself (recursive alias)",
                             node.start_mark.line + 1)
        alias = key in self.seen
        self.seen.add(key)
        if alias:
            self.expanding.append(node)
        self.active.add(key)
        try:
            return self._value(node, path)
        finally:
            self.active.discard(key)
            if alias:
                self.expanding.pop()

    def _value(self, node: yaml.Node, path: Path) -> object:
        self.out.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            if node.tag != f"{_TAG}map":
                self._problem(path, node, f"tag {node.tag.replace(_TAG, '!!')} is not supported")
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != f"{_TAG}seq":
                self._problem(path, node, f"tag {node.tag.replace(_TAG, '!!')} is not supported")
            items = []
            for i, item in enumerate(node.value):
                self.out.lines[path + (i,)] = item.start_mark.line + 1
                items.append(self.walk(item, path + (i,)))
            return items
        return self._scalar(node, path)

    def _key(self, key_node: yaml.Node, path: Path) -> str | None:
        if not isinstance(key_node, yaml.ScalarNode):
            self._problem(path, key_node, "a mapping key must be a plain scalar")
            return None
        return key_node.value  # 1, on, ~: the key as written, never a Python repr

    def _merged(self, value_node: yaml.Node, path: Path) -> list[yaml.MappingNode]:
        """The mappings a `<<` value names, in precedence order (earlier wins)."""
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        maps = [m for m in items if isinstance(m, yaml.MappingNode)]
        if len(maps) != len(items):
            self._problem(path + ("<<",), value_node, "a merge key (<<) takes a mapping or a list "
                          "of mappings")
        return maps

    def _mapping(self, node: yaml.MappingNode, path: Path, merged: bool = False) -> dict:
        """`merged`: walked for a `<<` (its duplicates were reported where it is defined, and
        the merging mapping's own lines win)."""
        result: dict = {}
        merges: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == f"{_TAG}merge":
                merges += self._merged(value_node, path)
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            sub = path + (key,)
            line = key_node.start_mark.line + 1
            if merged:
                self.out.lines.setdefault(sub, line)
            else:
                if key in result:
                    self.out.problems.append((sub, line, f"duplicate key '{key}'"))
                self.out.lines[sub] = line
            result[key] = self.walk(value_node, sub)
        for m in merges:  # YAML merge: explicit keys win, then earlier merged mappings
            self.count += 1
            mid = id(m)
            if mid in self.active:
                raise LimitError(f"anchor {self._anchor(m)} merges itself (recursive alias)",
                                 m.start_mark.line + 1)
            self.expanding.append(m)
            self.active.add(mid)
            try:
                sub_map = self._mapping(m, path, merged=True)
            finally:
                self.active.discard(mid)
                self.expanding.pop()
            for k, v in sub_map.items():
                if k not in result:
                    result[k] = v
        return result

    def _scalar(self, node: yaml.Node, path: Path) -> object:
        tag = node.tag
        text = node.value
        if tag not in _SCALARS:
            self._problem(path, node, f"tag {tag.replace(_TAG, '!!')} is not supported")
            return text
        if tag == f"{_TAG}str":
            if "\x00" in text:
                self._problem(path, node, "contains a NUL character")
            return text
        if tag == f"{_TAG}int" and len(text.lstrip("+-").replace("_", "")) > MAX_INT_DIGITS:
            self._problem(path, node, f"integer {excerpt(text, 30)} is out of range")
            return 0
        try:
            value = self.loader.construct_object(node, deep=True)
        except (ValueError, OverflowError, TypeError, yaml.YAMLError):
            self._problem(path, node, f"{excerpt(text, 40)} is not a valid "
                          f"{tag.replace(_TAG, '!!')}")
            return text
        if isinstance(value, int) and not isinstance(value, bool) and not (
                -INT_RANGE <= value < INT_RANGE):
            self._problem(path, node, f"integer {excerpt(text, 30)} is out of range")
            return 0
        if isinstance(value, (bool, int, float)):
            self.out.raw[path] = text
        return value
