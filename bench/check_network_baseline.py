"""The manual way, as the baseline for `deploy check-network` (issue 13, "Done when").

    python bench/check_network_baseline.py SIM_INVENTORY [--collect-only] [--shell bash|sh]

What an operator with a good fan-out tool does today: plain asyncssh, one connection per node,
one shell script per node on stdin, output collected, nothing judged. The script is the seeds'
own "Verify Multi-Node Communication" loops for the devices the plan uses on that node
(Distributed DP Server With Large EP, and vllm-ascend's installation guide: `-lldp -g | grep
Ifname`, `-link -g`, `-net_health -g`, `-netdetect -g`, `-gateway -g`, `cat /etc/hccn.conf`,
`-ip -g`, `-vnic -g`, `-tls -g | grep switch`, `npu-smi info -t spod-info -i N -c C`, plus
`npu-smi info`), then the planned pings one after another, as the seeds' loops run them
(`hccn_tool -i N -hccs_ping|-ping -g address ...`). The pings are the ordered pairs
check-network pinged before issue 13 (`old_planned_pairs`: both directions inside a group,
prefill -> decode for P/D); their addresses come from the simulated nodes' state (an operator
knows the IP plan), with check-network's own rule: `-hccs_ping` to the vNIC inside an A3 Super
Pod, RoCE `-ping` otherwise. The loops are bash (`for i in {0..15}`), so the script runs under
bash (`--shell sh`: the same loops under dash, for comparison).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import asyncssh
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.checks.network import Pair, group_devices
from orchestrator.plan import Plan, load_and_plan


def old_planned_pairs(plan: Plan, nodes: list[str]) -> list[Pair]:
    """The pairs check-network pinged before issue 13 (kept here verbatim as the baseline's
    ping list): same-index devices across the nodes of each group, in both directions, and
    device i of every prefill node to device i of every decode node."""
    selected = set(nodes)
    pairs: set[Pair] = set()
    by_group = group_devices(plan)
    for g in plan.inventory.groups:
        members = [n for n in g.nodes if n in selected]
        for a in members:
            for b in members:
                if a == b:
                    continue
                da, db = by_group.get((g.name, a), []), by_group.get((g.name, b), [])
                pairs.update(Pair(a, x, b, y) for x, y in zip(da, db))
    prefill = [n for n in plan.nodes if n in selected and any(r.node == n and r.role == "prefill" for r in plan.ranks)]
    decode = [n for n in plan.nodes if n in selected and any(r.node == n and r.role == "decode" for r in plan.ranks)]
    for p in prefill:
        for d in decode:
            if p != d:
                pairs.update(Pair(p, x, d, y) for x, y in zip(plan.devices_used(p), plan.devices_used(d)))
    order = {n: i for i, n in enumerate(plan.inventory.nodes)}
    return sorted(pairs, key=lambda q: (order[q.src], q.src_device, order[q.dst], q.dst_device))


def verify_loops(soc: str, devices: list[int]) -> str:
    """The seeds' per-node verification loops over the devices the plan uses."""
    devs = " ".join(map(str, devices))
    lines = [f"for i in {devs}; do hccn_tool -i $i -lldp -g | grep Ifname; done"]
    lines += [f"for i in {devs}; do hccn_tool -i $i -{c} -g; done" for c in ("link", "net_health", "netdetect", "gateway")]
    lines.append('cat "${HCCN_CONF:-/etc/hccn.conf}"')  # the sim's /etc/hccn.conf
    lines.append(f"for i in {devs}; do hccn_tool -i $i -ip -g; done")
    if soc == "a3":
        lines.append(f"for i in {devs}; do hccn_tool -i $i -vnic -g; done")
        chips = " ".join(f"{d // 2},{d % 2}" for d in devices)
        lines.append(f"for c in {chips}; do npu-smi info -t spod-info -i ${{c%,*}} -c ${{c#*,}}; done")
    lines.append(f"for i in {devs}; do hccn_tool -i $i -tls -g; done | grep switch")
    lines.append("npu-smi info")
    return "\n".join(lines) + "\n"


def ping_lines(soc: str, pairs: list[Pair], states: dict[str, dict]) -> dict[str, str]:
    """node -> its pings, one `hccn_tool` line each, in order."""
    out: dict[str, list[str]] = {}
    for p in pairs:
        s, d = states[p.src], states[p.dst]
        dd = next(x for x in d["devices"] if x["id"] == p.dst_device)
        same_pod = soc == "a3" and s.get("super_pod_id") is not None and s["super_pod_id"] == d.get("super_pod_id")
        kind, addr = ("hccs_ping", dd["vnic_ip"]) if same_pod else ("ping", dd["ip"])
        out.setdefault(p.src, []).append(f"hccn_tool -i {p.src_device} -{kind} -g address {addr}")
    return {n: "\n".join(v) + "\n" for n, v in out.items()}


def scripts(inventory: str, sim_dir: str, collect_only: bool) -> tuple[dict, dict[str, str], int]:
    """(the inventory's raw YAML, node -> its whole script, number of pings)."""
    plan = load_and_plan(inventory)
    raw = yaml.safe_load(Path(inventory).read_text())
    soc = plan.inventory.soc
    states = {n: json.loads((Path(sim_dir) / "nodes" / n / "state.json").read_text()) for n in plan.nodes}
    pings = {} if collect_only else ping_lines(soc, old_planned_pairs(plan, plan.nodes), states)
    out = {n: verify_loops(soc, plan.devices_used(n)) + pings.get(n, "") for n in plan.nodes}
    return raw, out, sum(s.count("\n") for s in pings.values())


async def run(raw: dict, node_scripts: dict[str, str], shell: str = "bash") -> dict:
    """Every node's script over one asyncssh connection; returns wall, bytes and exit codes."""
    ssh = raw["ssh"]
    key = asyncssh.read_private_key(ssh["identity_file"])
    known = asyncssh.read_known_hosts(ssh["known_hosts"])

    async def one(node: str) -> tuple[int | None, int]:
        host = raw["nodes"][node]["host"]
        async with asyncssh.connect(host, ssh["port"], username=ssh["user"], client_keys=[key],
                                    known_hosts=known) as conn:
            r = await conn.run(f"{shell} -s", input=node_scripts[node], check=False)
            return r.exit_status, len(r.stdout or "")

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(n) for n in node_scripts))
    wall = time.perf_counter() - t0
    return {"wall": wall, "nodes": len(node_scripts), "bytes": sum(b for _, b in results),
            "exit": sorted({rc for rc, _ in results}, key=str)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inventory", help="the sim's inventory (deploy sim up prints its path)")
    ap.add_argument("--sim-dir", help="the sim's directory (default: the inventory's folder)")
    ap.add_argument("--collect-only", action="store_true", help="only the verification loops, no pings")
    ap.add_argument("--shell", choices=["bash", "sh"], default="bash")
    a = ap.parse_args()
    raw, node_scripts, pings = scripts(a.inventory, a.sim_dir or str(Path(a.inventory).parent), a.collect_only)
    res = asyncio.run(run(raw, node_scripts, a.shell))
    print(json.dumps(res | {"pings": pings}))


if __name__ == "__main__":
    main()
