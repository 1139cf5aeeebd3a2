"""`deploy ranktable` end to end: the real CLI (a subprocess) against `deploy sim`, A2 and A3, in
both sshd modes. The tables are compared field by field with the simulated nodes' hardware
truth (DIR/nodes/<n>/state.json), not with our own parser's output; a fault is named by node
and device and leaves no file behind.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import simcluster

A2_INV = """\
name: rt-a2
soc: a2
nodes:
  p0: {host: 10.9.0.1, nic: eth0}
  d0: {host: 10.9.0.2, nic: eth0}
  d1: {host: 10.9.0.3, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.11.0}
model: {path: /weights/m, served_name: m}
kv_transfer: {connector: LLMDataDistCMgrConnector}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 2, tp: 4, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0, d1], dp: 4, tp: 2, devices: [4, 5, 6, 7], kv_port: 40100}
proxy: {node: p0, port: 1999}
"""

A3_INV = """\
name: rt-a3
soc: a3
nodes:
  p0: {host: 10.9.1.1, nic: eth0}
  d0: {host: 10.9.1.2, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.11.0-a3}
model: {path: /weights/m}
kv_transfer: {connector: LLMDataDistCMgrConnector}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 2, tp: 8, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0], dp: 4, tp: 2, kv_port: 40100}
proxy: {node: p0, port: 1999}
"""

MODES = simcluster.MODES
# (node, devices used in order) per role, from the inventories above
A2_PD = {"prefill": [("p0", list(range(8)))], "decode": [("d0", [4, 5, 6, 7]), ("d1", [4, 5, 6, 7])]}
A3_PD = {"prefill": [("p0", list(range(16)))], "decode": [("d0", list(range(8)))]}


def deploy(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    return simcluster.deploy(*args, env=simcluster.SHARED_ENV, check=check, timeout=timeout)


class Sim(simcluster.Sim):
    """A sim of an inventory text, sharing the tests' state folder."""

    def __init__(self, text: str, mode: str):
        super().__init__(text, mode, prefix="rt-sim-", state=False)

    def truth(self, node: str) -> dict:
        """The simulated node's hardware: address and per-device ip / vnic / sdid / pod."""
        st = json.loads((self.sim / "nodes" / node / "state.json").read_text())
        return st

    def address(self, node: str) -> str:
        return self.inv["nodes"][node]["host"]

    def ranktable(self, *args: str) -> subprocess.CompletedProcess:
        return deploy("ranktable", self.inventory, *args)


def _device(sim: Sim, node: str, dev: int) -> dict:
    st = sim.truth(node)
    return next(d for d in st["devices"] if d["id"] == dev)


def expected_pd(sim: Sim, layout: dict, a3: bool) -> dict:
    """The gen_ranktable.py table (vllm-ascend.md §1.3), built from the sim's hardware truth."""
    lists, cid, servers = {}, 0, []
    for role in ("prefill", "decode"):
        entries = []
        for node, devs in layout[role]:
            addr = sim.address(node)
            servers.append(addr) if addr not in servers else None
            st = sim.truth(node)
            for d in devs:
                dev = _device(sim, node, d)
                cid += 1
                e = {"server_id": addr, "device_id": str(d), "device_ip": dev["vnic_ip"] if a3 else dev["ip"]}
                if a3:
                    e["super_pod_id"] = str(st["super_pod_id"])
                    e["super_device_id"] = str(dev["sdid"])
                e["cluster_id"] = str(cid)
                entries.append(e)
        lists[role] = entries
    return {"version": "1.2", "server_count": str(len(servers)), "prefill_device_list": lists["prefill"],
            "decode_device_list": lists["decode"], "status": "completed"}


@pytest.fixture(scope="module", params=MODES)
def a2(request):
    sim = Sim(A2_INV, request.param)
    yield sim
    sim.down()


@pytest.fixture(scope="module", params=MODES)
def a3(request):
    sim = Sim(A3_INV, request.param)
    yield sim
    sim.down()


@pytest.fixture
def a2c(a2):
    yield a2
    a2.restore()


@pytest.fixture
def a3c(a3):
    yield a3
    a3.restore()


def test_a2_pd_table_matches_the_nodes(a2c, tmp_path):
    out = tmp_path / "ranktable.json"
    p = a2c.ranktable("-o", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    text = out.read_text()
    assert json.loads(text) == expected_pd(a2c, A2_PD, a3=False)
    assert f"sha256 {hashlib.sha256(text.encode()).hexdigest()}" in p.stderr
    assert not [f for f in tmp_path.iterdir() if f.name != "ranktable.json"], "temp files left behind"


def test_a2_hccl_table_v10(a2c, tmp_path):
    p = a2c.ranktable("--format", "hccl", "-o", str(tmp_path / "hccl.json"), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    table = json.loads((tmp_path / "hccl.json").read_text())
    assert rep["table"] == table and rep["ok"] and rep["format"] == "hccl"
    assert rep["hash"] == hashlib.sha256((tmp_path / "hccl.json").read_bytes()).hexdigest()
    assert table["version"] == "1.0" and table["server_count"] == "3" and "super_pod_list" not in table
    rank = 0
    for server, (node, devs) in zip(table["server_list"], [("p0", range(8)), ("d0", range(4, 8)), ("d1", range(4, 8))]):
        assert server["server_id"] == a2c.address(node)
        for entry, d in zip(server["device"], devs, strict=True):
            assert entry == {"device_id": str(d), "device_ip": _device(a2c, node, d)["ip"], "rank_id": str(rank)}
            rank += 1


@pytest.mark.parametrize("fmt", ["pd", "hccl"])
def test_a2_no_ip_names_node_and_device_and_writes_nothing(a2c, tmp_path, fmt):
    out = tmp_path / "ranktable.json"
    out.write_text("old table\n")   # an existing table is left as it was
    a2c.fault("d1", "no-ip", device=6)
    p = a2c.ranktable("--format", fmt, "-o", str(out))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "d1 dev 6: no device IP" in p.stderr
    assert "no ip was preset" in p.stderr       # hccn_tool's own line
    assert "nothing written" in p.stderr
    assert out.read_text() == "old table\n"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ranktable.json"]
    rep = json.loads(a2c.ranktable("--format", fmt, "-o", str(out), "--json").stdout)
    assert rep["exit_code"] == 1 and rep["table"] is None and rep["path"] is None
    assert [(q["node"], q["device"]) for q in rep["problems"]] == [("d1", 6)]


def test_a2_unreachable_node_exit_4_nothing_written(a2c, tmp_path):
    a2c.fault("d0", "unreachable")
    p = a2c.ranktable("-o", str(tmp_path / "t.json"))
    assert p.returncode == 4, p.stdout + p.stderr
    assert "d0: unreachable" in p.stderr
    assert not list(tmp_path.iterdir())


def test_a3_pd_table_uses_vnic_and_spod_info(a3c, tmp_path):
    out = tmp_path / "pd.json"
    p = a3c.ranktable("-o", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(out.read_text()) == expected_pd(a3c, A3_PD, a3=True)


def test_a3_hccl_table_v12(a3c, tmp_path):
    p = a3c.ranktable("--format", "hccl", "-o", "-")
    assert p.returncode == 0, p.stdout + p.stderr
    table = json.loads(p.stdout)
    assert table["version"] == "1.2" and table["server_count"] == "2"
    pods = {}
    for node in ("p0", "d0"):
        pods.setdefault(str(a3c.truth(node)["super_pod_id"]), []).append({"server_id": a3c.address(node)})
    assert table["super_pod_list"] == [{"super_pod_id": k, "server_list": v} for k, v in pods.items()]
    entries = [(s["server_id"], e) for s in table["server_list"] for e in s["device"]]
    assert [e["rank_id"] for _s, e in entries] == [str(i) for i in range(24)]
    node_of = {a3c.address(n): n for n in ("p0", "d0")}
    for server, e in entries:
        dev = _device(a3c, node_of[server], int(e["device_id"]))
        assert e["device_ip"] == dev["ip"] and e["super_device_id"] == str(dev["sdid"])


def test_a3_faults_named_nothing_written(a3c, tmp_path):
    a3c.fault("d0", "vnic-down", device=3)
    a3c.fault("p0", "no-ip", device=5)
    out = tmp_path / "t.json"
    pd = a3c.ranktable("-o", str(out))          # pd uses the vNIC: the vNIC fault
    assert pd.returncode == 1, pd.stdout + pd.stderr
    assert "d0 dev 3: vNIC link is DOWN" in pd.stderr
    hccl = a3c.ranktable("--format", "hccl", "-o", str(out))   # hccl uses the RoCE IP
    assert hccl.returncode == 1, hccl.stdout + hccl.stderr
    assert "p0 dev 5: no device IP" in hccl.stderr
    assert not list(tmp_path.iterdir())


def test_pd_format_needs_prefill_and_decode(tmp_path):
    inv = tmp_path / "serve.yaml"
    inv.write_text("name: rt-serve\nsoc: a2\nnodes:\n  n0: {host: 127.0.0.1, nic: eth0}\n"
                   "container: {image: x}\nmodel: {path: /weights/m}\n"
                   "groups:\n  - {name: s, role: serve, nodes: [n0], dp: 1, tp: 8}\n")
    p = deploy("ranktable", str(inv), "--format", "pd", "-o", str(tmp_path / "t.json"))
    assert p.returncode == 2
    assert "--format pd needs prefill and decode groups" in p.stderr
    assert not (tmp_path / "t.json").exists()


def test_large_ep_example_gets_its_pd_table():
    """inventories/large-ep-a3-2p2d.yaml on a simulated A3 cluster: the table LLMDataDist reads,
    prefill servers first (p0, p1: devices 0..7 each), then decode (d0, d1: 0..15 each)."""
    example = Path(__file__).resolve().parent.parent / "inventories" / "large-ep-a3-2p2d.yaml"
    sim = Sim(example.read_text(), MODES[-1])
    try:
        p = sim.ranktable("-o", "-")
        assert p.returncode == 0, p.stdout + p.stderr
        table = json.loads(p.stdout)
        layout = {"prefill": [("p0", list(range(8))), ("p1", list(range(8)))],
                  "decode": [("d0", list(range(16))), ("d1", list(range(16)))]}
        assert table == expected_pd(sim, layout, a3=True)
        assert table["server_count"] == "4"
        assert [e["cluster_id"] for e in table["prefill_device_list"] + table["decode_device_list"]] == \
            [str(i) for i in range(1, 49)]
    finally:
        sim.down()


def test_check_network_report_carries_the_facts_up_needs(a3c):
    """`up` runs check_network first: its report's facts build the same table as the CLI (no
    second SSH pass)."""
    import asyncio

    from orchestrator.checks.network import check_network
    from orchestrator.plan import load_and_plan
    from orchestrator.ranktable import build_table, validate_table
    from orchestrator.transport import Cluster

    plan = load_and_plan(a3c.inventory)

    async def go():
        async with Cluster(plan.inventory, plan.nodes) as cluster:
            await cluster.connect()
            return await check_network(plan, cluster, ping=False)

    report = asyncio.run(go())
    assert sorted(report.facts) == ["d0", "p0"]
    table = build_table(plan, report.facts, "pd")
    assert validate_table(plan, table, report.facts) == []
    assert table == json.loads(a3c.ranktable("-o", "-").stdout)
