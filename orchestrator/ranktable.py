"""Rank tables from live facts: pure functions from (plan, collected NPU facts) to the JSON that
LLMDataDist / HCCL read, and the checks that catch a wrong table before anything starts.

A wrong rank table shows up as an HCCL hang an hour into start-up, so the table is validated
against the plan (every planned device present, nothing extra, counts, unique IPs, one subnet per
plane, A3 Super Pod fields) before it is written anywhere. No I/O here: `deploy ranktable` and
`deploy up` collect the facts (checks/network.py `collect`, one SSH round) and write the text of
`render_table`; `table_hash` is what `status` compares with the file on the node.

Formats (vllm-ascend's gen_ranktable.py output; HCCL rank table v1.0 / v1.2):
- `pd`: the global P/D table of vllm-ascend's `gen_ranktable.py` (llmdatadist era). Prefill
  devices first, then decode; `cluster_id` 1-based in that order; A2 `device_ip` = `hccn_tool
  -ip -g`, A3 `device_ip` = the vNIC IP (`-vnic -g`) plus `super_pod_id` / `super_device_id`
  from `npu-smi info -t spod-info`. Every value is a string. No rank_id, server_list or
  super_pod_list.
- `hccl`: the HCCL rank table, v1.0 on A2 and v1.2 on A3 (`super_device_id`, `super_pod_list`),
  over the nodes and devices the plan uses; `rank_id` 0..N-1 in server order, the servers of one
  Super Pod contiguous. `device_ip` is the RoCE IP on both.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from .checks.facts import DeviceFacts, NodeFacts
from .checks.parsers import first_line
from .plan import Plan

Format = Literal["pd", "hccl"]
FORMATS: tuple[str, ...] = ("pd", "hccl")
PD_ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class TableProblem:
    """One reason a table must not be written; names the node and device where there is one."""
    node: str | None
    device: int | None
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = ""
        if self.node is not None:
            where = f"{self.node} dev {self.device}: " if self.device is not None else f"{self.node}: "
        return where + self.message + (f" (fix: {self.fix})" if self.fix else "")

    def to_json(self) -> dict:
        return {"node": self.node, "device": self.device, "message": self.message, "fix": self.fix}


# ------------------------------------------------------------------------------ what the plan uses


def role_devices(plan: Plan, role: str) -> list[tuple[str, int]]:
    """(node, device) of every rank of `role`, nodes in rank order and each node's devices in
    ASCEND_RT_VISIBLE_DEVICES order: vllm-ascend indexes a node's entries by tp rank."""
    out: list[tuple[str, int]] = []
    seen: set[tuple[str, int]] = set()
    nodes = list(dict.fromkeys(r.node for r in plan.ranks if r.role == role))
    for node in nodes:
        for r in plan.ranks:
            if r.role == role and r.node == node:
                for d in r.devices:
                    if (node, d) not in seen:
                        seen.add((node, d))
                        out.append((node, d))
    return out


def default_format(plan: Plan) -> Format:
    """`pd` for a prefill/decode plan (what LLMDataDistCMgrConnector reads), else `hccl`."""
    roles = {r.role for r in plan.ranks}
    return "pd" if {"prefill", "decode"} <= roles else "hccl"


def hccl_servers(plan: Plan, facts: dict[str, NodeFacts]) -> list[str]:
    """The plan's nodes in inventory order, regrouped (stably) so one Super Pod's servers are
    contiguous, as HCCL requires for v1.2."""
    nodes = plan.nodes
    if plan.inventory.soc != "a3":
        return nodes
    pods = {n: _node_pod(plan, facts, n) for n in nodes}
    first: dict[str, int] = {}
    for n in nodes:
        first.setdefault(pods[n], len(first))
    return sorted(nodes, key=lambda n: first[pods[n]])


def _node_pod(plan: Plan, facts: dict[str, NodeFacts], node: str) -> str:
    f = facts.get(node)
    if f is None:
        return ""
    ids = [i for i in (f.devices[d].super_pod_id for d in plan.devices_used(node) if d in f.devices) if i is not None]
    return Counter(ids).most_common(1)[0][0] if ids else ""


# ------------------------------------------------------------------------------ building


def _dev(facts: dict[str, NodeFacts], node: str, device: int) -> DeviceFacts | None:
    f = facts.get(node)
    return f.devices.get(device) if f is not None else None


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def build_table(plan: Plan, facts: dict[str, NodeFacts], fmt: Format | None = None) -> dict:
    """The table for `plan` from collected facts. A device with no facts is left out and a
    missing value is an empty string: `validate_table` names both, so build never guesses."""
    fmt = fmt or default_format(plan)
    if fmt == "pd":
        return _build_pd(plan, facts)
    if fmt == "hccl":
        return _build_hccl(plan, facts)
    raise ValueError(f"unknown rank table format {fmt!r}; use one of {', '.join(FORMATS)}")


def _build_pd(plan: Plan, facts: dict[str, NodeFacts]) -> dict:
    a3 = plan.inventory.soc == "a3"
    lists: dict[str, list[dict]] = {}
    servers: list[str] = []
    cluster_id = 0
    for role in PD_ROLES:
        entries = []
        for node, d in role_devices(plan, role):
            dev = _dev(facts, node, d)
            if dev is None:
                continue
            ip = plan.inventory.nodes[node].cluster_ip
            if ip not in servers:
                servers.append(ip)
            cluster_id += 1
            entry = {"server_id": ip, "device_id": str(d),
                     "device_ip": _s(dev.vnic_ip if a3 else dev.ip)}
            if a3:
                entry["super_pod_id"] = _s(dev.super_pod_id)
                entry["super_device_id"] = _s(dev.sdid)
            entry["cluster_id"] = str(cluster_id)
            entries.append(entry)
        lists[role] = entries
    return {
        "version": "1.2",
        "server_count": str(len(servers)),
        "prefill_device_list": lists["prefill"],
        "decode_device_list": lists["decode"],
        "status": "completed",
    }


def _build_hccl(plan: Plan, facts: dict[str, NodeFacts]) -> dict:
    a3 = plan.inventory.soc == "a3"
    server_list = []
    pods: dict[str, list[dict]] = {}
    rank = 0
    for node in hccl_servers(plan, facts):
        ip = plan.inventory.nodes[node].cluster_ip
        devices = []
        for d in plan.devices_used(node):
            dev = _dev(facts, node, d)
            if dev is None:
                continue
            entry = {"device_id": str(d), "device_ip": _s(dev.ip)}
            if a3:
                entry["super_device_id"] = _s(dev.sdid)
            entry["rank_id"] = str(rank)
            rank += 1
            devices.append(entry)
        server_list.append({"server_id": ip, "host_ip": ip, "device": devices})
        if a3:
            pods.setdefault(_node_pod(plan, facts, node), []).append({"server_id": ip})
    table: dict[str, Any] = {
        "status": "completed",
        "version": "1.2" if a3 else "1.0",
        "server_count": str(len(server_list)),
        "server_list": server_list,
    }
    if a3:
        table["super_pod_list"] = [{"super_pod_id": pod, "server_list": members} for pod, members in pods.items()]
    return table


# ------------------------------------------------------------------------------ validating


def table_format(table: dict) -> Format:
    return "pd" if "prefill_device_list" in table or "decode_device_list" in table else "hccl"


def validate_table(plan: Plan, table: dict, facts: dict[str, NodeFacts] | None = None) -> list[TableProblem]:
    """Everything that would make HCCL/LLMDataDist hang or fail at start-up, checked against the
    plan; with `facts`, also one subnet per plane (the netmasks are not in the table) and, on A3,
    the vNIC link of the P/D table's devices. Empty list: safe to write."""
    problems: list[TableProblem] = []
    add = lambda node, dev, msg, fix="": problems.append(TableProblem(node, dev, msg, fix))  # noqa: E731
    inv = plan.inventory
    a3 = inv.soc == "a3"
    fmt = table_format(table)
    by_ip: dict[str, list[str]] = defaultdict(list)
    for name in plan.nodes:
        by_ip[inv.nodes[name].cluster_ip].append(name)
    for ip, names in by_ip.items():
        if len(names) > 1:
            add(names[1], None, f"shares server_id {ip} with {names[0]}: the table cannot tell them apart",
                "give each node its own nodes.<name>.ip")

    def node_of(server_id: str) -> str | None:
        names = by_ip.get(server_id)
        return names[0] if names else None

    if table.get("status") != "completed":
        add(None, None, f"status is {table.get('status')!r}, not 'completed'")
    want_version = "1.2" if (fmt == "pd" or a3) else "1.0"
    if table.get("version") != want_version:
        add(None, None, f"version is {table.get('version')!r}; {fmt} on {inv.soc} is {want_version!r}")

    # (node, device, entry, role-or-None) for every device entry in table order
    rows: list[tuple[str | None, int | None, dict, str | None]] = []
    if fmt == "pd":
        expected: dict[str | None, list[tuple[str, int]]] = {role: role_devices(plan, role) for role in PD_ROLES}
        for role in PD_ROLES:
            for e in table.get(f"{role}_device_list") or []:
                rows.append((node_of(str(e.get("server_id"))), _int(e.get("device_id")), e, role))
        for i, (_n, _d, e, _r) in enumerate(rows):
            if e.get("cluster_id") != str(i + 1):
                add(_n, _d, f"cluster_id is {e.get('cluster_id')!r}, expected '{i + 1}' (1-based, prefill first)")
        servers = list(dict.fromkeys(str(e.get("server_id")) for _n, _d, e, _r in rows))
        want_servers = list(dict.fromkeys(inv.nodes[n].cluster_ip for role in PD_ROLES for n, _ in expected[role]))
    else:
        expected = {None: [(n, d) for n in plan.nodes for d in plan.devices_used(n)]}
        server_list = table.get("server_list") or []
        for s in server_list:
            for e in s.get("device") or []:
                rows.append((node_of(str(s.get("server_id"))), _int(e.get("device_id")), e, None))
        for i, (_n, _d, e, _r) in enumerate(rows):
            if e.get("rank_id") != str(i):
                add(_n, _d, f"rank_id is {e.get('rank_id')!r}, expected '{i}' (0..N-1 in server order)")
        servers = [str(s.get("server_id")) for s in server_list]
        dupes = [s for s, c in Counter(servers).items() if c > 1]
        for s in dupes:
            add(node_of(s), None, f"server {s} is listed {servers.count(s)} times in server_list")
        want_servers = [inv.nodes[n].cluster_ip for n in plan.nodes]
        if a3:
            _check_pods(table, servers, node_of, add)

    if table.get("server_count") != str(len(servers)):
        add(None, None, f"server_count is {table.get('server_count')!r} but the table lists {len(servers)} servers")
    absent = set(want_servers) - set(servers)
    if set(servers) != set(want_servers):
        for s in sorted(absent):
            add(node_of(s), None, "the plan uses this node but the table has none of its devices",
                "check the node is reachable and reports its devices (deploy check-network)")
        for s in sorted(set(servers) - set(want_servers)):
            add(None, None, f"server {s} is in the table but is not a node of the plan")

    # every planned device present, once, in its role; nothing else
    for want_role, want in expected.items():
        got: list[tuple[str | None, int | None]] = [(n, d) for n, d, _e, r in rows if r == want_role]
        counts = Counter(got)
        label = f"{want_role}_device_list" if want_role else "the table"
        for wn, wd in want:
            if counts[(wn, wd)] == 0 and inv.nodes[wn].cluster_ip not in absent:
                add(wn, wd, f"planned device is missing from {label}",
                    f"check the device on {wn}: hccn_tool -i {wd} -ip -g; npu-smi info")
        for (n, d), c in counts.items():
            if (n, d) not in want:
                add(n, d, f"device is in {label} but the plan does not use it there")
            elif c > 1:
                add(n, d, f"device is listed {c} times in {label}")
        if len(got) != len(want):
            add(None, None, f"{label} has {len(got)} devices, the plan uses {len(want)}")

    # device IPs: present, IPv4, unique (a vNIC only within its Super Pod)
    vnic = fmt == "pd" and a3
    owners: dict[tuple[str, str], list[tuple[str | None, int | None]]] = defaultdict(list)
    for n, d, e, _r in rows:
        ip = str(e.get("device_ip") or "")
        if not ip:
            add(n, d, f"no {'vNIC' if vnic else 'device'} IP", _ip_fix(d, vnic, facts, n))
            continue
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            add(n, d, f"device_ip {ip!r} is not an IPv4 address")
            continue
        owners[(ip, str(e.get("super_pod_id", "")) if vnic else "")].append((n, d))
    for (ip, pod), where in owners.items():
        if len(where) > 1:
            for n, d in where:
                others = ", ".join(f"{on} dev {od}" for on, od in where if (on, od) != (n, d))
                scope = f" in Super Pod {pod}" if vnic else ""
                add(n, d, f"device IP {ip} is also on {others}{scope}",
                    "give one of them another address (hccn_tool -i N -ip -s address ...)")

    if a3:
        sdids: dict[tuple[str, str], list[tuple[str | None, int | None]]] = defaultdict(list)
        pod_of_server = _pod_of_server(table) if fmt == "hccl" else {}
        for n, d, e, _r in rows:
            sdid = str(e.get("super_device_id") or "")
            if not sdid.isdigit():
                add(n, d, "no super_device_id (SDID) from npu-smi info -t spod-info",
                    f"on {n}: npu-smi info -t spod-info -i {d // 2 if d is not None else 'N'} "
                    f"-c {d % 2 if d is not None else 'C'}")
                continue
            pod = str(e.get("super_pod_id", "")) if fmt == "pd" else pod_of_server.get(inv.nodes[n].cluster_ip if n else "", "")
            if fmt == "pd" and not pod:
                add(n, d, "no super_pod_id from npu-smi info -t spod-info")
            sdids[(pod, sdid)].append((n, d))
        for (pod, sdid), where in sdids.items():
            if len(where) > 1:
                for n, d in where:
                    add(n, d, f"SDID {sdid} is not unique in Super Pod {pod} (HCCL EI0014)",
                        "check the Super Pod configuration (npu-smi info -t spod-info)")

    if facts is not None:
        problems += _plane_subnets(plan, rows, facts, roce=not vnic)
        if vnic:
            for n, d, _e, _r in rows:
                dev = _dev(facts, n, d) if n is not None and d is not None else None
                if dev is not None and dev.vnic_link == "DOWN":
                    add(n, d, "vNIC link is DOWN (hccn_tool -vnic -g): LLMDataDist cannot link over it",
                        f"on {n}: hccn_tool -i {d} -vnic -g; check the HCCS link of the Super Pod")
    return problems


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _ip_fix(d: int | None, vnic: bool, facts: dict[str, NodeFacts] | None, node: str | None) -> str:
    cmd = f"hccn_tool -i {d} {'-vnic' if vnic else '-ip'} -g"
    seen = ""
    if facts is not None and node is not None and d is not None:
        dev = _dev(facts, node, d)
        if dev is not None:
            seen = first_line(dev.section("vnic" if vnic else "ip").text)
    where = f"on {node}: " if node else ""
    return f"{where}{cmd}" + (f" says '{seen}'" if seen else "") + (
        "; configure the vNIC of the Super Pod" if vnic else
        f"; set it: hccn_tool -i {d} -ip -s address <ip> netmask <mask> (and address_{d} in /etc/hccn.conf)")


def _pod_of_server(table: dict) -> dict[str, str]:
    out = {}
    for pod in table.get("super_pod_list") or []:
        for s in pod.get("server_list") or []:
            out[str(s.get("server_id"))] = str(pod.get("super_pod_id", ""))
    return out


def _check_pods(table: dict, servers: list[str], node_of, add) -> None:
    pods = table.get("super_pod_list")
    if not isinstance(pods, list) or not pods:
        add(None, None, "version 1.2 needs super_pod_list")
        return
    listed = [str(s.get("server_id")) for p in pods for s in (p.get("server_list") or [])]
    for s in servers:
        if listed.count(s) != 1:
            add(node_of(s), None, f"server {s} appears {listed.count(s)} times in super_pod_list (must be once)")
    for s in set(listed) - set(servers):
        add(None, None, f"super_pod_list names server {s}, which is not in server_list")
    order = [_pod_of_server(table).get(s) for s in servers]
    seen: list[str | None] = []
    for pod in order:
        if seen and pod != seen[-1] and pod in seen:
            add(None, None, f"the servers of Super Pod {pod} are not contiguous in server_list (HCCL requires it)")
            break
        if not seen or pod != seen[-1]:
            seen.append(pod)


def _plane_subnets(plan: Plan, rows, facts: dict[str, NodeFacts], roce: bool) -> list[TableProblem]:
    """Device d of every node is one plane: one subnet (RoCE IPs; a vNIC is per server)."""
    if not roce:
        return []
    planes: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for n, d, e, _r in rows:
        dev = _dev(facts, n, d) if n is not None and d is not None else None
        ip = str(e.get("device_ip") or "")
        if dev is None or not ip or not dev.netmask:
            continue
        try:
            net = str(ipaddress.IPv4Network(f"{ip}/{dev.netmask}", strict=False))
        except ValueError:
            continue
        planes[d].append((n, net))
    out = []
    for d, entries in sorted(planes.items()):
        nets = Counter(net for _n, net in entries)
        if len(nets) > 1:
            majority = nets.most_common(1)[0][0]
            for n, net in entries:
                if net != majority:
                    out.append(TableProblem(n, d, f"device IP is in {net}, plane {d} is {majority} on the other nodes",
                                            f"hccn_tool -i {d} -ip -s address <ip in {majority}> netmask <mask>"))
    return out


# ------------------------------------------------------------------------------ the file


def render_table(table: dict) -> str:
    """The exact text written on disk and on every node (hashed by `table_hash`)."""
    return json.dumps(table, indent=2) + "\n"


def table_hash(table: dict) -> str:
    """sha256 of `render_table(table)`: equals `sha256sum ranktable.json` of the written file."""
    return hashlib.sha256(render_table(table).encode()).hexdigest()
