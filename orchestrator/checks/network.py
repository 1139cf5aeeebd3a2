"""`check-network` over the transport: collect every node in one round trip, judge, ping the
planned pairs, optionally align TLS. `deploy up` calls `check_network` as its first step.
"""
from __future__ import annotations

import functools
import shlex
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..plan import Plan
from ..playbooks import read
from ..transport import Cause, Cluster, Outcome
from . import parsers as P
from .facts import NodeFacts, node_facts, parse_sections
from .model import Check, NetworkReport, Ping
from .rules import cluster_checks, node_checks

BUSY_RETRIES = 5
# `--ping-parallel` bounds: pings in flight per node. Default (None): one per device that sends,
# the hardware's own limit (hccn_tool answers "The device is occupied" to a second ping).
PING_PARALLEL_MAX = 64
COLLECT_TIMEOUT = 300.0
PING_TIMEOUT = 600.0
# Collection and ping output is parsed whole: keep up to 32 MiB of it per node (a 64-node A3
# decode group pings ~1000 pairs from each node, ~0.4 MB), not the cluster's head and tail.
PARSED_CAPTURE = (32 << 20, 0)

Progress = Callable[[str], None]


def node_script(playbook: str, **values: object) -> str:
    """Variables (shell-quoted), the busy-retrying `h` helper, then the playbook's text."""
    values.setdefault("RETRIES", BUSY_RETRIES)
    head = "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in values.items())
    return head + read("hccn_retry.sh") + (read(playbook) if playbook else "")


def collect_script(soc: str, devices: list[int]) -> str:
    return node_script("network_collect.sh", SOC=soc, DEVICES=" ".join(map(str, devices)))


@dataclass(frozen=True)
class Pair:
    src: str
    src_device: int
    dst: str
    dst_device: int


def group_devices(plan: Plan) -> dict[tuple[str, str], list[int]]:
    """(group, node) -> the devices that group uses on that node, sorted."""
    out: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in plan.ranks:
        out[(r.group, r.node)].update(r.devices)
    return {k: sorted(v) for k, v in out.items()}


def planned_pairs(plan: Plan, nodes: list[str]) -> list[Pair]:
    """The device pairs the plan will use, each unordered pair once: same-index devices across
    the nodes of each group, and for P/D, device i of every prefill node with device i of every
    decode node. A ping and its reply test the path both ways, so A->B is not also pinged B->A.

    Which end pings is chosen to spread the work: `hccn_tool` allows one ping in flight per
    device, so the wall time is set by the device that sends the most (see `orient`)."""
    selected = set(nodes)
    edges: set[tuple[tuple[str, int], tuple[str, int]]] = set()
    order = {n: i for i, n in enumerate(plan.inventory.nodes)}

    def add(a: str, x: int, b: str, y: int) -> None:
        ea, eb = (a, x), (b, y)
        edges.add((ea, eb) if (order[a], x) <= (order[b], y) else (eb, ea))

    by_group = group_devices(plan)
    for g in plan.inventory.groups:
        members = [n for n in g.nodes if n in selected]
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if a == b:
                    continue
                da, db = by_group.get((g.name, a), []), by_group.get((g.name, b), [])
                for x, y in zip(da, db):
                    add(a, x, b, y)
    roles = {(r.node, r.role) for r in plan.ranks}
    prefill = [n for n in plan.nodes if n in selected and (n, "prefill") in roles]
    decode = [n for n in plan.nodes if n in selected and (n, "decode") in roles]
    used = {n: plan.devices_used(n) for n in set(prefill) | set(decode)}
    for p in prefill:
        for d in decode:
            if p != d:
                for x, y in zip(used[p], used[d]):
                    add(p, x, d, y)
    pairs = orient(sorted(edges, key=lambda e: (order[e[0][0]], e[0][1], order[e[1][0]], e[1][1])))
    return sorted(pairs, key=lambda q: (order[q.src], q.src_device, order[q.dst], q.dst_device))


def orient(edges: list[tuple[tuple[str, int], tuple[str, int]]]) -> list[Pair]:
    """Pick the sending end of every unordered device pair so that no device sends much more than
    it must: greedily the end with fewer pings so far (then the node with fewer, then the first),
    then flip any pair whose sender has 2+ more than its peer until none is left (bounded).
    Deterministic: the same plan always pings the same way."""
    ids: dict[tuple[str, int], int] = {}
    nodes: dict[str, int] = {}
    ends = [(ids.setdefault(a, len(ids)), ids.setdefault(b, len(ids))) for a, b in edges]
    node_of = [nodes.setdefault(n, len(nodes)) for n, _ in ids]
    dev_load, node_load = [0] * len(ids), [0] * len(nodes)
    sender: list[int] = []  # the id of the end that sends
    for x, y in ends:
        s = x if (dev_load[x], node_load[node_of[x]]) <= (dev_load[y], node_load[node_of[y]]) else y
        dev_load[s] += 1
        node_load[node_of[s]] += 1
        sender.append(s)
    for _ in range(8):  # local improvement; each pass is O(pairs)
        changed = False
        for i, (x, y) in enumerate(ends):
            s = sender[i]
            t = y if s == x else x
            if dev_load[s] >= dev_load[t] + 2:
                dev_load[s] -= 1
                dev_load[t] += 1
                node_load[node_of[s]] -= 1
                node_load[node_of[t]] += 1
                sender[i] = t
                changed = True
        if not changed:
            break
    out = []
    for (a, b), (x, _y), s in zip(edges, ends, sender):
        src, dst = (a, b) if s == x else (b, a)
        out.append(Pair(src[0], src[1], dst[0], dst[1]))
    return out


def ping_target(soc: str, src: NodeFacts, dst: NodeFacts, pair: Pair, roce_only: bool) -> tuple[str, str | None]:
    """RoCE `-ping` on A2 and across Super Pods; `-hccs_ping` to the vNIC inside an A3 Super Pod."""
    sdev, ddev = src.devices.get(pair.src_device), dst.devices.get(pair.dst_device)
    if ddev is None or sdev is None:
        return "ping", None
    if soc == "a3" and not roce_only and sdev.super_pod_id is not None and sdev.super_pod_id == ddev.super_pod_id:
        return "hccs_ping", ddev.vnic_ip
    return "ping", ddev.ip


def lanes(items: list[tuple[Pair, str, str]], parallel: int | None) -> list[list[int]]:
    """Indexes of one node's pings split into lanes that run at once, each lane one ping after
    another. Default: one lane per sending device. `parallel` N up to the number of devices:
    N lanes, whole devices dealt to the least-loaded lane (still one ping per device in flight);
    above that, the pings are dealt round-robin (a device then has several in flight)."""
    by_dev: dict[int, list[int]] = defaultdict(list)
    for i, (p, _kind, _addr) in enumerate(items):
        by_dev[p.src_device].append(i)
    if parallel is None or parallel == len(by_dev):
        return [by_dev[d] for d in sorted(by_dev)]
    if parallel < len(by_dev):
        out: list[list[int]] = [[] for _ in range(parallel)]
        for d in sorted(by_dev, key=lambda d: (-len(by_dev[d]), d)):
            min(out, key=len).extend(by_dev[d])
        return [lane for lane in out if lane]
    flat = [i for d in sorted(by_dev) for i in by_dev[d]]
    return [flat[k::parallel] for k in range(min(parallel, len(flat)))]


def ping_script(items: list[tuple[Pair, str, str]], parallel: int | None) -> str:
    """The node-side ping script: every lane a background `lane` of quoted words, `wait`, then
    the lanes' output (playbooks/network_ping.sh)."""
    calls = []
    for k, lane in enumerate(lanes(items, parallel)):
        words = " ".join(f"{i} {items[i][0].src_device} {items[i][1]} {items[i][2]}" for i in lane)
        calls.append(f"lane {k} {shlex.quote(words)} &\n")
    return node_script("network_ping.sh") + "".join(calls) + "wait\nfinish\n"


async def _run_pings(cluster: Cluster, plan: Plan, facts: dict[str, NodeFacts], pairs: list[Pair],
                     roce_only: set[tuple[str, str]], lost: dict[str, str] | None = None,
                     parallel: int | None = None) -> list[Ping]:
    """Pings from each source node in one script. A source node lost meanwhile goes to `lost`
    (unreachable, exit 4), not into the results as failed pings."""
    lost = {} if lost is None else lost
    soc = plan.inventory.soc
    jobs: dict[str, list[tuple[Pair, str, str]]] = defaultdict(list)
    results: list[Ping] = []
    for pair in pairs:
        kind, addr = ping_target(soc, facts[pair.src], facts[pair.dst], pair, (pair.src, pair.dst) in roce_only)
        if addr is not None and not _plain_ip(addr):  # node-reported text goes into the script
            results.append(Ping(pair.src, pair.src_device, pair.dst, pair.dst_device, kind, "", False,
                                f"{pair.dst} dev {pair.dst_device} reports {addr!r:.40}, not an IPv4 address"))
            continue
        if addr is None:
            results.append(Ping(pair.src, pair.src_device, pair.dst, pair.dst_device, kind, "", False,
                                f"{pair.dst} dev {pair.dst_device} has no {'vNIC ' if kind == 'hccs_ping' else ''}IP to ping"))
        else:
            jobs[pair.src].append((pair, kind, addr))

    async def one(node: str) -> list[Ping]:
        items = jobs[node]
        outcome = await cluster.run_script(node, ping_script(items, parallel), timeout=PING_TIMEOUT,
                                           capture=PARSED_CAPTURE)
        if outcome.cause is Cause.UNREACHABLE:
            lost[node] = outcome.reason
            return []
        sections = parse_sections(outcome.stdout)
        by_tag = {name.split()[-1]: sec for name, sec in sections.items() if name.startswith("ping ")}
        out = []
        for i, (p, kind, addr) in enumerate(items):
            sec = by_tag.get(str(i))
            if sec is None:
                res = P.PingResult(False, None, None, None, outcome.reason or "no result from the node")
                busy = 0
            else:
                res = P.ping(sec.text, sec.rc if sec.rc is not None else -1)
                busy = sec.busy
                if sec.rc == 11:
                    res.detail = f"hccn_tool stayed busy after {busy} retries"
            out.append(Ping(p.src, p.src_device, p.dst, p.dst_device, kind, addr, res.ok, res.detail, busy))
        return out

    for chunk in (await cluster.each(list(jobs), one)).values():
        results.extend(chunk)
    return [p for p in results if p.src not in lost]


@functools.lru_cache(maxsize=4096)  # every address is pinged from many nodes
def _plain_ip(addr: str) -> bool:
    import ipaddress

    try:
        return str(ipaddress.IPv4Address(addr)) == addr
    except ValueError:
        return False


def _unsupported_hccs(pings: list[Ping]) -> set[tuple[str, str]]:
    return {(p.src, p.dst) for p in pings if p.kind == "hccs_ping" and "not supported" in p.observed}


def ping_checks(pings: list[Ping], nodes: Iterable[str]) -> list[Check]:
    """One check per node pair, on the pair's first node in `nodes` order: each device pair is
    pinged once from whichever end had fewer to send, and the reply proves both directions, so
    `p0 -> d1` and `d1 -> p0` pings are one finding. The worst device pair is named with its
    sending end, and the fix runs there."""
    order = {n: i for i, n in enumerate(nodes)}
    by_pair: dict[tuple[str, str], list[Ping]] = defaultdict(list)
    for p in pings:
        a, b = sorted((p.src, p.dst), key=lambda n: (order.get(n, len(order)), n))
        by_pair[(a, b)].append(p)
    out = []
    for (a, b), items in by_pair.items():
        bad = [p for p in items if not p.ok]
        if not bad:
            out.append(Check(a, "ping", "ok", f"{len(items)}/{len(items)} pings to {b} ok"))
            continue
        worst = next((p for p in bad if p.src == a), bad[0])
        tool = "-hccs_ping" if worst.kind == "hccs_ping" else "-ping"
        sender = "" if worst.src == a else f"{worst.src} "
        device = worst.src_device if worst.src == a else worst.dst_device  # a's end of the pair
        out.append(Check(a, "ping", "fail",
                         f"{len(bad)}/{len(items)} pings to {b} failed; {sender}dev {worst.src_device} -> "
                         f"{worst.dst} dev {worst.dst_device} ({worst.address or 'no address'}): {worst.observed}",
                         f"{a} cannot reach {b} over the NPU network",
                         f"on {worst.src}: hccn_tool -i {worst.src_device} {tool} -g address {worst.address or '<ip>'}; "
                         "check links, subnets, switch and TLS on both ends", device))
    return out


async def collect(cluster: Cluster, plan: Plan, nodes: list[str]
                  ) -> tuple[dict[str, NodeFacts], dict[str, str], dict[str, Outcome]]:
    """Facts per node; the unreachable (node -> reason); and the nodes whose collection script
    did not run or gave nothing (sudo refused, no channel, timed out) with their outcome."""
    soc = plan.inventory.soc

    async def one(node: str) -> tuple[Outcome, NodeFacts | None]:
        """A node's outcome, parsed as soon as it is in (while the others still run)."""
        outcome = await cluster.run_script(node, collect_script(soc, plan.devices_used(node)),
                                           timeout=COLLECT_TIMEOUT, capture=PARSED_CAPTURE)
        if outcome.cause is Cause.UNREACHABLE or (not outcome.ok and not parse_sections(outcome.stdout)):
            return outcome, None
        return outcome, node_facts(node, outcome.stdout, plan.devices_used(node))

    facts, unreachable, broken = {}, {}, {}
    results = await cluster.each([n for n in nodes if n not in cluster.unreachable], one)
    for node, (outcome, f) in results.items():
        if outcome.cause is Cause.UNREACHABLE:
            unreachable[node] = outcome.reason
        elif f is None:
            broken[node] = outcome
        else:
            facts[node] = f
    return facts, unreachable, broken


def collect_checks(broken: dict[str, Outcome]) -> list[Check]:
    """A collection that could not run says why (its cause and reason), not 'no Chip Count'."""
    out = []
    for node, o in broken.items():
        what = {Cause.COULD_NOT_RUN: "the collection could not run on the node",
                Cause.TIMED_OUT: f"the collection did not finish within {COLLECT_TIMEOUT:g}s",
                Cause.INTERRUPTED: "the collection was interrupted"}.get(
            o.cause, f"the collection script failed (rc {o.rc}) before printing anything")
        fix = ("give the ssh user passwordless sudo (sudo -n) on the node" if "sudo" in o.reason
               else "run it by hand: deploy exec INVENTORY --nodes " + node + " -- npu-smi info -l")
        out.append(Check(node, "collect", "fail", P.first_line(o.reason) or f"rc {o.rc}", what, fix))
    return out


def judge(plan: Plan, facts: dict[str, NodeFacts], busy_is_error: bool) -> tuple[list[Check], list[str]]:
    checks: list[Check] = []
    devices = {n: plan.devices_used(n) for n in facts}
    for node, f in facts.items():
        checks += node_checks(node, plan.inventory.soc, f, devices[node], busy_is_error)
    good = {n: f for n, f in facts.items() if f.soc == plan.inventory.soc}
    more, summary = cluster_checks(good, devices)
    return checks + more, summary


async def fix_tls(cluster: Cluster, facts: dict[str, NodeFacts], devices: dict[str, list[int]],
                  target: int, lost: dict[str, str] | None = None) -> list[str]:
    """Set every used device whose TLS switch differs to `target`; returns what changed (and
    what failed to change, per device). A node lost meanwhile goes to `lost`."""
    lost = {} if lost is None else lost

    async def one(node: str) -> list[str]:
        wrong = [d for d in devices[node] if d in facts[node].devices and facts[node].devices[d].tls not in (None, target)]
        if not wrong:
            return []
        script = node_script("") + "".join(f"echo '@@tls-set {d}'; h -i {d} -tls -s enable {target}\n" for d in wrong)
        outcome = await cluster.run_script(node, script, timeout=COLLECT_TIMEOUT)
        if outcome.cause is Cause.UNREACHABLE:
            lost[node] = outcome.reason
        secs = parse_sections(outcome.stdout)
        done = []
        for d in wrong:
            sec = secs.get(f"tls-set {d}")
            ok = sec is not None and sec.rc == 0
            state = "set" if ok else f"FAILED ({P.first_line(sec.text) if sec else outcome.reason})"
            done.append(f"{node} dev {d}: tls {1 - target} -> {target} {state}")
        return done

    changes: list[str] = []
    for chunk in (await cluster.each(list(facts), one)).values():
        changes += chunk
    return changes


async def check_network(plan: Plan, cluster: Cluster, nodes: list[str] | None = None, *, ping: bool = True,
                        fix_tls_to: int | None = None, busy_is_error: bool = False,
                        progress: Progress | None = None, ping_parallel: int | None = None) -> NetworkReport:
    """The whole check as a value. Nodes default to the plan's; each connects on first use.

    `ping_parallel`: pings in flight per node (None: one per sending device; see `lanes`).
    Interrupted (Ctrl-C), it returns what it has so far with `interrupted` set."""
    say = progress or (lambda _msg: None)
    nodes = nodes or plan.nodes
    report = NetworkReport(nodes=list(nodes))

    def done() -> NetworkReport:
        report.unreachable.update({n: cluster.unreachable[n].reason for n in nodes
                                   if n in cluster.unreachable and n not in report.unreachable})
        report.interrupted = cluster.interrupted
        return report

    say(f"collecting NPU facts from {len(nodes)} nodes")
    facts, lost, broken = await collect(cluster, plan, nodes)
    report.unreachable.update(lost)
    if cluster.interrupted:
        return done()
    if fix_tls_to is not None:
        devices = {n: plan.devices_used(n) for n in facts}
        report.tls_changes = await fix_tls(cluster, facts, devices, fix_tls_to, report.unreachable)
        if cluster.interrupted:
            return done()
        if report.tls_changes:
            say(f"TLS changed on {len(report.tls_changes)} devices; re-checking")
            facts, lost, broken2 = await collect(cluster, plan, [n for n in facts if n not in report.unreachable])
            report.unreachable.update(lost)
            broken.update(broken2)
            if cluster.interrupted:
                return done()
    report.facts = facts
    report.checks, report.summary = judge(plan, facts, busy_is_error)
    report.checks += collect_checks(broken)
    if ping:
        pairs = [p for p in planned_pairs(plan, list(facts)) if p.src in facts and p.dst in facts]
        say(f"pinging {len(pairs)} planned device pairs")
        pings = await _run_pings(cluster, plan, facts, pairs, set(), report.unreachable, ping_parallel)
        fallback = _unsupported_hccs(pings)
        if fallback and not cluster.interrupted:  # 800T A3 boards have no -hccs_ping: use RoCE
            redo = [p for p in pairs if (p.src, p.dst) in fallback]
            keep = [p for p in pings if (p.src, p.dst) not in fallback]
            pings = keep + await _run_pings(cluster, plan, facts, redo, fallback, report.unreachable,
                                                 ping_parallel)
        report.pings = [p for p in pings if p.src not in report.unreachable]
        report.checks += ping_checks(report.pings, plan.inventory.nodes)
    return done()
