"""Human renderings of a plan as rich tables (node-side scripts: orchestrator/scripts.py)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .plan import Plan, Rank
from .scripts import devices_text


def _dp_ranks(ranks: list[Rank], span: int) -> str:
    """The DP ranks a node hosts: `span` of them from its first (one process each in external
    launch, one process for all in internal); nnodes shows the node rank instead."""
    r = ranks[0]
    if r.node_rank is not None:
        return f"node-rank {r.node_rank}"
    lo, hi = r.dp_rank, r.dp_rank + span - 1
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def plan_table(plan: Plan, console: Console | None = None) -> None:
    console = console or Console()
    inv = plan.inventory
    table = Table(title=f"{plan.name} ({inv.soc}): {len(plan.ranks)} vllm serve processes on {len(plan.nodes)} nodes")
    for col in ("node", "group", "role", "DP rank(s)", "devices", "port", "headless"):
        table.add_column(col)
    for g in inv.groups:
        for node in g.nodes:
            ranks = [r for r in plan.ranks if r.group == g.name and r.node == node]
            if not ranks:
                continue
            devices = sorted(d for r in ranks for d in r.devices)
            ports = [r.port for r in ranks if r.port is not None]
            port = "-" if not ports else (str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}")
            table.add_row(node, g.name, g.role, _dp_ranks(ranks, g.dp_local or g.dp // len(g.nodes)), devices_text(devices), port,
                          "yes" if ranks[0].headless else "")
    console.print(table)
    if plan.proxy:
        p = plan.proxy
        n_pre = sum(1 for r in plan.ranks if r.role == "prefill" and r.port is not None)
        n_dec = sum(1 for r in plan.ranks if r.role == "decode" and r.port is not None)
        console.print(f"proxy: {p.node} {p.host}:{p.port} -> {n_pre} prefill, {n_dec} decode backends",
                      soft_wrap=True, highlight=False)
    if plan.containers:
        c0 = plan.containers[0]
        by_devices: dict[str, list[str]] = {}
        for c in plan.containers:
            npus = [int(d.removeprefix("/dev/davinci")) for d in c.devices if d.removeprefix("/dev/davinci").isdigit()]
            by_devices.setdefault(devices_text(npus), []).append(c.node)
        where = "; ".join(f"{', '.join(nodes)} (devices {devs})" for devs, nodes in by_devices.items())
        console.print(f"containers: {c0.name} from {c0.image}, {len(c0.binds)} mounts, on {where}",
                      highlight=False, soft_wrap=True)
    console.print("steps:")
    for i, s in enumerate(plan.steps, 1):
        group = f" {s.group}" if s.group else ""
        text = s.describe(plan)
        detail = f" ({text})" if text else ""
        console.print(f"  {i:2}. {s.name}{group}: {', '.join(s.nodes)}{detail}", highlight=False, soft_wrap=True)
