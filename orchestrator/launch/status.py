"""`deploy status`: per rank alive / healthy / uptime / load, the proxy, the containers.

Probes go through the open SSH connections (one docker exec per node for process liveness,
HTTP over direct-tcpip for /health and /metrics), so status costs one connection per node.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

from .. import nodepaths
from ..plan import Plan
from ..transport import Cluster
from . import http, nodeside
from .deployment import RankRef, rank_refs
from .ledger import Ledger

_METRIC = re.compile(r'^(vllm:(?:num_requests_running|num_requests_waiting|kv_cache_usage_perc))'
                     r'(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$', re.M)


@dataclass
class RankStatus:
    key: str
    node: str
    group: str
    role: str
    dp_rank: int
    port: int | None
    devices: list[int]
    pid: int | None = None
    alive: bool = False
    health: str = "-"  # "200", "503", "refused ...", "-" (headless)
    uptime: float | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None
    ranktable: str | None = None  # sha256 (12) of the rank table it started with
    findings: list[str] = field(default_factory=list)  # known failure signatures in its log (unhealthy)
    stale_table: bool = False     # the table on the node changed since the rank started

    @property
    def healthy(self) -> bool:
        return self.alive and (self.port is None or self.health == "200") and not self.stale_table

    def to_json(self) -> dict:
        return {**vars(self), "healthy": self.healthy}


@dataclass
class Status:
    ranks: list[RankStatus] = field(default_factory=list)
    containers: dict[str, str] = field(default_factory=dict)  # node -> running | exited | absent | ...
    proxy: dict | None = None
    unreachable: dict[str, str] = field(default_factory=dict)
    state: str = ""

    @property
    def healthy(self) -> bool:
        return (not self.unreachable and all(r.healthy for r in self.ranks)
                and all(v == "running" for v in self.containers.values())
                and (self.proxy is None or self.proxy.get("healthy", False)))

    @property
    def exit_code(self) -> int:
        return 4 if self.unreachable else (0 if self.healthy else 1)

    def to_json(self) -> dict:
        return {"ok": self.healthy, "exit_code": self.exit_code, "state": self.state,
                "ranks": [r.to_json() for r in self.ranks], "containers": self.containers,
                "proxy": self.proxy, "unreachable": self.unreachable}


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        out[name] = out.get(name, 0.0) + float(value)
    return out


async def collect_status(plan: Plan, cluster: Cluster, ledger: Ledger | None) -> Status:
    inv = plan.inventory
    container = nodepaths.container_name(inv)
    refs = rank_refs(plan)
    st = Status(state=ledger.state if ledger else "no ledger")
    await cluster.connect()
    st.unreachable = {n: o.reason for n, o in cluster.unreachable.items() if n in plan.nodes}
    nodes = [n for n in plan.nodes if n not in st.unreachable]
    pids: dict[str, int] = {}
    tables: dict[str, str] = {}  # node -> sha256 of the rank table file there
    needs_table = any(getattr(s, "name", "") == "ranktable" for s in plan.steps)

    async def node_state(node: str) -> None:
        o = await cluster.run(node, nodeside.inspect(container), timeout=60)
        if o.status == "unreachable":
            st.unreachable[node] = o.reason
            return
        if not o.ok:
            st.containers[node] = "absent"
            return
        try:
            state = json.loads(o.stdout)[0].get("State", {})
            st.containers[node] = state.get("Status") or ("running" if state.get("Running") else "exited")
        except (ValueError, IndexError, AttributeError):
            st.containers[node] = "unknown"
        files = [r.pidfile for r in refs if r.node == node]
        if plan.proxy is not None and plan.proxy.node == node:
            files.append(nodepaths.proxy_pid(inv))
        script = nodeside.pids_script(files)
        if needs_table:
            script += f"echo @@table; sha256sum {nodepaths.host_path(nodepaths.rank_table_path(inv))} 2>/dev/null\n"
        out = await cluster.run_script(node, script, timeout=60)
        pids.update(nodeside.parse_pids(out.stdout))
        _, sep, table = out.stdout.partition("@@table\n")
        if sep and table.split():
            tables[node] = table.split()[0]
        mine = [pids[f] for f in files if f in pids]
        if mine and st.containers[node] == "running":
            a = await cluster.run(node, nodeside.alive(container, mine), timeout=60)
            alive = nodeside.parse_alive(a.stdout)
            for f in files:
                if f in pids:
                    pids[f] = pids[f] if alive.get(pids[f]) else -pids[f]

    await asyncio.gather(*(node_state(n) for n in nodes))

    async def rank_state(ref: RankRef) -> RankStatus:
        r = ref.rank
        rs = RankStatus(ref.key, r.node, r.group, r.role, r.dp_rank, r.port, r.devices)
        pid = pids.get(ref.pidfile)
        rs.pid = abs(pid) if pid else None
        rs.alive = bool(pid and pid > 0)
        entry = ledger.ranks.get(ref.key) if ledger else None
        if rs.alive and entry and entry.started:
            rs.uptime = round(time.time() - entry.started, 1)
        if needs_table and entry is not None and entry.table:
            rs.ranktable = entry.table[:12]
            rs.stale_table = rs.alive and tables.get(r.node) not in (None, entry.table)
        if r.port is not None and r.node not in st.unreachable:
            tunnel = lambda h, p: cluster.open_tcp(r.node, h, p)  # noqa: E731
            h = await http.request(tunnel, r.ip, r.port, "GET", "/health", timeout=3)
            rs.health = str(h.status) if h.status else h.error
            if h.ok:
                m = await http.request(tunnel, r.ip, r.port, "GET", "/metrics", timeout=3)
                vals = parse_metrics(m.text()) if m.ok else {}
                rs.running = vals.get("vllm:num_requests_running")
                rs.waiting = vals.get("vllm:num_requests_waiting")
                rs.kv_cache = vals.get("vllm:kv_cache_usage_perc")
        return rs

    st.ranks = list(await asyncio.gather(*(rank_state(r) for r in refs)))
    await _triage_unhealthy(cluster, plan, refs, st)
    if plan.proxy is not None:
        p = plan.proxy
        pid = pids.get(nodepaths.proxy_pid(inv))
        info = {"node": p.node, "host": p.host, "port": p.port, "pid": abs(pid) if pid else None,
                "alive": bool(pid and pid > 0), "healthcheck": "-", "healthy": False}
        if p.node not in st.unreachable:
            h = await http.request(lambda hh, pp: cluster.open_tcp(p.node, hh, pp), p.host, p.port, "GET",
                                   "/healthcheck", timeout=3)
            info["healthcheck"] = str(h.status) if h.status else h.error
            info["healthy"] = bool(info["alive"]) and h.ok
        st.proxy = info
    return st



async def _triage_unhealthy(cluster: Cluster, plan: Plan, refs: list[RankRef], st: Status) -> None:
    """For every rank that is not healthy: its log tail through the failure signatures (one
    round trip per node), so status says why, with the node, devices and the fix."""
    from .. import triage

    bad = {rs.key for rs in st.ranks if not rs.healthy and rs.node not in st.unreachable}
    by_node: dict[str, list[RankRef]] = {}
    for r in refs:
        if r.key in bad:
            by_node.setdefault(r.node, []).append(r)

    async def one(node: str) -> None:
        mine = by_node[node]
        o = await cluster.run_script(node, nodeside.tail_script([r.log for r in mine], 40), timeout=60)
        tails = nodeside.parse_tails(o.stdout)
        for r in mine:
            rs = next(x for x in st.ranks if x.key == r.key)
            found = triage.match(tails.get(r.log, ""), npus_per_node=plan.inventory.devices_per_node)
            rs.findings = [f.headline(r.node, r.rank.devices) for f in found]

    await asyncio.gather(*(one(n) for n in by_node))
