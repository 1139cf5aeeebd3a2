"""`deploy status`: is every rank alive and healthy, what load does it carry, is the proxy up."""
from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from ..launch.session import emit, launched_plan, run_async, run_dir_or_exit
from ..launch.status import Status, collect_status
from ..transport import Cluster


@click.command("status")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def command(inventory: str, as_json: bool) -> None:
    """Per rank: node, group, role, DP rank, port, process alive, /health, uptime, running and
    waiting requests and KV-cache use; the proxy; the containers.
    Exit 0 all healthy, 1 otherwise, 4 a node unreachable."""
    plan, ledger, source = launched_plan(inventory, as_json)
    logs = run_dir_or_exit(plan.inventory, "status", as_json)

    async def go():
        async with Cluster(plan.inventory, plan.nodes, log_dir=logs) as cluster:
            return await collect_status(plan, cluster, ledger)

    st, interrupted = run_async(go())
    if interrupted:
        sys.exit(interrupted)
    if as_json:
        doc = st.to_json()
        doc.update(inventory=plan.name, acted_on=source)
        emit(doc)
    else:
        show(st, plan.name)
    sys.exit(st.exit_code)


def _num(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.0f}%" if pct else f"{v:g}"


def show(st: Status, name: str) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    t = Table(title=f"{name}: {sum(r.healthy for r in st.ranks)}/{len(st.ranks)} ranks healthy ({st.state})")
    for col in ("node", "group", "role", "DP", "port", "pid", "alive", "/health", "uptime", "run", "wait", "kv"):
        t.add_column(col)
    for r in st.ranks:
        t.add_row(r.node, r.group, r.role, str(r.dp_rank), str(r.port or "-"), str(r.pid or "-"),
                  "yes" if r.alive else "[red]no[/red]",
                  r.health if r.health in ("200", "-") else f"[red]{r.health}[/red]",
                  f"{r.uptime:.0f}s" if r.uptime is not None else "-", _num(r.running), _num(r.waiting),
                  _num(r.kv_cache, True))
    console.print(t)
    tables = {r.ranktable for r in st.ranks if r.ranktable}
    if tables:
        console.print(f"rank table: {', '.join(sorted(tables))} (sha256)", highlight=False)
    for r in st.ranks:
        if r.stale_table:
            console.print(f"[red]stale rank table[/red]: {r.key} on {r.node} started with {r.ranktable}, the file "
                          "on the node has changed since (restart the group: teardown, then up)", highlight=False)
    for r in st.ranks:
        for line in r.findings:
            console.print(f"{r.key}: {line}", highlight=False, markup=False)
    for node, state in sorted(st.containers.items()):
        console.print(f"container on {node}: {state}", highlight=False)
    if st.proxy:
        p = st.proxy
        console.print(f"proxy {p['node']} {p['host']}:{p['port']}: pid {p['pid'] or '-'}, alive "
                      f"{'yes' if p['alive'] else 'no'}, /healthcheck {p['healthcheck']}", highlight=False)
    for node, reason in st.unreachable.items():
        console.print(f"[bold red]UNREACHABLE[/bold red] {node}: {reason}", highlight=False)
    word = "[bold green]healthy[/bold green]" if st.healthy else "[bold red]NOT healthy[/bold red]"
    console.print(word)
