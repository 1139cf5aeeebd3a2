"""`deploy up`, `status`, `teardown` end to end: the real CLI against `deploy sim`.

Every example inventory comes up, answers a completion through the proxy (or its API rank),
shows healthy in `status`, is a no-op the second time, and tears down with no process,
container or listening port left — checked on the nodes (npu-smi, docker ps, /proc/net/tcp),
not by trusting our own kill. Refusals name the node (and device) and launch nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import simcluster
import yaml
from simcluster import MODES, ROOT, deploy

EXAMPLES = sorted(p.name for p in (ROOT / "inventories").glob("*.yaml"))
STARTUP = "0.3"  # seconds of simulated model loading per rank


class Sim(simcluster.Sim):
    """A sim of `source` with this file's pace: ranks load in STARTUP s, readiness.timeout 120 s."""

    def __init__(self, source: Path, mode: str, readiness_timeout: float = 120):
        super().__init__(source, mode, prefix="up-sim-", readiness_timeout=readiness_timeout, startup=STARTUP)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_comes_up_serves_and_tears_down_clean(example):
    sim = Sim(ROOT / "inventories" / example, MODES[0])
    try:
        code, doc = sim.json("up", sim.inventory)
        assert code == 0 and doc["ok"], json.dumps(doc, indent=1)[:4000]
        assert doc["smoke_text"].strip(), doc
        code, st = sim.json("status", sim.inventory)
        assert code == 0 and st["ok"], json.dumps(st, indent=1)[:3000]
        assert all(r["alive"] and r["healthy"] for r in st["ranks"])
        if example == SMALL.name:  # once is enough for the repeat cases (they do not depend on the shape)
            code, again = sim.json("up", sim.inventory)
            assert code == 0 and again["nothing_to_do"], again
        code, td = sim.json("teardown", sim.inventory)
        assert code == 0 and td["ok"], json.dumps(td, indent=1)[:3000]
        sim.assert_nothing_left()
        if example == SMALL.name:
            code, td2 = sim.json("teardown", sim.inventory)  # safe to run twice
            assert code == 0 and td2["ok"]
    finally:
        sim.down()


SMALL = ROOT / "inventories" / "dsv31-a3-2p1d.yaml"


@pytest.fixture(scope="module")
def small():
    """The 2P1D example on one SSH server kind: what is tested here does not depend on it."""
    sim = Sim(SMALL, MODES[0])
    yield sim
    sim.down()


@pytest.fixture(scope="module", params=MODES)
def small_ssh(request):
    """The same in both SSH server kinds, for what SSH itself decides (unreachable, lost nodes)."""
    sim = Sim(SMALL, request.param)
    yield sim
    sim.down()


def test_checks_red_refuses_before_anything_launches(small):
    small.fault("d1", "link-down", device=5)
    try:
        p = small.run("up", small.inventory)
        assert p.returncode == 1, p.stderr
        assert "d1" in p.stderr and "link" in p.stderr and "5" in p.stderr
        ps = small.node_exec("docker", "ps", "-a", "-q")
        assert all(o["stdout"].strip() == "" for o in ps.values()), "a container was created"
    finally:
        small.fault("d1", "clear")


def test_busy_device_refused_naming_node_device_and_pid(small):
    small.fault("p1", "hbm-held", device=3)
    try:
        p = small.run("up", small.inventory, "--skip-checks")
        assert p.returncode == 1
        assert "p1" in p.stderr and "dev 3" in p.stderr and "VLLM::EngineCore" in p.stderr
        assert "teardown" in p.stderr  # says what to do
    finally:
        small.fault("p1", "clear")
        small.run("teardown", small.inventory)


def test_container_drift_refused_then_recreate(small):
    name = "vllm-" + small.inv["name"]
    made = small.node_exec("docker", "run", "-d", "--name", name, "--net=host", small.inv["container"]["image"],
                           "sleep", "infinity", nodes="d0")
    if made["d0"]["status"] != "ok":  # the image must be pulled first
        small.node_exec("docker", "pull", small.inv["container"]["image"], nodes="d0")
        made = small.node_exec("docker", "run", "-d", "--name", name, "--net=host",
                               small.inv["container"]["image"], "sleep", "infinity", nodes="d0")
    assert made["d0"]["status"] == "ok", made
    try:
        p = small.run("up", small.inventory, "--skip-checks")
        assert p.returncode == 1
        assert "d0" in p.stderr and "different configuration" in p.stderr and "/dev/davinci0" in p.stderr
        assert "--recreate" in p.stderr
        code, doc = small.json("up", small.inventory, "--skip-checks", "--recreate")
        assert code == 0 and doc["ok"], json.dumps(doc)[:3000]
    finally:
        code, td = small.json("teardown", small.inventory)
        assert code == 0, td
        small.assert_nothing_left()


def test_second_up_while_one_runs_is_refused(small):
    from orchestrator.launch.ledger import deployment_lock

    os.environ["DEPLOY_STATE_DIR"] = small.env["DEPLOY_STATE_DIR"]
    try:
        with deployment_lock(small.inv["name"], "up"):
            p = small.run("teardown", small.inventory)
            assert p.returncode == 1 and "another deploy command" in p.stderr and "deploy up pid" in p.stderr
    finally:
        os.environ.pop("DEPLOY_STATE_DIR", None)


def test_demo_runs_every_phase_and_leaves_nothing(tmp_path):
    """The README's first command: a simulated 2P1D cluster up, serving, torn down, stopped."""
    root = Path(tempfile.mkdtemp(prefix="demo-", dir="/tmp"))
    root.chmod(0o755)
    try:
        p = deploy("demo", "--dir", str(root / "sim"), "--sshd", MODES[0], timeout=600)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        out = p.stdout + p.stderr
        for phase in ("1. deploy check-network", "2. deploy up", "3. deploy status", "4. a chat completion",
                      "5. deploy teardown"):
            assert phase in out
        assert "/v1/chat/completions -> HTTP 200" in out and "clean:" in out
        from orchestrator.sim.processes import sim_processes

        assert sim_processes(root / "sim") == []  # the simulator and everything it ran are gone
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_warmup_requests_reach_every_prefill_rank_before_the_smoke(tmp_path):
    data = yaml.safe_load(SMALL.read_text())
    data["readiness"] = {"warmup": 2}
    src = tmp_path / "warm.yaml"
    src.write_text(yaml.safe_dump(data, sort_keys=False))
    sim = Sim(src, MODES[-1])
    try:
        code, doc = sim.json("up", sim.inventory)
        assert code == 0 and doc["ok"], json.dumps(doc)[:3000]
        names = [s["step"] for s in doc["steps"]]
        assert names.index("warmup") < names.index("smoke")
        warm = next(s for s in doc["steps"] if s["step"] == "warmup")
        assert set(warm["nodes"]) == {"p0", "p1"} and warm["ok"]
        import re
        import urllib.request

        for node in ("p0", "p1"):  # every prefill rank counted at least the 2 warm-up requests
            ip = sim.inv["nodes"][node]["host"]
            for port in (7100, 7101):
                text = urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=10).read().decode()
                done = sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M))
                assert done >= 2, (node, port, done)
        code, st = sim.json("status", sim.inventory)
        assert code == 0
        code, td = sim.json("teardown", sim.inventory)
        assert code == 0 and td["ok"]
    finally:
        sim.down()


def test_dead_rank_restarts_its_group_then_fails_it_with_diagnostics_healthy_groups_stay(small):
    """A rank that crashes at start: its whole group (both decode nodes) is stopped and restarted
    (readiness.restarts, default 1), then failed with a diagnostic folder; prefill groups serve on."""
    small.fault("d1", "crash-at-start")
    try:
        code, doc = small.json("up", small.inventory, "--skip-checks")
        assert code == 1 and not doc["ok"]
        assert set(doc["failed_groups"]) == {"d"}, doc["failed_groups"]
        msg = doc["failed_groups"]["d"]
        assert "d1" in msg and "exited before the group was ready" in msg and "after 1 group restart" in msg
        folder = Path(msg.split("diagnostics: ")[1].split()[0])
        names = {p.name for p in folder.iterdir()}
        assert {"reason.txt", "plan.json", "d0-npu.txt", "d1-npu.txt", "rank-d-d1-0.log"} <= names
        assert "link status" in (folder / "d1-npu.txt").read_text()
        code, st = small.json("status", small.inventory)
        assert code == 1
        by_group = {}
        for r in st["ranks"]:
            by_group.setdefault(r["group"], []).append(r["healthy"])
        assert all(by_group["p0"]) and all(by_group["p1"]) and not any(by_group["d"])
        alive_d = [r for r in st["ranks"] if r["group"] == "d" and r["alive"]]
        assert not alive_d, "a failed group must not be left half running"
    finally:
        small.fault("d1", "clear-runtime")
        code, td = small.json("teardown", small.inventory)
        assert code == 0, td
        small.assert_nothing_left()


def test_up_again_after_a_failure_keeps_healthy_groups_and_brings_up_the_rest(small):
    small.fault("d0", "crash-at-start")
    try:
        code, _ = small.json("up", small.inventory, "--skip-checks")
        assert code == 1
        _, st = small.json("status", small.inventory)
        before = {r["key"]: r["pid"] for r in st["ranks"] if r["group"] in ("p0", "p1")}
        small.fault("d0", "clear-runtime")
        code, doc = small.json("up", small.inventory)
        assert code == 0 and doc["ok"], json.dumps(doc)[:3000]
        _, st = small.json("status", small.inventory)
        after = {r["key"]: r["pid"] for r in st["ranks"] if r["group"] in ("p0", "p1")}
        assert after == before  # the prefill groups were kept, not restarted
        assert st["ok"]
    finally:
        small.fault("d0", "clear-runtime")
        code, td = small.json("teardown", small.inventory)
        assert code == 0, td


def test_tls_mismatch_found_by_triage_when_checks_are_skipped(small):
    """--skip-checks lets a TLS mismatch through to launch: the ranks' EI0016 lines are matched
    live and the failure says what it is and how to fix it, naming the node and device."""
    small.fault("d1", "tls-on", device=2)
    try:
        p = small.run("up", small.inventory, "--skip-checks")
        assert p.returncode == 1
        err = p.stderr
        lines = [ln for ln in err.splitlines() if "EI0016" in ln]
        assert lines, err[-4000:]
        assert any("-tls -s enable 0" in ln for ln in lines), lines
        assert any("d1" in ln for ln in lines), lines  # the node whose device differs is named
        assert "group d" in err
    finally:
        small.fault("d1", "clear")
        code, td = small.json("teardown", small.inventory)
        assert code == 0, td


def test_ctrl_c_during_up_leaves_a_ledger_then_up_resumes_and_teardown_converges(small):
    import signal as _signal
    import time as _time

    small.fault("d0", "slow-start:20")  # the decode group takes long: interrupt while waiting for it
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", small.inventory, "--skip-checks"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **small.env})
    try:
        deadline = _time.monotonic() + 120
        ledger = Path(small.env["DEPLOY_STATE_DIR"]) / small.inv["name"] / "ledger.json"
        while _time.monotonic() < deadline:  # until every rank has been started
            if ledger.exists() and len(json.loads(ledger.read_text()).get("ranks", {})) == 36:
                break
            _time.sleep(0.3)
        _time.sleep(1.0)
        proc.send_signal(_signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        led = json.loads(ledger.read_text())
        assert led["state"] == "interrupted" and len(led["ranks"]) == 36
        small.fault("d0", "clear-runtime")
        code, doc = small.json("up", small.inventory)
        assert code == 0 and doc["ok"], json.dumps(doc)[:3000]
    finally:
        if proc.poll() is None:
            proc.kill()
        small.fault("d0", "clear-runtime")
        code, td = small.json("teardown", small.inventory)
        assert code == 0, td
        small.assert_nothing_left()


def test_unreachable_node_refuses_up_exit_4_naming_it(small_ssh):
    small = small_ssh
    small.fault("p1", "unreachable")
    try:
        code, doc = small.json("up", small.inventory)
        assert code == 4 and not doc["ok"]
        bad = {n: r for s in doc["steps"] for n, r in s["nodes"].items() if r["cause"] == "unreachable"}
        assert "p1" in bad and "refused" in bad["p1"]["message"]
    finally:
        small.fault("p1", "clear-ssh")
    ps = small.node_exec("docker", "ps", "-a", "-q")
    assert all(o["stdout"].strip() == "" for o in ps.values()), "launched despite an unreachable node"


def test_dead_backend_after_up_shows_in_status_and_a_node_lost_in_teardown_is_named(small_ssh):
    small = small_ssh
    code, doc = small.json("up", small.inventory)
    assert code == 0, json.dumps(doc)[:2000]
    try:
        name = "vllm-" + small.inv["name"]
        pid = small.node_exec("sh", "-c", 'cat "$DEPLOY_NODE_ROOT/var/tmp/deploy/$1/rank-d-d1-3.pid"', "sh",
                              small.inv["name"], nodes="d1")["d1"]["stdout"].strip()
        killed = small.node_exec("docker", "exec", name, "sh", "-c", 'kill -9 -"$1"', "sh", pid, nodes="d1")
        assert killed["d1"]["status"] == "ok", killed
        code, st = small.json("status", small.inventory)
        assert code == 1 and not st["ok"]
        dead = [r for r in st["ranks"] if not r["healthy"]]
        assert [(r["node"], r["group"], r["dp_rank"]) for r in dead] == [("d1", "d", 19)]
        small.fault("d0", "unreachable")
        code, td = small.json("teardown", small.inventory)
        assert code == 4 and not td["ok"]
        lost = {n for s in td["steps"] for n, r in s["nodes"].items() if r["cause"] == "unreachable"}
        assert lost == {"d0"}
    finally:
        small.fault("d0", "clear-ssh")
        code, td = small.json("teardown", small.inventory)
        assert code == 0, td
        small.assert_nothing_left()


TINY_PD = """\
name: tiny-pd
soc: a2
nodes:
  p0: {host: 10.1.0.1, nic: eth0}
  d0: {host: 10.1.0.2, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.18.0, mounts: ["/weights:/weights"]}
model: {path: /weights/m, served_name: m}
kv_transfer: {connector: MooncakeConnectorV1, extra: {decode: {dp_size: 4}}}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 1, tp: 8, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0], dp: 8, tp: 1, kv_port: 40100}
proxy: {node: p0, port: 1999}
readiness: {timeout: 20, restarts: 0}
"""


def test_kv_extra_config_mismatch_is_named_with_its_fix(tmp_path):
    """kv_transfer.extra overriding the decode dp_size: every rank refuses at start with the
    real ValueError; up fails the groups at once (no restart: readiness.restarts 0), says why."""
    src = tmp_path / "tiny.yaml"
    src.write_text(TINY_PD)
    sim = Sim(src, MODES[-1], readiness_timeout=20)
    try:
        p = sim.run("up", sim.inventory)
        assert p.returncode == 1
        assert "KV transfer 'decode' config has a conflicting data parallel size" in p.stderr
        assert "Fix:" in p.stderr
        code, td = sim.json("teardown", sim.inventory)
        assert code == 0 and td["ok"]
        sim.assert_nothing_left()
    finally:
        sim.down()


def test_a_port_already_taken_on_a_node_is_refused_before_launch(small):
    """Something else listens on p0's first HTTP port: vLLM would share it (SO_REUSEPORT) and
    half the requests would go elsewhere, so up refuses before launch, naming node and port."""
    import socket as _socket

    ip = small.inv["nodes"]["p0"]["host"]
    s = _socket.socket()
    s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    s.bind((ip, 7100))
    s.listen(1)
    try:
        code, doc = small.json("up", small.inventory, "--skip-checks")
        assert code == 1
        refused = {n: r for st in doc["steps"] for n, r in st["nodes"].items() if r["cause"] == "refused"}
        assert "p0" in refused and "7100" in refused["p0"]["message"] and "port" in refused["p0"]["fix"]
        assert not [st for st in doc["steps"] if st["step"] == "launch"]
    finally:
        s.close()
        code, td = small.json("teardown", small.inventory)
        assert code == 0, td
