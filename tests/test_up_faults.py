"""The fault matrix of issue 11, end to end: `deploy up` against `deploy sim` with one fault each.

Every test breaks one thing the way it breaks on a real cluster (`deploy sim fault`), runs the
real CLI, and asserts what the operator sees: the exit code, the node (and device) named, the fix
printed; then `teardown` converges and nothing is left on the nodes (no container, no NPU
process, no deployment port). The faults already covered by tests/test_up_sim.py (unreachable
node, link down, TLS mismatch, dead rank, port taken, HBM held, kv extra-config, dead backend,
node lost in teardown, Ctrl-C) are not repeated here.

Small on purpose: two or three nodes, a few ranks, 0.3 s model loads, readiness timeouts of a
few seconds. Only what SSH itself decides (auth, host keys, a node dropping off) runs in both
SSH server kinds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from simcluster import MODES, Sim

STARTUP = "0.3"

# p0: prefill (2 ranks x tp 4); d0: decode (2 ranks x tp 4); proxy on p0.
TINY = """\
name: faults-tiny
soc: a2
nodes:
  p0: {host: 10.1.0.1, nic: eth0}
  d0: {host: 10.1.0.2, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.18.0, mounts: ["/weights:/weights"]}
model: {path: /weights/m, served_name: m}
kv_transfer: {connector: MooncakeConnectorV1}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 2, tp: 4, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0], dp: 2, tp: 4, kv_port: 40100}
proxy: {node: p0, port: 1999}
readiness: {timeout: 60, restarts: 1}  # the node-lost test waits on a 60 s load
"""

# the decode group spans two nodes (internal DP launch): its master (the one API server) on d0,
# a headless rank on d1.
THREE = """\
name: faults-three
soc: a2
nodes:
  p0: {host: 10.1.0.1, nic: eth0}
  d0: {host: 10.1.0.2, nic: eth0}
  d1: {host: 10.1.0.3, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.18.0, mounts: ["/weights:/weights"]}
model: {path: /weights/m, served_name: m}
kv_transfer: {connector: MooncakeConnectorV1}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 1, tp: 8, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0, d1], dp: 2, dp_local: 1, tp: 8, kv_port: 40100, launch: internal}
proxy: {node: p0, port: 1999}
readiness: {timeout: 5, restarts: 1}
"""


@pytest.fixture(scope="module", params=MODES)
def tiny_ssh(request):
    """TINY in both SSH server kinds: for what SSH decides."""
    sim = Sim(TINY, request.param, prefix="faults-ssh-", startup=STARTUP)
    yield sim
    sim.down()


@pytest.fixture(scope="module")
def three():
    # vLLM's own limits x 0.1 (the 5-minute handshake: 30 s), so the waiting lines come each second
    sim = Sim(THREE, MODES[-1], prefix="faults-three-", startup=STARTUP, time_factor="0.1")
    yield sim
    sim.down()


def teardown_clean(sim: Sim) -> None:
    """Faults undone, `teardown` exits 0 and the nodes hold nothing of the deployment."""
    sim.restore()
    code, td = sim.json("teardown", sim.inventory)
    assert code == 0 and td["ok"], json.dumps(td, indent=1)[:3000]
    sim.assert_nothing_left()


def by_cause(doc: dict, cause: str) -> dict[str, dict]:
    """node -> its result, for every step result of `cause` in a --json report."""
    return {n: r for s in doc["steps"] for n, r in s["nodes"].items() if r["cause"] == cause}


def no_container_anywhere(sim: Sim) -> None:
    ps = sim.node_exec("docker", "ps", "-a", "-q")
    assert all(o["stdout"].strip() == "" for o in ps.values()), f"a container was created: {ps}"


def group_states(sim: Sim) -> dict[str, list[tuple[bool, bool]]]:
    """group -> [(alive, healthy)] of its ranks, from `deploy status --json`."""
    _code, st = sim.json("status", sim.inventory)
    out: dict[str, list[tuple[bool, bool]]] = {}
    for r in st["ranks"]:
        out.setdefault(r["group"], []).append((r["alive"], r["healthy"]))
    return out


def bundle_of(message: str) -> Path:
    folder = Path(message.split("diagnostics: ")[1].split()[0])
    assert folder.is_dir(), message
    return folder


# ------------------------------------------------------------------ SSH: both server kinds

def test_auth_failure_refuses_up_exit_4_naming_the_node_and_what_to_check(tiny_ssh):
    sim = tiny_ssh
    sim.fault("d0", "auth-fail")
    try:
        p = sim.run("up", sim.inventory, "--json")
        assert p.returncode == 4, p.stderr[-3000:]
        assert "d0" in p.stderr and "Permission denied" in p.stderr  # said on stderr under --json too
        assert "identity_file" in p.stderr  # what to check
        doc = json.loads(p.stdout)
        assert not doc["ok"]
        bad = by_cause(doc, "unreachable")
        assert set(bad) == {"d0"} and "Permission denied" in bad["d0"]["message"]
        no_container_anywhere(sim)  # p0 answered, but nothing launches while a node is refused
    finally:
        teardown_clean(sim)


def test_changed_host_key_is_refused_never_accepted_with_the_fix(tiny_ssh):
    sim = tiny_ssh
    known_hosts = Path(sim.inv["ssh"]["known_hosts"])
    before = known_hosts.read_bytes()
    sim.fault("d0", "host-key-changed")
    try:
        p = sim.run("up", sim.inventory)
        assert p.returncode == 4, p.stderr[-3000:]
        assert "d0" in p.stderr and "host key changed" in p.stderr
        assert "ssh-keygen -R" in p.stderr and str(known_hosts) in p.stderr  # the fix
        assert known_hosts.read_bytes() == before  # the new key was not recorded ...
        no_container_anywhere(sim)
        code, td = sim.json("teardown", sim.inventory)  # ... so the next command refuses it as well
        assert code == 4 and set(by_cause(td, "unreachable")) == {"d0"}
        assert "host key changed" in by_cause(td, "unreachable")["d0"]["message"]
    finally:
        teardown_clean(sim)
    assert known_hosts.read_bytes() == before


def test_a_node_lost_while_ranks_load_fails_up_naming_it_then_teardown_converges(tiny_ssh):
    """d0's ranks load slowly; while up waits for them d0 drops off the network. up stops with d0
    named (exit 4), the ledger still lists every rank it started (d0's included: they may run on),
    and once d0 is back `teardown` leaves nothing."""
    sim = tiny_ssh
    sim.fault("d0", "slow-start:60")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", sim.inventory, "--skip-checks", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **sim.env})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until up has started every rank and waits for readiness
            led = json.loads(sim.ledger_path.read_text()) if sim.ledger_path.exists() else {}
            if led.get("state") == "launching" and len(led.get("ranks", {})) == 4:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            raise AssertionError("up never started its ranks")
        sim.fault("d0", "unreachable")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 4, err[-3000:]
        doc = json.loads(out)
        assert set(doc["failed_groups"]) == {"d"}, doc["failed_groups"]
        assert "d0" in doc["failed_groups"]["d"] and "unreachable" in doc["failed_groups"]["d"]
        assert set(by_cause(doc, "unreachable")) == {"d0"}
        led = json.loads(sim.ledger_path.read_text())
        assert led["state"] == "failed"
        assert {k for k, e in led["ranks"].items() if e["node"] == "d0"} == {"d-d0-0", "d-d0-1"}
        sim.fault("d0", "clear-ssh")
        assert all(ok for ok in [a and h for a, h in group_states(sim)["p"]])  # the healthy group stays
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        teardown_clean(sim)


# ------------------------------------------------------------------ the check-network gate

def test_net_health_fail_stops_up_at_the_check_gate_naming_node_and_device(three):
    three.fault("d0", "net-health:Unreachable", device=2)
    try:
        p = three.run("up", three.inventory)
        assert p.returncode == 1, p.stderr[-3000:]
        assert "nothing was launched" in p.stderr
        assert "failed d0: net_health dev 2" in p.stderr and "Unreachable" in p.stderr
        assert "hccn_tool -i 2 -netdetect" in p.stderr  # the fix
        no_container_anywhere(three)
    finally:
        teardown_clean(three)


def test_ping_loss_stops_up_at_the_check_gate_naming_the_pair(three):
    three.fault("d0", "ping-loss:p0")
    try:
        code, doc = three.json("up", three.inventory)
        assert code == 1 and not doc["ok"]
        failed = by_cause(doc, "failed")
        assert set(failed) == {"p0"}, failed
        assert failed["p0"]["message"].startswith("ping dev 0: p0 cannot reach d0"), failed["p0"]
        assert "hccn_tool -i 0 -ping -g address" in failed["p0"]["fix"]
        assert not [s for s in doc["steps"] if s["step"] not in ("connect", "check-network")]
        no_container_anywhere(three)
    finally:
        teardown_clean(three)


# ------------------------------------------------------------------ the runtime

def test_readiness_timeout_restarts_the_group_then_fails_it_with_diagnostics(three):
    """d0's ranks load forever: group d misses readiness.timeout (5 s), is stopped and restarted
    once, misses it again and is failed with a diagnostics folder; group p serves on."""
    three.fault("d0", "never-ready")
    try:
        p = three.run("up", three.inventory, "--skip-checks")
        assert p.returncode == 1, p.stderr[-3000:]
        err = p.stderr
        assert "FAILED group d (d0)" in err
        assert "not ready after 5s (readiness.timeout)" in err and "on d0" in err
        assert "restarting it" in err and "(after 1 group restart)" in err
        assert "fix: if the ranks are still loading (weights, graph compile), raise readiness.timeout" in err
        folder = bundle_of(err)
        names = {f.name for f in folder.iterdir()}
        assert {"reason.txt", "plan.json", "d0-npu.txt", "d1-npu.txt", "rank-d-d0-0.log", "rank-d-d1-0.log"} <= names
        assert "Initializing a V1 LLM engine" in (folder / "rank-d-d0-0.log").read_text()  # the log tail
        states = group_states(three)
        assert all(a and h for a, h in states["p"]) and not any(a for a, _h in states["d"])
    finally:
        teardown_clean(three)


def test_dp_master_unreachable_headless_rank_hangs_group_restarted_then_failed(three):
    """The decode group's master on d0 cannot be reached from d1 (a firewall on its RPC port):
    d1's headless engine waits for a master that never comes, the master waits for it ('Waiting
    for 1 local, 1 remote core engine proc(s)'), nothing dies — the readiness deadline catches it;
    the whole group (the stranded headless rank on d1 too) is stopped, restarted once, failed;
    p serves on."""
    three.fault("d0", "master-unreachable")
    try:
        code, doc = three.json("up", three.inventory, "--skip-checks")
        assert code == 1 and not doc["ok"]
        assert set(doc["failed_groups"]) == {"d"}, doc["failed_groups"]
        msg = doc["failed_groups"]["d"]
        assert "not ready after 5s (readiness.timeout)" in msg and "on d0" in msg
        assert "(after 1 group restart)" in msg
        folder = bundle_of(msg)
        master, headless = (folder / "rank-d-d0-0.log").read_text(), (folder / "rank-d-d1-0.log").read_text()
        assert "Waiting for 1 local, 1 remote core engine proc(s) to start." in master
        assert "in headless mode, with head node address" in headless
        failed = by_cause(doc, "failed")
        assert {"d0", "d1"} <= set(failed) and "p0" not in failed
        assert "raise readiness.timeout" in failed["d0"]["fix"] and "reach its DP master" in failed["d0"]["fix"]
        states = group_states(three)
        assert all(a and h for a, h in states["p"])
        assert not any(a for a, _h in states["d"]), "the headless rank on d1 was left waiting"
    finally:
        teardown_clean(three)


def test_hccn_conf_missing_is_found_by_the_gate_and_by_triage_with_skip_checks(three):
    """d1 has no /etc/hccn.conf: check-network refuses (naming d1); with --skip-checks the
    container gets an empty folder there, HCCL prints "'device ip' is not set correctly" and the
    rank would serve garbage: up fails the group naming d1 and the fix instead of serving."""
    three.fault("d1", "no-hccn-conf")
    try:
        p = three.run("up", three.inventory)
        assert p.returncode == 1 and "failed d1: hccn_conf" in p.stderr, p.stderr[-3000:]
        no_container_anywhere(three)
        p = three.run("up", three.inventory, "--skip-checks")
        assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-3000:]
        err = p.stderr
        assert "FAILED group d (d1)" in err
        named = [ln for ln in err.splitlines() if "hccn.conf not mounted" in ln and "Fix: Mount /etc/hccn.conf" in ln]
        assert named and all("d1" in ln for ln in named), err[-4000:]
        assert "serving" not in p.stdout.split("\n")[-3:]
        states = group_states(three)
        assert all(a and h for a, h in states["p"]) and not any(a for a, _h in states["d"])
    finally:
        teardown_clean(three)
