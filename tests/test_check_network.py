"""`deploy check-network` end to end: the real CLI (a subprocess) against `deploy sim`.

Each fault is injected with `deploy sim fault`, found with the node and device named and the
right fix printed, then the node's state is restored for the next test.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import simcluster

A2_INV = """\
name: cn-a2
soc: a2
nodes:
  p0: {host: 10.9.0.1, nic: eth0}
  d0: {host: 10.9.0.2, nic: eth0}
  d1: {host: 10.9.0.3, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.18.0}
model: {path: /weights/m, served_name: m}
kv_transfer: {connector: MooncakeConnectorV1}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 1, tp: 8, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0, d1], dp: 16, tp: 1, kv_port: 40100}
proxy: {node: p0, port: 1999}
"""

A3_INV = """\
name: cn-a3
soc: a3
nodes:
  p0: {host: 10.9.1.1, nic: eth0}
  d0: {host: 10.9.1.2, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.18.0-a3}
model: {path: /weights/m}
kv_transfer: {connector: MooncakeConnectorV1}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 1, tp: 16, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0], dp: 16, tp: 1, kv_port: 40100}
proxy: {node: p0, port: 1999}
"""

MODES = simcluster.MODES


def deploy(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    return simcluster.deploy(*args, env=simcluster.SHARED_ENV, check=check, timeout=timeout)


class Sim(simcluster.Sim):
    """A sim of an inventory text, sharing the tests' state folder; `up_args` go to `deploy sim up`."""

    def __init__(self, text: str, mode: str, *up_args: str):
        super().__init__(text, mode, prefix="cn-sim-", state=False, up_args=up_args)

    def log_sizes(self) -> dict[str, int]:
        """Bytes in every node's ping log (pings/log: one line per ping the node sent)."""
        return {n.name: (n / "pings" / "log").stat().st_size for n in (self.dir / "sim" / "nodes").iterdir()}

    def pings_since(self, sizes: dict[str, int]) -> list[tuple[str, int, str, str, str]]:
        """(node, device, -ping|-hccs_ping, address, rc) of every ping sent since `log_sizes`."""
        out = []
        for node, size in sorted(sizes.items()):
            with open(self.dir / "sim" / "nodes" / node / "pings" / "log") as f:
                f.seek(size)
                for line in f.read().splitlines():
                    dev, cmd, addr, rc = line.split()
                    out.append((node, int(dev), cmd, addr, rc))
        return out

    def owner(self, addr: str) -> tuple[str, int]:
        """The (node, device) whose RoCE or vNIC address `addr` is, from the nodes' state.json."""
        for n in (self.dir / "sim" / "nodes").iterdir():
            for d in json.loads((n / "state.json").read_text())["devices"]:
                if addr in (d["ip"], d.get("vnic_ip")):
                    return n.name, d["id"]
        raise AssertionError(f"no simulated device has {addr}")

    def check(self, *args: str) -> subprocess.CompletedProcess:
        return deploy("check-network", self.inventory, *args)


@pytest.fixture(scope="module", params=MODES)
def a2(request):
    sim = Sim(A2_INV, request.param)
    yield sim
    sim.down()


@pytest.fixture
def a2c(a2):
    """The A2 sim, restored to healthy after the test."""
    yield a2
    a2.restore()


def report(p: subprocess.CompletedProcess) -> dict:
    return json.loads(p.stdout)


def failing(rep: dict) -> list[dict]:
    return [c for c in rep["checks"] if c["status"] == "fail"]


def test_healthy_a2_is_green(a2):
    p = a2.check()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "network OK: 3 nodes" in p.stdout
    before = a2.log_sizes()
    rep = report(a2.check("--json"))
    assert rep["ok"] and rep["exit_code"] == 0
    # p0 - d0, p0 - d1 (P/D) and d0 - d1 (decode group), device i with device i: each unordered
    # pair once (a reply proves both directions; this used to ping d0 <-> d1 both ways, 32 pings)
    assert len(rep["pings"]) == 8 * 3
    assert all(p["ok"] and p["kind"] == "ping" for p in rep["pings"])
    assert any(c["check"] == "tls" and c["device"] == 7 for c in rep["checks"])
    # what the simulated nodes were asked, from their own ping logs
    sent = a2.pings_since(before)
    assert len(sent) == 24 and all(rc == "0" for *_, rc in sent)
    pairs = [frozenset({(src, dev), a2.owner(addr)}) for src, dev, _cmd, addr, rc in sent]
    assert len(set(pairs)) == 24  # none twice, in either direction
    want = {frozenset({(a, i), (b, i)}) for a, b in (("p0", "d0"), ("p0", "d1"), ("d0", "d1")) for i in range(8)}
    assert set(pairs) == want
    assert {src for src, *_ in sent} == {"p0", "d0", "d1"}  # the sending is spread over the nodes
    # one check per node pair, on its first node: the matrix shows each pair in both cells
    assert sorted(c["observed"] for c in rep["checks"] if c["check"] == "ping") == [
        "8/8 pings to d0 ok", "8/8 pings to d1 ok", "8/8 pings to d1 ok"]


@pytest.mark.parametrize("mode", MODES)
def test_healthy_a3_is_green(mode):
    sim = Sim(A3_INV, mode)
    try:
        p = sim.check("--json")
        assert p.returncode == 0, p.stdout + p.stderr
        rep = report(p)
        assert len(rep["pings"]) == 16
        assert {p["kind"] for p in rep["pings"]} == {"hccs_ping"}  # one Super Pod: HCCS to the vNIC
        assert {c["check"] for c in rep["checks"]} >= {"vnic", "spod", "link", "tls", "hccn_conf"}
    finally:
        sim.down()


def test_link_down(a2c):
    a2c.fault("d1", "link-down", 5)
    p = a2c.check()
    assert p.returncode == 1
    rep = report(a2c.check("--json"))
    link = [c for c in failing(rep) if c["check"] == "link"]
    assert [(c["node"], c["device"]) for c in link] == [("d1", 5)]
    assert link[0]["observed"] == "link status: DOWN"
    assert "hccn_tool -i 5 -optical -g" in link[0]["fix"]
    assert "link status: DOWN" in p.stdout and "d1" in p.stdout


def test_net_health_unreachable(a2c):
    a2c.fault("p0", "net-health:Unreachable", 2)
    rep = report(a2c.check("--json", "--no-ping"))
    bad = failing(rep)
    assert [(c["node"], c["device"], c["check"]) for c in bad] == [("p0", 2, "net_health")]
    assert bad[0]["observed"] == "net health status: Unreachable"
    assert "netdetect" in bad[0]["fix"] and "gateway" in bad[0]["fix"]


def test_tls_on_one_device_then_fix_tls(a2c):
    a2c.fault("d0", "tls-on", 3)
    p = a2c.check("--no-ping")
    assert p.returncode == 1
    assert "tls on: d0 dev 3; off: everywhere else" in p.stdout
    assert "hccn_tool -i 3 -tls -s enable 0" in p.stdout
    fixed = a2c.check("--no-ping", "--fix-tls")
    assert fixed.returncode == 0, fixed.stdout
    assert "d0 dev 3: tls 1 -> 0 set" in fixed.stdout
    again = a2c.check("--json", "--no-ping")  # a second, independent run
    assert again.returncode == 0
    assert report(again)["tls_changes"] == []


def test_no_device_ip(a2c):
    a2c.fault("d0", "no-ip", 4)
    p = a2c.check("--json")
    assert p.returncode == 1
    bad = failing(report(p))
    ip = [c for c in bad if c["check"] == "ip"]
    assert [(c["node"], c["device"]) for c in ip] == [("d0", 4)]
    assert "Get ipconf failed, because no ip was preset there!" in ip[0]["observed"]
    assert "rc 13" in ip[0]["observed"]
    assert "hccn_tool -i 4 -ip -s address" in ip[0]["fix"]
    # pings towards the device without an IP fail too, naming it
    assert any(c["check"] == "ping" and "d0 dev 4" in c["observed"] for c in bad)


def test_hccn_conf_drift(a2c):
    a2c.fault("d1", "hccn-conf-drift", 6)
    rep = report(a2c.check("--json", "--no-ping"))
    bad = failing(rep)
    assert [(c["node"], c["device"], c["check"]) for c in bad] == [("d1", 6, "hccn_conf")]
    assert "live ipaddr:" in bad[0]["observed"] and "address_6=" in bad[0]["observed"]
    assert "address_6=" in bad[0]["fix"]


def test_ping_loss_between_two_nodes(a2c):
    a2c.fault("p0", "ping-loss:d1")
    p = a2c.check()
    assert p.returncode == 1
    rep = report(a2c.check("--json"))
    pings = [c for c in failing(rep) if c["check"] == "ping"]
    assert [c["node"] for c in pings] == ["p0"]
    assert "8/8 pings to d1 failed" in pings[0]["observed"]
    assert "packet loss" in pings[0]["observed"]
    # each p0 - d1 device pair is pinged once, from either end (the less loaded): all of them fail
    between = [p for p in rep["pings"] if {p["src"], p["dst"]} == {"p0", "d1"}]
    assert len(between) == 8 and not any(p["ok"] for p in between)
    assert all(p["ok"] for p in rep["pings"] if {p["src"], p["dst"]} != {"p0", "d1"})
    assert "8/8 failed" in p.stdout  # the matrix cell


def test_duplicate_device_ip(a2c):
    a2c.fault("d0", "dup-ip:d1", 1)
    rep = report(a2c.check("--json", "--no-ping"))
    dup = [c for c in failing(rep) if c["check"] == "ip_unique"]
    assert sorted((c["node"], c["device"]) for c in dup) == [("d0", 1), ("d1", 1)]
    assert any("also on d1 dev 1" in c["reason"] for c in dup)


def test_busy_is_retried_then_green(a2c):
    a2c.fault("d0", "busy:3")
    state = a2c.dir / "sim" / "nodes" / "d0" / "state.json"
    assert json.loads(state.read_text())["busy"] == 3  # the fault applied
    p = a2c.check("--json", "--no-ping")
    assert p.returncode == 0, p.stdout
    assert not failing(report(p))
    assert json.loads(state.read_text())["busy"] == 0  # all 3 busy answers were met and retried


def test_health_alarm(a2c):
    a2c.fault("p0", "health:Alarm", 0)
    rep = report(a2c.check("--json", "--no-ping"))
    bad = failing(rep)
    assert [(c["node"], c["device"], c["check"]) for c in bad] == [("p0", 0, "health")]
    assert bad[0]["observed"] == "Health Alarm"
    assert "npu-smi info -t health -i 0" in bad[0]["fix"]


def test_hbm_held_is_a_warning(a2c):
    a2c.fault("d1", "hbm-held", 2)
    p = a2c.check("--json", "--no-ping")
    assert p.returncode == 0  # busy device: a warning for check, an error for up
    warn = [c for c in report(p)["checks"] if c["status"] == "warn" and c["check"] == "hbm"]
    assert [(c["node"], c["device"]) for c in warn] == [("d1", 2)]
    assert "VLLM::EngineCore" in warn[0]["observed"] and "kill" in warn[0]["fix"]


def test_one_node_unreachable(a2c):
    a2c.fault("d1", "unreachable")
    p = a2c.check()
    assert p.returncode == 4
    assert "UNREACHABLE d1" in p.stdout
    rep = report(a2c.check("--json"))
    assert list(rep["unreachable"]) == ["d1"]
    checked = {c["node"] for c in rep["checks"]}
    assert checked == {"p0", "d0"}  # the others are still checked
    assert rep["pings"] and all(p["ok"] for p in rep["pings"])


def test_soc_mismatch(tmp_path, a2):
    inv = Path(a2.inventory).read_text().replace("soc: a2", "soc: a3")
    path = Path(a2.dir) / "a3-claim.yaml"
    path.write_text(inv.replace("tp: 8", "tp: 16"))
    rep = report(deploy("check-network", str(path), "--json", "--no-ping"))
    soc = [c for c in failing(rep) if c["check"] == "soc"]
    assert len(soc) == 3 and "the inventory says soc a3, the node is a2" in soc[0]["reason"]


def test_node_selection_and_usage_errors(a2):
    p = a2.check("--nodes", "role:decode", "--json")
    assert p.returncode == 0
    rep = report(p)
    assert rep["nodes"] == ["d0", "d1"] and {p["src"] for p in rep["pings"]} == {"d0", "d1"}
    assert a2.check("--nodes", "nope").returncode == 2


def test_versions_outlier_named_majority_once(a2c):
    a2c.fault("d0", "driver:24.1.0")
    a2c.fault("p0", "cann:8.0.RC3")
    p = a2c.check("--no-ping")
    assert p.returncode == 1
    assert "driver 25.2.0 on 2 nodes; differs on d0 (24.1.0)" in p.stdout
    assert "cann 8.3.RC1 on 2 nodes; differs on p0 (8.0.RC3)" in p.stdout
    assert "firmware 7.7.0.6.236 on all 3 nodes" in p.stdout
    rep = report(a2c.check("--json", "--no-ping"))
    assert sorted((c["node"], c["check"]) for c in failing(rep)) == [("d0", "driver"), ("p0", "cann")]


def test_ping_parallel_is_validated(a2):
    for bad in ("0", "65", "x"):
        p = a2.check("--ping-parallel", bad)
        assert p.returncode == 2 and "--ping-parallel" in p.stdout + p.stderr, (bad, p.stdout, p.stderr)
    before = a2.log_sizes()
    p = a2.check("--json", "--ping-parallel", "1")  # one ping at a time per node: same pairs, green
    assert p.returncode == 0, p.stdout
    assert len(report(p)["pings"]) == 24 and len(a2.pings_since(before)) == 24


A2_LAT_INV = """\
name: cn-a2-lat
soc: a2
nodes:
  p0: {host: 10.9.2.1, nic: eth0}
  d0: {host: 10.9.2.2, nic: eth0}
  d1: {host: 10.9.2.3, nic: eth0}
  d2: {host: 10.9.2.4, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.18.0}
model: {path: /weights/m, served_name: m}
kv_transfer: {connector: MooncakeConnectorV1}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 1, tp: 8, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0, d1, d2], dp: 24, tp: 1, kv_port: 40100}
proxy: {node: p0, port: 1999}
"""


def test_one_ping_in_flight_per_device_with_ping_latency():
    """With `sim up --ping-latency 1` a ping holds its device for a second and a second ping on
    that device answers "The device is occupied" (rc 11). The default schedule never meets that;
    `--ping-parallel` above the device count does, and its busy answers are retried."""
    sim = Sim(A2_LAT_INV, MODES[0], "--ping-latency", "1")
    try:
        nodes = sim.dir / "sim" / "nodes"
        assert json.loads((nodes / "d0" / "state.json").read_text())["ping_latency_s"] == 1.0
        before = sim.log_sizes()
        p = sim.check("--json")
        assert p.returncode == 0, p.stdout + p.stderr
        rep = report(p)
        sent = sim.pings_since(before)
        # device i of the 4 nodes pairwise: 6 pairs per device, 48 in all, some device sends 2
        assert len(rep["pings"]) == len(sent) == 48
        assert max(Counter((src, dev) for src, dev, *_ in sent).values()) == 2
        assert [rc for *_, rc in sent] == ["0"] * 48  # never busy: one ping in flight per device
        assert all(p["busy_retries"] == 0 for p in rep["pings"])

        before = sim.log_sizes()
        p = sim.check("--json", "--ping-parallel", "64")  # every ping at once
        assert p.returncode == 0, p.stdout + p.stderr
        rep = report(p)
        sent = sim.pings_since(before)
        assert "11" in {rc for *_, rc in sent}  # the sim answered busy to the second ping of a device
        assert sum(p["busy_retries"] for p in rep["pings"]) == sum(rc == "11" for *_, rc in sent) > 0
        assert all(p["ok"] for p in rep["pings"]) and len(rep["pings"]) == 48

        sim.fault("d0", "clear")  # a knob of `sim up`, not a fault: clear keeps it
        assert json.loads((nodes / "d0" / "state.json").read_text())["ping_latency_s"] == 1.0
    finally:
        sim.down()


def test_planned_pairs_once_each_and_spread_at_scale(tmp_path):
    """The bench's 64-node A3 P/D plan: every pair the plan's groups use (same-index devices in
    a group, prefill x decode) exactly once, in one direction, and no device sends more than the
    pairs force (936 pairs per device index over 64 nodes: 15)."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from check_network import inventory  # bench/check_network.py

    from orchestrator.checks.network import planned_pairs
    from orchestrator.plan import load_and_plan

    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(inventory(64, 16, 8)))
    plan = load_and_plan(str(path))
    pairs = planned_pairs(plan, plan.nodes)
    undirected = [frozenset({(p.src, p.src_device), (p.dst, p.dst_device)}) for p in pairs]
    assert len(set(undirected)) == len(undirected) == 16 * (16 * 48 + 6 * 28)
    prefill = [f"p{i}" for i in range(16)]
    decode = [f"d{i}" for i in range(48)]
    want = {frozenset({(p, i), (d, i)}) for p in prefill for d in decode for i in range(16)}
    for g in range(6):
        members = decode[g * 8:(g + 1) * 8]
        want |= {frozenset({(a, i), (b, i)}) for a in members for b in members if a < b for i in range(16)}
    assert set(undirected) == want
    per_device = Counter((p.src, p.src_device) for p in pairs)
    assert max(per_device.values()) == 15 and len(per_device) == 64 * 16
    assert pairs == planned_pairs(plan, plan.nodes)  # deterministic
