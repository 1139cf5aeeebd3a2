"""Issue 8's check-network items: the TLS fix names the majority's value, a node lost during the
pings is unreachable (exit 4), a collection that could not run says why, the state folder failing
loses nothing, Ctrl-C kills what was started on the nodes, a malformed ssh.jump is exit 2."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_check_network import A2_INV, Sim, deploy

from orchestrator.checks.facts import DeviceFacts, NodeFacts
from orchestrator.checks.network import check_network
from orchestrator.checks.rules import cluster_checks
from orchestrator.plan import make_plan
from orchestrator.transport import Cause, Cluster

ROOT = Path(__file__).resolve().parents[1]


def test_tls_fix_for_a_minority_device_sets_the_majority_value():
    facts = {}
    for n in ("p0", "d0"):
        f = NodeFacts(n, {})
        for d in range(4):
            f.devices[d] = DeviceFacts(d, {}, tls=1)
        facts[n] = f
    facts["d0"].devices[2].tls = 0  # most devices are on; one is off
    checks, summary = cluster_checks(facts, {"p0": [0, 1, 2, 3], "d0": [0, 1, 2, 3]})
    [bad] = [c for c in checks if c.check == "tls"]
    assert (bad.node, bad.device) == ("d0", 2)
    assert "hccn_tool -i 2 -tls -s enable 1" in bad.fix and "--fix-tls on" in bad.fix
    assert "enable 0" not in bad.fix
    assert summary == ["tls off: d0 dev 2; on: everywhere else"]


def test_collection_that_could_not_run_says_why(farm):
    farm.add("n0")
    (farm.bin / "sudo").write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    inv = farm.inventory(sudo=True)
    plan = make_plan(inv)

    async def main():
        async with Cluster(inv) as c:
            return await check_network(plan, c, ping=False)

    report = asyncio.run(main())
    [bad] = report.failed
    assert (bad.node, bad.check) == ("n0", "collect")
    assert "could not run" in bad.reason and "sudo" in bad.observed
    assert "Chip Count" not in bad.reason
    assert report.exit_code == 1


def test_malformed_jump_is_exit_2(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text(A2_INV.replace("soc: a2", "soc: a2\nssh: {jump: 'root@[::1'}"))
    p = deploy("check-network", str(inv), "--json")
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    assert [x["field"] for x in doc["problems"]] == ["ssh.jump"]


@pytest.fixture(scope="module")
def a2():
    sim = Sim(A2_INV, "embedded")
    yield sim
    sim.down()


def test_node_lost_during_pings_is_unreachable(a2, monkeypatch):
    from orchestrator.inventory import load_inventory

    inv = load_inventory(a2.inventory)
    plan = make_plan(inv)
    real = Cluster.run_script
    lost = []

    async def run_script(self, node, script, **kw):
        if "the planned pings from this node" in script and node == "d1" and not lost:  # d1 dies as its pings start
            lost.append(node)
            await asyncio.to_thread(a2.fault, "d1", "unreachable")
            for _ in range(100):  # until the drop has reached this connection
                if (await self.run(node, ["true"])).cause is Cause.UNREACHABLE:
                    break
                await asyncio.sleep(0.1)
        return await real(self, node, script, **kw)

    monkeypatch.setattr(Cluster, "run_script", run_script)

    async def main():
        async with Cluster(inv) as c:
            return await check_network(plan, c)

    try:
        report = asyncio.run(main())
    finally:
        a2.restore()
    assert lost == ["d1"]
    assert set(report.unreachable) == {"d1"} and report.exit_code == 4
    assert not [p for p in report.pings if p.src == "d1"]  # not counted as failed pings


def test_fix_tls_with_an_unwritable_state_folder_reports_the_change(a2, tmp_path):
    a2.fault("d0", "tls-on", 3)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = dict(os.environ, DEPLOY_STATE_DIR=str(blocker), PYTHONPATH=str(ROOT))
    try:
        p = subprocess.run([sys.executable, "-m", "orchestrator", "check-network", a2.inventory,
                            "--no-ping", "--fix-tls"], capture_output=True, text=True, env=env,
                           timeout=120)
    finally:
        a2.restore()
    assert p.returncode == 1, p.stdout + p.stderr
    assert "d0 dev 3: tls 1 -> 0 set" in p.stdout
    assert str(blocker) in p.stderr and "Traceback" not in p.stderr


def test_ctrl_c_stops_the_collection_on_the_nodes(farm, tmp_path):
    farm.add("n0"), farm.add("n1")
    marker = f"{os.getpid() % 1000}.4242"
    (farm.bin / "npu-smi").write_text(f"#!/bin/sh\nexec sleep {marker}\n")
    (farm.bin / "npu-smi").chmod(0o755)
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    env = dict(os.environ, DEPLOY_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "orchestrator", "check-network", str(inv), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    want = f"sleep\0{marker}\0".encode()

    def sleeping() -> int:
        n = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if open(f"/proc/{pid}/cmdline", "rb").read() == want and \
                        open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                    n += 1
            except OSError:
                pass
        return n

    deadline = time.monotonic() + 30
    while sleeping() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeping() == 2
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    doc = json.loads(out)
    assert doc["interrupted"] == 2 and doc["exit_code"] == 130 and doc["ok"] is False
    deadline = time.monotonic() + 10
    while sleeping() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeping() == 0
