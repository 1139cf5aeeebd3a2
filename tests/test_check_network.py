"""`deploy check-network` end to end: the real CLI (a subprocess) against `deploy sim`.

Each fault is injected with `deploy sim fault`, found with the node and device named and the
right fix printed, then the node's state is restored for the next test.
"""
from __future__ import annotations

import json
import subprocess
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
    """A sim of an inventory text, sharing the tests' state folder."""

    def __init__(self, text: str, mode: str):
        super().__init__(text, mode, prefix="cn-sim-", state=False)

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
    rep = report(a2.check("--json"))
    assert rep["ok"] and rep["exit_code"] == 0
    # p0 -> d0, p0 -> d1 (P/D) and d0 <-> d1 (decode group): 8 devices each
    assert len(rep["pings"]) == 8 * 4
    assert all(p["ok"] and p["kind"] == "ping" for p in rep["pings"])
    assert any(c["check"] == "tls" and c["device"] == 7 for c in rep["checks"])


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
    assert all(p["ok"] for p in rep["pings"] if p["dst"] != "d1" or p["src"] != "p0")
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
