"""Node selectors (`--nodes`) and clush-style folding of node names.

Folding keeps output for hundreds of nodes readable (`d[0-31],p[0-1]`), and a folded set is
itself a valid selector, so a printed set can be pasted back into `--nodes`.
"""
from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type here: exec must not import pydantic to select nodes
    from .inventory import Inventory

_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")
_RANGED = re.compile(r"^([^\[\]*?]*)\[(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)\]([^\[\]*?]*)$")


MAX_EXPANDED = 65_536  # names one folded term may expand to (checked before expanding)
MAX_SELECTOR = 65_536  # characters in one --nodes value


class SelectorError(ValueError):
    """A selector term that names nothing; the message lists what exists."""


def select_nodes(inv: Inventory, selector: str | None) -> list[str]:
    """Names chosen by comma-separated terms, in inventory order; None or "" means all."""
    names = list(inv.nodes)
    if not selector or not selector.strip():
        return names
    if len(selector) > MAX_SELECTOR:
        raise SelectorError(f"the selector is {len(selector)} characters; the limit is {MAX_SELECTOR}")
    chosen: set[str] = set()
    for term in _terms(selector):
        chosen |= _match(inv, term)
    return [n for n in names if n in chosen]


def _terms(selector: str) -> list[str]:
    """Split on commas outside brackets (`d[0-1,5],p0` is two terms)."""
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def _match(inv: Inventory, term: str) -> set[str]:
    kind, _, value = term.partition(":")
    if kind == "role" and value:
        hit = {n for g in inv.groups if g.role == value for n in g.nodes}
        if not hit:
            roles = sorted({g.role for g in inv.groups})
            raise SelectorError(f"no group has role '{value}' (roles: {', '.join(roles)})")
        return hit
    if kind == "group" and value:
        for g in inv.groups:
            if g.name == value:
                return set(g.nodes)
        raise SelectorError(f"unknown group '{value}' "
                            f"(groups: {', '.join(g.name for g in inv.groups)})")
    if term in inv.nodes:
        return {term}
    expanded = expand(term)
    if expanded is not None:
        missing = [n for n in expanded if n not in inv.nodes]
        if missing:
            raise SelectorError(f"unknown node{'s' if len(missing) > 1 else ''} "
                                f"'{fold(missing)}' in '{term}' (nodes: {fold(inv.nodes)})")
        return set(expanded)
    hit = {n for n in inv.nodes if fnmatch.fnmatchcase(n, term)}
    if not hit:
        raise SelectorError(f"'{term}' matches no node (nodes: {fold(inv.nodes)}; "
                            f"also role:<role>, group:<name>)")
    return hit


def expand(term: str) -> list[str] | None:
    """`d[0-2,07]` -> d0 d1 d2 d07 (padding from each bound); None if not a folded set.

    SelectorError for a reversed range (`d[3-1]`) or one that would expand to more than
    MAX_EXPANDED names: the size is known before a single name is made."""
    m = _RANGED.match(term)
    if not m:
        return None
    prefix, ranges, suffix = m.groups()
    bounds = []
    total = 0
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if len(lo) > 9 or len(hi) > 9:
            raise SelectorError(f"range {part} in '{term}' is too large (at most {MAX_EXPANDED} names)")
        a, b = int(lo), int(hi or lo)
        if b < a:
            raise SelectorError(f"range {part} in '{term}' is reversed (did you mean {b}-{a}?)")
        total += b - a + 1
        if total > MAX_EXPANDED:
            raise SelectorError(f"'{term}' would expand to more than {MAX_EXPANDED} names")
        bounds.append((lo, a, b))
    out = []
    for lo, a, b in bounds:
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        out += [f"{prefix}{str(i).zfill(width)}{suffix}" for i in range(a, b + 1)]
    return out


def fold(names) -> str:
    """`d0,d1,p0,p1` -> `d[0-1],p[0-1]`; zero padding kept; names without a number as is."""
    series: dict[tuple[str, str], list[str]] = {}
    parts: list[tuple[str, str]] = []
    for name in dict.fromkeys(names):
        m = _NUMBERED.match(name)
        if m:
            series.setdefault((m.group(1), m.group(3)), []).append(m.group(2))
        else:
            parts.append((name, name))
    for (prefix, suffix), numbers in series.items():
        if len(numbers) == 1:
            parts.append((prefix + suffix, prefix + numbers[0] + suffix))
        else:
            parts.append((prefix + suffix, f"{prefix}[{_ranges(numbers)}]{suffix}"))
    return ",".join(text for _, text in sorted(parts))


def _ranges(numbers: list[str]) -> str:
    runs: list[list] = []  # [first, last, width]
    for s in sorted(set(numbers), key=lambda s: (int(s), len(s))):
        n = int(s)
        if runs and n == runs[-1][1] + 1 and s == str(n).zfill(runs[-1][2]):
            runs[-1][1] = n
        else:
            runs.append([n, n, len(s) if s.startswith("0") and len(s) > 1 else 0])
    return ",".join(str(a).zfill(w) if a == b else f"{str(a).zfill(w)}-{str(b).zfill(w)}"
                    for a, b, w in runs)
