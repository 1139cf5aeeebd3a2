"""`deploy sim up/fault/down` end to end, in both SSH server modes, checked with the system `ssh`.

One 3-node sim per mode is shared by the module (session-scoped); tests that break a node put it
back with `clear-ssh`. Sim dirs are made under /tmp with mode 0755: the simulated nodes' user
(deploy-sim, when running as root) must traverse them, and pytest's tmp_path is 0700.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.commands.sim import command as sim_cli
from orchestrator.inventory import load_inventory
from orchestrator.sim.processes import listening

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")

INVENTORY = """\
name: sim-test
soc: a2
ssh: {user: root, port: 22, host_keys: strict, sudo: true}
nodes:
  p0: {host: 10.1.0.1, nic: eth0}
  p1: {host: 10.1.0.2, nic: eth0, user: admin}
  p2: {host: 10.1.0.3, nic: eth0, ip: 10.2.0.3}
container: {image: example/vllm-ascend:test}
model: {path: /weights/m}
groups:
  - {name: s, role: serve, nodes: [p0, p1, p2], dp: 3, tp: 2}
"""
FAULTS = "- {node: p2, fault: link-down, device: 5}\n"


def cli(*args: str):
    return CliRunner().invoke(sim_cli, list(args), catch_exceptions=False)


def new_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="deploy-sim-test-", dir="/tmp"))
    base.chmod(0o755)
    return base


class Handle:
    """A running sim as a client sees it: its manifest and a system-ssh runner."""

    def __init__(self, root: Path):
        self.root = root
        self.manifest = json.loads((root / "sim.json").read_text())

    def ssh(self, node: str, command: str, input: str | None = None) -> subprocess.CompletedProcess:
        n = self.manifest["nodes"][node]
        argv = ["ssh", "-F", "/dev/null", "-i", str(self.root / "keys" / "id_ed25519"),
                "-o", f"UserKnownHostsFile={self.root / 'keys' / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-p", str(n["port"]), f"{self.manifest['user']}@{n['addr']}", command]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)

    def fault(self, node: str, fault: str, *more: str) -> None:
        r = cli("fault", "--dir", str(self.root), node, fault, *more)
        assert r.exit_code == 0, r.output


def sim_processes(root: Path, node: str | None = None) -> list[str]:
    """Independent of the code under test: live processes with DEPLOY_SIM_ROOT=DIR in their
    environment or DIR in their command line (with `node`: DEPLOY_SIM_NODE of that node)."""
    wanted = f"DEPLOY_SIM_NODE={root}/nodes/{node}" if node else f"DEPLOY_SIM_ROOT={root}"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            env = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] == "Z":
            continue  # a zombie: dead, waiting to be reaped
        if wanted.encode() in env.split(b"\0") or (node is None and str(root).encode() in cmd):
            found.append(entry.name + " " + cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def available(mode: str) -> None:
    if mode == "openssh" and not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("no /usr/sbin/sshd")


@pytest.fixture(scope="session", params=["openssh", "embedded"])
def sim(request):
    available(request.param)
    base = new_base()
    (base / "inv.yaml").write_text(INVENTORY)
    (base / "faults.yaml").write_text(FAULTS)
    root = base / "sim"
    try:
        r = cli("up", str(base / "inv.yaml"), "--dir", str(root), "--sshd", request.param,
                "--faults", str(base / "faults.yaml"))
        assert r.exit_code == 0, r.stderr
        assert r.stdout == f"{root}/inventory.yaml\n"
        yield Handle(root)
    finally:
        cli("down", "--dir", str(root))
        shutil.rmtree(base, ignore_errors=True)


def test_each_node_answers_with_its_own_tools(sim):
    for node in ("p0", "p1", "p2"):
        r = sim.ssh(node, "hccn_tool -i 0 -link -g")
        assert (r.returncode, r.stdout) == (0, "link status: UP\n"), r.stderr


def test_environment_is_per_node(sim):
    r = sim.ssh("p1", 'echo "$PATH|$DEPLOY_SIM_NODE|$DEPLOY_SIM_ROOT|$HCCN_CONF"')
    root = sim.root
    assert r.stdout.strip() == (f"{root}/bin:/usr/local/bin:/usr/bin:/bin|{root}/nodes/p1|{root}|"
                                f"{root}/nodes/p1/etc/hccn.conf")


def test_sh_s_with_stdin_separate_stderr_and_exit_status(sim):
    r = sim.ssh("p0", "sh -s", input="echo out; echo err >&2; cat $HCCN_CONF >/dev/null; exit 3\n")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")


def test_faults_file_is_applied_at_up(sim):
    assert sim.ssh("p2", "hccn_tool -i 5 -link -g").stdout == "link status: DOWN\n"
    assert sim.ssh("p2", "hccn_tool -i 4 -link -g").stdout == "link status: UP\n"


def test_tool_fault_from_the_cli(sim):
    sim.fault("p1", "link-down", "--device", "2")
    try:
        assert sim.ssh("p1", "hccn_tool -i 2 -link -g").stdout == "link status: DOWN\n"
        assert sim.ssh("p0", "hccn_tool -i 2 -link -g").stdout == "link status: UP\n"
    finally:  # the sim is shared: leave it healthy
        sim.fault("p1", "clear")
    assert sim.ssh("p1", "hccn_tool -i 2 -link -g").stdout == "link status: UP\n"


def test_manifest_and_inventory_point_at_the_sim(sim):
    m = sim.manifest
    assert m["mode"] in ("openssh", "embedded") and m["state"] == "up"
    assert m["source_inventory"].endswith("/inv.yaml")
    addrs = [n["addr"] for n in m["nodes"].values()]
    assert len(set(addrs)) == 3 and all(a.startswith(f"127.{m['block']}.") for a in addrs)
    assert all((a, m["port"]) in listening() for a in addrs)
    inv = load_inventory(m["inventory"])
    assert [(n.host, n.ip, n.user) for n in inv.nodes.values()] == [(a, a, None) for a in addrs]
    assert (inv.ssh.user, inv.ssh.port, inv.ssh.host_keys) == (m["user"], m["port"], "strict")
    assert (inv.ssh.identity_file, inv.ssh.known_hosts, inv.ssh.jump, inv.ssh.sudo) == (
        f"{sim.root}/keys/id_ed25519", f"{sim.root}/keys/known_hosts", None, False)
    assert len(Path(inv.ssh.known_hosts).read_text().splitlines()) == 3


def test_unreachable_refuses_connections_until_cleared(sim):
    sim.fault("p1", "unreachable")
    try:
        r = sim.ssh("p1", "true")
        assert r.returncode == 255 and "Connection refused" in r.stderr
        status = cli("status", "--dir", str(sim.root)).stdout
        assert "down" in next(line for line in status.splitlines() if line.startswith("p1"))
        assert sim.ssh("p0", "true").returncode == 0
    finally:
        sim.fault("p1", "clear-ssh")
    assert sim.ssh("p1", "true").returncode == 0


def test_host_key_changed_fails_strict_checking_until_cleared(sim):
    sim.fault("p2", "host-key-changed")
    try:
        r = sim.ssh("p2", "true")
        assert r.returncode == 255 and "Host key verification failed" in r.stderr
    finally:
        sim.fault("p2", "clear-ssh")
    assert sim.ssh("p2", "true").returncode == 0


def test_auth_fail_denies_until_cleared(sim):
    sim.fault("p0", "auth-fail")
    try:
        r = sim.ssh("p0", "true")
        assert r.returncode == 255 and "Permission denied" in r.stderr
    finally:
        sim.fault("p0", "clear-ssh")
    assert sim.ssh("p0", "true").returncode == 0


def test_unknown_fault_or_node_is_a_usage_error(sim):
    r = cli("fault", "--dir", str(sim.root), "p0", "melted")
    assert r.exit_code == 2
    assert all(name in r.stderr for name in ("link-down", "unreachable", "auth-fail", "clear-ssh"))
    assert cli("fault", "--dir", str(sim.root), "p9", "link-down").exit_code == 2


@pytest.mark.parametrize("mode", ["openssh", "embedded"])
def test_generated_a3_sim_and_down_leaves_nothing(mode):
    available(mode)
    base = new_base()
    root = base / "sim"
    try:
        r = cli("up", "--nodes", "2", "--soc", "a3", "--dir", str(root), "--sshd", mode)
        assert r.exit_code == 0, r.stderr
        assert r.stdout == f"{root}/inventory.yaml\n"
        inv = load_inventory(root / "inventory.yaml")
        assert (inv.soc, list(inv.nodes), len(inv.groups)) == ("a3", ["n0", "n1"], 1)
        h = Handle(root)
        assert h.ssh("n1", "hccn_tool -i 15 -link -g").stdout == "link status: UP\n"
        # Left behind on purpose: a detached process, and a session still running a command.
        assert h.ssh("n0", "nohup sleep 300 >/dev/null 2>&1 &").returncode == 0
        session = subprocess.Popen(["sh", "-c", "exec " + " ".join(
            ["ssh", "-F", "/dev/null", "-i", f"{root}/keys/id_ed25519", "-o",
             f"UserKnownHostsFile={root}/keys/known_hosts", "-o", "BatchMode=yes", "-p",
             str(h.manifest["port"]), f"{h.manifest['user']}@{h.manifest['nodes']['n1']['addr']}",
             "sleep", "300"])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not any("sleep 300" in p for p in sim_processes(root, node="n1")):
                assert time.monotonic() < deadline and session.poll() is None, "no session on n1"
                time.sleep(0.05)
            down = cli("down", "--dir", str(root))
            assert down.exit_code == 0, down.output
            assert "nothing" in down.stdout
            assert session.wait(timeout=20) != 0  # its server went away under it
            assert sim_processes(root) == []
        finally:
            session.kill()
        assert not any(addr == n["addr"] for addr, _ in listening() for n in h.manifest["nodes"].values())
        assert cli("down", "--dir", str(root)).exit_code == 0  # idempotent
    finally:
        cli("down", "--dir", str(root))
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs nodes as another user")
def test_dir_the_sim_user_cannot_reach_is_refused(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    r = cli("up", "--nodes", "1", "--dir", str(private / "sim"))
    assert r.exit_code == 1
    assert "cannot reach" in r.stderr and "--dir under /tmp" in r.stderr
    assert not (private / "sim").exists()
