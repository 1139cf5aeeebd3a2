"""Inventory problems as values, so every error in a file is reported together with its line."""
from __future__ import annotations

import re
from dataclasses import dataclass

_PLAIN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
Path = tuple[str | int, ...]


def excerpt(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: errors never print a whole (huge) value."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "…" + text[-4:]


def path_str(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            out += ("." if out else "") + text if _PLAIN.match(text) else f"[{excerpt(text)}]"
    return out or "(top level)"


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    hint: str = ""
    warning: bool = False


@dataclass(frozen=True)
class Source:
    """Where an inventory came from; `line_of` maps a field path to its line."""
    file: str
    lines: dict

    def line_of(self, path: Path) -> int | None:
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def format_problem(p: Problem, source: Source | None) -> str:
    where = ""
    if source is not None:
        line = source.line_of(p.path)
        where = f"{source.file}:{line}: " if line else f"{source.file}: "
    kind = "warning: " if p.warning else ""
    text = f"{where}{kind}{path_str(p.path)}: {p.message}"
    if p.hint:
        text += f"\n    fix: {p.hint}"
    return text


class InventoryError(Exception):
    """One or more problems that make an inventory unusable (exit code 2)."""

    def __init__(self, problems: list[Problem], source: Source | None = None):
        self.problems = problems
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the inventory:"
        return "\n".join([head] + [format_problem(p, self.source) for p in self.problems])
