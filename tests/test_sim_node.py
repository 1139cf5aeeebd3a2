"""The simulated node's host view, runtime knobs, occupancy in npu-smi and direct-tcpip, over SSH.

Checked as a client sees it: system `ssh` commands on the node, and an asyncssh client opening
direct-tcpip channels (how `deploy up` polls /health), in both sshd modes.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import asyncssh
import pytest
from test_sim_cluster import Handle, available, cli, new_base

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")

INVENTORY = """\
name: node-test
soc: a2
nodes:
  p0: {host: 10.1.0.1, nic: enp67s0f0np0}
  d0: {host: 10.1.0.2, nic: eth7}
container: {image: quay.io/ascend/vllm-ascend:v0.11.0rc1, mounts: ["/mnt/sfs_turbo/.cache:/root/.cache"]}
model: {path: /root/.cache/modelscope/DeepSeek-V3.1-w8a8}
kv_transfer: {connector: MooncakeConnectorV1}
proxy: {node: p0, port: 1999}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 1, tp: 8, kv_port: 30000}
  - {name: d, role: decode, nodes: [d0], dp: 1, tp: 8, kv_port: 30100}
"""


@pytest.fixture(scope="module", params=["openssh", "embedded"])
def sim(request):
    available(request.param)
    base = new_base()
    (base / "inv.yaml").write_text(INVENTORY)
    root = base / "sim"
    try:
        r = cli("up", str(base / "inv.yaml"), "--dir", str(root), "--sshd", request.param,
                "--startup", "0.5", "--time-factor", "0.01")
        assert r.exit_code == 0, r.stderr
        yield Handle(root)
    finally:
        cli("down", "--dir", str(root))
        shutil.rmtree(base, ignore_errors=True)


def test_host_view_has_the_driver_files_and_model(sim):
    r = sim.ssh("p0", 'cd "$DEPLOY_NODE_ROOT" && cat usr/local/Ascend/driver/version.info && '
                      'ls -d usr/local/dcmi usr/local/Ascend/driver/lib64 var/tmp && '
                      'grep -c Driver_Install etc/ascend_install.info && '
                      'python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[\'model_type\'])" '
                      'mnt/sfs_turbo/.cache/modelscope/DeepSeek-V3.1-w8a8/config.json')  # where the mount maps it
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["Version=25.2.0", "usr/local/Ascend/driver/lib64", "usr/local/dcmi",
                                     "var/tmp", "5", "deepseek_v3"]
    assert sim.ssh("p0", 'echo "$DEPLOY_NODE_ROOT"').stdout.strip() == f"{sim.root}/nodes/p0/root"


def test_host_view_tools_are_the_nodes_own(sim):
    r = sim.ssh("d0", 'env -u DEPLOY_SIM_NODE "$DEPLOY_NODE_ROOT/usr/local/Ascend/driver/tools/hccn_tool" '
                      '-i 0 -ip -g; "$DEPLOY_NODE_ROOT/usr/local/bin/npu-smi" info -l | head -1')
    assert r.returncode == 0, r.stderr
    state = json.loads((sim.root / "nodes/d0/state.json").read_text())
    assert r.stdout.splitlines()[0] == f"ipaddr:{state['devices'][0]['ip']}"
    assert "Total Count" in r.stdout


def test_hccn_conf_is_one_file(sim):
    """The host view's /etc/hccn.conf is the node's HCCN_CONF: a tool fault shows in both."""
    sim.fault("p0", "tls-on", "--device", "3")
    try:
        r = sim.ssh("p0", 'grep ^tls_enable_3= "$DEPLOY_NODE_ROOT/etc/hccn.conf" "$HCCN_CONF"')
        assert r.stdout.split() == [f"{sim.root}/nodes/p0/root/etc/hccn.conf:tls_enable_3=1",
                                    f"{sim.root}/nodes/p0/etc/hccn.conf:tls_enable_3=1"]
    finally:
        sim.fault("p0", "clear")


def test_node_state_records_the_inventory_nic(sim):
    assert json.loads((sim.root / "nodes/p0/state.json").read_text())["nic"] == "enp67s0f0np0"
    assert json.loads((sim.root / "nodes/d0/state.json").read_text())["nic"] == "eth7"


def test_runtime_knobs_and_runtime_faults(sim):
    config = sim.root / "nodes/d0/runtime/config.json"
    assert json.loads(config.read_text()) == {"startup_s": 0.5, "time_factor": 0.01, "faults": []}
    sim.fault("d0", "slow-start:3")
    sim.fault("d0", "crash-after:7")
    sim.fault("d0", "slow-start:4")  # replaces the first
    assert json.loads(config.read_text())["faults"] == ["crash-after:7", "slow-start:4"]
    status = cli("status", "--dir", str(sim.root)).stdout
    assert "crash-after:7,slow-start:4" in next(ln for ln in status.splitlines() if ln.startswith("d0"))
    sim.fault("d0", "clear-runtime")
    assert json.loads(config.read_text())["faults"] == []
    sim.fault("d0", "never-ready")
    sim.fault("d0", "clear")
    assert json.loads(config.read_text())["faults"] == []
    bad = cli("fault", "--dir", str(sim.root), "d0", "slow-start")
    assert bad.exit_code == 2 and "needs an argument" in bad.stderr


def test_fault_help_lists_every_fault_with_its_kind():
    out = cli("fault", "--help").stdout
    for name, kind in (("link-down", "tool"), ("hbm-held", "tool"), ("unreachable", "ssh"),
                       ("clear-ssh", "ssh"), ("crash-at-start", "runtime"), ("engine-death", "runtime"),
                       ("clear-runtime", "runtime"), ("clear", "tool")):
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        assert line.split()[1] == kind and len(line.split()) > 3


SMI_CLAIM = """\
import sys, time
sys.path.insert(0, "{root}/runtime")
import occupancy
with occupancy.node_lock("{root}/nodes/p0"):
    occupancy.claim("{root}/nodes/p0", [2, 3], {pid}, 51234, "VLLM::EngineCore")
"""


def test_npu_smi_shows_live_claims_and_clear_keeps_them(sim):
    """A process on the node claims HBM: npu-smi info (fast path included) shows it with its PID
    and HBM; `clear` restores hardware but keeps the claim; once the process dies it is gone."""
    start = sim.ssh("p0", "nohup sleep 600 >/dev/null 2>&1 & echo $!")
    pid = int(start.stdout)
    try:
        r = sim.ssh("p0", f"/usr/bin/python3 - <<'EOF'\n{SMI_CLAIM.format(root=sim.root, pid=pid)}EOF\n"
                          "npu-smi info")
        assert r.returncode == 0, r.stderr
        rows = [ln for ln in r.stdout.splitlines() if f"| {pid} " in ln]
        assert [ln.split("|")[1].split() for ln in rows] == [["2", "0"], ["3", "0"]]
        assert all("VLLM::EngineCore" in ln and "51234" in ln for ln in rows)
        hbm = [ln for ln in r.stdout.splitlines() if "0000:81:00.0" in ln][0]  # NPU 2's bus id
        assert int(re.search(r"(\d+)\s*/\s*65536", hbm).group(1)) > 51234
        sim.fault("p0", "clear")
        assert f"| {pid} " in sim.ssh("p0", "npu-smi info").stdout
    finally:
        sim.ssh("p0", f"kill {pid}")
    r = sim.ssh("p0", "sleep 0.2; npu-smi info")
    assert f"| {pid} " not in r.stdout
    assert r.stdout.count("No running processes found in NPU") == 8


class _Echo:
    """A TCP server on a node's address (this machine), for direct-tcpip channels to reach."""

    def __init__(self, addr: str):
        self.sock = socket.socket()
        self.sock.bind((addr, 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"echo:" + conn.recv(100))


def test_direct_tcpip_to_loopback(sim):
    node = sim.manifest["nodes"]["d0"]
    echo = _Echo(node["addr"])

    async def go() -> bytes:
        async with asyncssh.connect(node["addr"], port=node["port"], username=sim.manifest["user"],
                                    client_keys=[str(sim.root / "keys/id_ed25519")],
                                    known_hosts=str(sim.root / "keys/known_hosts")) as conn:
            reader, writer = await conn.open_connection(node["addr"], echo.port)
            writer.write(b"GET /health")
            data = await reader.read(100)
            writer.close()
            return data

    try:
        assert asyncio.run(go()) == b"echo:GET /health"
    finally:
        echo.sock.close()


def test_check_network_sees_a_leftover_claim_by_its_pid(sim):
    """check-network reads `npu-smi info`: its HBM check names the live holder with its PID."""
    pid = int(sim.ssh("p0", "nohup sleep 600 >/dev/null 2>&1 & echo $!").stdout)
    try:
        r = sim.ssh("p0", f"/usr/bin/python3 - <<'EOF'\n{SMI_CLAIM.format(root=sim.root, pid=pid)}EOF\n")
        assert r.returncode == 0, r.stderr
        p = subprocess.run([sys.executable, "-m", "orchestrator", "check-network", str(sim.root / "inventory.yaml"),
                            "--json", "--no-ping"], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, DEPLOY_STATE_DIR=tempfile.gettempdir() + "/deploy-test-state"))
        checks = json.loads(p.stdout)["checks"]
        hbm = sorted((c["node"], c["device"]) for c in checks if c["check"] == "hbm" and c["status"] != "ok")
        assert hbm == [("p0", 2), ("p0", 3)], p.stdout
        assert all(f"pid {pid} VLLM::EngineCore (51234 MB)" in c["observed"] for c in checks
                   if c["check"] == "hbm" and c["status"] != "ok")
    finally:
        sim.ssh("p0", f"kill {pid}")


def test_model_folder_goes_where_the_mounts_map_it():
    from orchestrator.sim.hostview import model_host_path

    mounts = ["/data:/root", "/mnt/sfs/.cache:/root/.cache:ro", "/w:/weights"]
    assert model_host_path("/root/.cache/hub/m", mounts) == "/mnt/sfs/.cache/hub/m"  # the longest wins
    assert model_host_path("/root/other", mounts) == "/data/other"
    assert model_host_path("/weights", mounts) == "/w"
    assert model_host_path("/weightsX/m", mounts) == "/weightsX/m"  # not under /weights
    assert model_host_path("/models/m", []) == "/models/m"
