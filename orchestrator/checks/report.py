"""Rendering a `NetworkReport` for people: identical findings folded across nodes and devices,
the observed line, the reason and the command that fixes it, a ping matrix, one verdict line."""
from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.table import Table

from ..nodeset import fold
from .model import Check, NetworkReport

MATRIX_MAX_NODES = 16


def _template(c: Check) -> str:
    if c.device is None:
        return c.fix
    d = c.device
    return c.fix.replace(f"-i {d} ", "-i $i ").replace(f"_{d}=", "_$i=").replace(f"-i {d};", "-i $i;")


def fold_checks(checks: list[Check]) -> list[tuple[str, str, Check, str]]:
    """Rows of (folded nodes, devices, example check, fix): same finding on the same device of
    several nodes folds the nodes; then the same node set with several devices folds devices."""
    by_device: dict[tuple, list[str]] = defaultdict(list)
    example: dict[tuple, Check] = {}
    for c in checks:
        key = (c.check, c.status, c.observed, c.reason, _template(c), c.device)
        by_device[key].append(c.node)
        example.setdefault(key, c)
    by_nodes: dict[tuple, list[int | None]] = defaultdict(list)
    ex2: dict[tuple, Check] = {}
    for key, nodes in by_device.items():
        k2 = key[:5] + (tuple(sorted(nodes)),)
        by_nodes[k2].append(key[5])
        ex2.setdefault(k2, example[key])
    rows = []
    for k2, devices in by_nodes.items():
        c = ex2[k2]
        nodes = list(k2[5])
        devs = [d for d in devices if d is not None]
        template = k2[4]
        if len(devs) > 1 and "$i" in template:
            fix = f"for i in {' '.join(map(str, sorted(devs)))}; do {template}; done"
        elif devs:
            fix = template.replace("$i", str(devs[0]))
        else:
            fix = c.fix
        rows.append((fold(nodes), ",".join(map(str, sorted(devs))) or "-", c, fix))
    return rows


def _table(title: str, rows: list[tuple[str, str, Check, str]]) -> Table:
    t = Table(title=title, title_justify="left", show_lines=True)
    for col in ("nodes", "dev", "check", "observed", "reason", "fix"):
        t.add_column(col, overflow="fold")
    for nodes, devs, c, fix in rows:
        t.add_row(nodes, devs, c.check, c.observed, c.reason, fix)
    return t


def ping_matrix(report: NetworkReport) -> Table | None:
    nodes = [n for n in report.nodes if any(p.src == n or p.dst == n for p in report.pings)]
    if not report.pings or len(nodes) > MATRIX_MAX_NODES:
        return None
    # Each unordered device pair is pinged once and its reply proves the path both ways, so a
    # pair shows in both cells: p0 -> d1 failing reads the same on d1's row.
    cell: dict[tuple[str, str], list] = defaultdict(list)
    for p in report.pings:
        cell[(p.src, p.dst)].append(p)
        cell[(p.dst, p.src)].append(p)
    t = Table(title="pings between row and column (each device pair once, both ways)", title_justify="left")
    t.add_column("from \\ to")
    for n in nodes:
        t.add_column(n, justify="center")
    for a in nodes:
        row = [a]
        for b in nodes:
            items = cell.get((a, b), [])
            if not items:
                row.append("·")
                continue
            bad = sum(1 for p in items if not p.ok)
            row.append(f"ok {len(items)}" if not bad else f"[red]{bad}/{len(items)} failed[/red]")
        t.add_row(*row)
    return t


def print_report(report: NetworkReport, console: Console | None = None, title: str = "") -> None:
    console = console or Console()
    if title:
        console.print(title, highlight=False, soft_wrap=True)
    for node, reason in sorted(report.unreachable.items()):
        console.print(f"[bold red]UNREACHABLE[/bold red] {node}: {reason}", highlight=False, soft_wrap=True)
    for line in report.tls_changes:
        console.print(f"changed: {line}", highlight=False, soft_wrap=True)
    for line in report.summary:
        console.print(line, highlight=False, soft_wrap=True)
    fails = fold_checks(report.failed)
    if fails:
        console.print(_table(f"{len(report.failed)} failed check{'s' if len(report.failed) != 1 else ''}", fails))
    warns = fold_checks(report.warnings)
    if warns:
        console.print(_table(f"{len(report.warnings)} warning{'s' if len(report.warnings) != 1 else ''}", warns))
    matrix = ping_matrix(report)
    if matrix is not None:
        console.print(matrix)
    elif report.pings:
        bad = sum(1 for p in report.pings if not p.ok)
        console.print(f"pings: {len(report.pings) - bad}/{len(report.pings)} ok", highlight=False)
    style = "bold green" if report.ok else "bold red"
    console.print(f"[{style}]{report.verdict()}[/{style}]", highlight=False, soft_wrap=True)
