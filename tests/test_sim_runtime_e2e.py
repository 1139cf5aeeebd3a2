"""Issue 9's "Done when": a seed-shaped P/D deployment run BY HAND on `deploy sim`, both sshd modes.

Nothing of `deploy up` is used: every command goes through `deploy exec` (the real CLI over SSH),
as an engineer would type it from the guides: the `docker run` with the reference mounts and the
rank and proxy scripts printed by `deploy plan --script NODE`, started the way CONTRACT item 4
says. What the fake runtime answers is checked on the nodes (logs, npu-smi) and over HTTP on the
nodes' loopback addresses.

The deployment: an A2 P/D shaped like the V3.1 guides, scaled down: one prefill group on p0
(dp 2 x tp 4) and one decode group across d0 and d1 (dp 2, one rank per node, tp 4), proxy on p0.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import simcluster
import yaml

MODES = ["openssh", "embedded"]
NAME = "e2e"
INVENTORY = f"""\
name: {NAME}
soc: a2
nodes:
  p0: {{host: 10.9.0.1, nic: eth0}}
  d0: {{host: 10.9.0.2, nic: eth0}}
  d1: {{host: 10.9.0.3, nic: eth0}}
container: {{image: quay.io/ascend/vllm-ascend:v0.11.0rc1, mounts: ["/mnt/weights:/mnt/weights"]}}
model: {{path: /mnt/weights/DeepSeek-V3.1-w8a8, served_name: deepseek_v3}}
args: {{trust-remote-code: true, max-model-len: 4096}}
kv_transfer: {{connector: MooncakeConnectorV1}}
groups:
  - {{name: p, role: prefill, nodes: [p0], dp: 2, tp: 4, port: 7100, dp_rpc_port: 12321, kv_port: 36000}}
  - {{name: d, role: decode, nodes: [d0, d1], dp: 2, dp_local: 1, tp: 4, port: 7200, dp_rpc_port: 12421,
      kv_port: 36100}}
proxy: {{node: p0, port: 1999}}
"""
START = 'setsid sh "$1" </dev/null >"$2" 2>&1 & echo $! >"$3"'
TIME_FACTOR = "0.05"  # vLLM's limits x 0.05: the 5-minute handshake 15 s, VLLM_ENGINE_READY_TIMEOUT_S 600: 30 s


def deploy(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return simcluster.deploy(*args, env=simcluster.SHARED_ENV, timeout=timeout)


class Deployment:
    """The sim and what the guides have an engineer type on each node."""

    def __init__(self, mode: str, inventory: str = INVENTORY, startup: str = "0.3", time_factor: str = TIME_FACTOR):
        if mode == "openssh" and not os.access("/usr/sbin/sshd", os.X_OK):
            pytest.skip("no /usr/sbin/sshd")
        self.base = Path(tempfile.mkdtemp(prefix="e2e-sim-", dir="/tmp"))
        self.base.chmod(0o755)
        (self.base / "inv.yaml").write_text(inventory)
        self.root = self.base / "sim"
        p = deploy("sim", "up", str(self.base / "inv.yaml"), "--dir", str(self.root), "--sshd", mode,
                   "--startup", startup, "--time-factor", time_factor)
        try:
            assert p.returncode == 0, p.stderr
            self.inventory = p.stdout.strip().splitlines()[-1]
            self.inv = yaml.safe_load(Path(self.inventory).read_text())
            self.scripts = {n: plan_sections(deploy("plan", self.inventory, "--script", n).stdout) for n in self.inv["nodes"]}
            from orchestrator.inventory import load_inventory
            from orchestrator.plan import make_plan

            self.plan = make_plan(load_inventory(self.inventory))
            self.state = f"/var/tmp/deploy/{self.inv['name']}"
            self.name = f"vllm-{self.inv['name']}"
        except BaseException:  # never leave a sim running behind a failed set-up
            self.down()
            raise

    # -- commands over SSH
    def on(self, node: str, *argv: str, timeout: float = 60) -> dict:
        p = deploy("exec", self.inventory, "--json", "--nodes", node, "--timeout", str(timeout), "--", *argv,
                   timeout=timeout + 30)
        return json.loads(p.stdout)["nodes"][node]

    def sh(self, node: str, script: str, *args: str) -> dict:
        return self.on(node, "sh", "-c", script, "sh", *args)

    def container(self, node: str, drop: tuple[str, ...] = ()) -> None:
        argv = list(self.scripts[node]["container"])
        for mount in drop:  # leave a reference mount out, as a hand-written docker run might
            i = argv.index(mount)
            del argv[i - 1:i + 1]
        o = self.on(node, *argv)
        assert o["status"] == "ok", o
        self.guard(node)

    def guard(self, node: str) -> None:
        """The socket-env guard (the V4-Pro guide's sitecustomize.py: vLLM's DP engine cores lose
        *_SOCKET_IFNAME), installed into the image's site-packages as `deploy up` does."""
        from orchestrator import nodepaths, scripts

        path = nodepaths.sitecustomize_file(self.plan.inventory)
        o = self.sh(node, 'mkdir -p "$DEPLOY_NODE_ROOT$(dirname "$1")" && printf %s "$2" > "$DEPLOY_NODE_ROOT$1"',
                    path, scripts.sitecustomize_for(self.plan, node))
        assert o["status"] == "ok", o
        o = self.on(node, *scripts.sitecustomize_install_argv(self.plan, node))
        assert o["status"] == "ok", o

    def write_scripts(self, node: str, env: dict[str, str] | None = None) -> None:
        """The node's scripts from `deploy plan --script`; `env`: exports added at the top, as a
        user would for one try."""
        for name, text in self.scripts[node]["files"].items():
            if env:
                first, _, rest = text.partition("\n")
                text = first + "\n" + "".join(f"export {k}={v}\n" for k, v in env.items()) + rest
            o = self.sh(node, 'mkdir -p "$DEPLOY_NODE_ROOT$(dirname "$1")" && printf %s "$2" > "$DEPLOY_NODE_ROOT$1"',
                        f"{self.state}/{name}", text)
            assert o["status"] == "ok", o

    def bring_up(self, order: list[str]) -> None:
        """Everything in the right order: containers (and guard), scripts, ranks node by node
        (`order`: group masters first), then the proxy."""
        for node in self.inv["nodes"]:
            self.container(node)
            self.write_scripts(node)
        for node in order:
            for script in self.ranks(node):
                self.start(node, script)
        proxy = self.inv["proxy"]["node"]
        self.start(proxy, "proxy.sh")

    def start(self, node: str, script: str) -> int:
        base = script.removesuffix(".sh")
        o = self.on(node, "docker", "exec", self.name, "sh", "-c", START, "sh", f"{self.state}/{script}",
                    f"{self.state}/{base}.log", f"{self.state}/{base}.pid")
        assert o["status"] == "ok", o
        return int(self.sh(node, 'cat "$DEPLOY_NODE_ROOT$1"', f"{self.state}/{base}.pid")["stdout"])

    def log(self, node: str, script: str) -> str:
        return self.sh(node, 'cat "$DEPLOY_NODE_ROOT$1"', f"{self.state}/{script.removesuffix('.sh')}.log")["stdout"]

    def wait_log(self, node: str, script: str, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.log(node, script)
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{node} {script}: no {pattern!r} within {timeout}s:\n{text[-3000:]}")
            time.sleep(0.3)

    def wait_dead(self, node: str, pid: int, timeout: float = 30) -> None:
        """Until the node's /proc says the process is gone (a zombie counts as gone)."""
        deadline = time.monotonic() + timeout
        while self.sh(node, 'sed "s/.*) //" /proc/"$1"/stat 2>/dev/null | cut -d" " -f1',
                      str(pid))["stdout"].strip() not in ("", "Z", "X"):
            assert time.monotonic() < deadline, f"{node}: pid {pid} still alive after {timeout}s"
            time.sleep(0.2)

    def ranks(self, node: str) -> list[str]:
        return sorted(n for n in self.scripts[node]["files"] if n.startswith("rank-"))

    def addr(self, node: str) -> str:
        return self.inv["nodes"][node]["host"]

    def smi(self, node: str) -> str:
        o = self.on(node, "npu-smi", "info")
        assert o["status"] == "ok", o
        return o["stdout"]

    def reset(self) -> None:
        for node in self.inv["nodes"]:
            self.on(node, "docker", "rm", "-f", self.name)
            deploy("sim", "fault", "--dir", str(self.root), node, "clear")

    def down(self) -> None:
        deploy("sim", "down", "--dir", str(self.root))
        shutil.rmtree(self.base, ignore_errors=True)


def plan_sections(text: str) -> dict:
    """`deploy plan --script NODE` -> {"container": docker run argv, "files": {name: text}}."""
    out: dict = {"container": None, "files": {}}
    sections = re.split(r"^# ==== (.+)$", text, flags=re.M)
    for header, body in zip(sections[1::2], sections[2::2]):
        body = body.strip("\n") + "\n"
        if header.startswith("container "):
            import shlex

            out["container"] = shlex.split(body.strip().splitlines()[0])
        elif header.endswith(".sh"):
            out["files"][header.strip()] = body
    assert out["container"] and out["files"], text
    return out


def http(addr: str, port: int, path: str, body: dict | None = None, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{addr}:{port}{path}", method="POST" if body else "GET",
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, ""


def wait_health(addr: str, port: int, path: str = "/health", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while http(addr, port, path, timeout=2)[0] != 200:
        assert time.monotonic() < deadline, f"{addr}:{port}{path} not 200 within {timeout}s"
        time.sleep(0.2)


@pytest.fixture(scope="module", params=MODES)
def dep(request):
    d = Deployment(request.param)
    yield d
    d.down()


@pytest.fixture
def fresh(dep):
    yield dep
    dep.reset()


def test_right_order_serves_a_completion_through_the_proxy(fresh):
    d = fresh
    for node in ("p0", "d0", "d1"):
        d.container(node)
        d.write_scripts(node)
    for node in ("d0", "d1", "p0"):  # decode group master first, as the guides do
        for script in d.ranks(node):
            d.start(node, script)
    for node, port in (("p0", 7100), ("p0", 7101), ("d0", 7200)):
        wait_health(d.addr(node), port)
    d.wait_log("d0", d.ranks("d0")[0], r"Application startup complete\.")
    d.start("p0", "proxy.sh")
    wait_health(d.addr("p0"), 1999, "/healthcheck")
    status, text = http(d.addr("p0"), 1999, "/v1/completions",
                        {"model": "deepseek_v3", "prompt": "Hello", "max_tokens": 8})
    assert status == 200, text
    assert json.loads(text)["choices"][0]["text"].strip()
    smi = d.smi("d1")
    assert re.search(r"^\| \d+\s+0\s+\| \d+\s+\| \S", smi, re.M), smi  # the rank holds its devices


def test_missing_rank_hangs_then_times_out(fresh):
    d = fresh
    d.container("d0")
    d.write_scripts("d0", {"VLLM_ENGINE_READY_TIMEOUT_S": "60"})  # x time factor: 3 s
    d.start("d0", d.ranks("d0")[0])  # d1's rank never comes
    time.sleep(1)
    assert http(d.addr("d0"), 7200, "/health", timeout=2)[0] != 200  # hangs: not healthy
    d.wait_log("d0", d.ranks("d0")[0], r"Timed out waiting for engine core processes to start")


def test_tls_mismatch_gives_ei0016_on_both_nodes(fresh):
    d = fresh
    assert deploy("sim", "fault", "--dir", str(d.root), "d1", "tls-on").returncode == 0
    for node in ("d0", "d1"):
        d.container(node)
        d.write_scripts(node)
        d.start(node, d.ranks(node)[0])
    for node in ("d0", "d1"):
        d.wait_log(node, d.ranks(node)[0], r"EI0016")


def test_missing_hccn_conf_mount_gives_the_ranktable_line(fresh):
    d = fresh
    d.container("d0")
    d.container("d1", drop=("/etc/hccn.conf:/etc/hccn.conf",))
    for node in ("d0", "d1"):
        d.write_scripts(node)
        d.start(node, d.ranks(node)[0])
    d.wait_log("d1", d.ranks("d1")[0], r"\[RanktablCheck\] 'device ip' is not set correctly")


def test_sigkill_of_a_rank_leaves_its_orphan_holding_hbm(fresh):
    """kill -9 of a rank's API server alone (not its process group): its VLLM::EngineCore lives on
    holding the devices (vllm#55510), and the group restarted on them is refused. (A rank restarted
    alone cannot rejoin its formed DP group at all: it waits, then times out.)"""
    d = fresh
    d.container("p0")
    d.write_scripts("p0")
    rank0, rank1 = d.ranks("p0")  # devices 0-3 and 4-7
    pids = [d.start("p0", s) for s in (rank0, rank1)]
    wait_health(d.addr("p0"), 7100)
    assert d.on("p0", "kill", "-9", str(pids[0]))["status"] == "ok"
    d.wait_dead("p0", pids[0])
    smi = d.smi("p0")
    held = [ln for ln in smi.splitlines() if re.match(r"^\| [0-3]\s+0\s+\| \d+", ln)]
    assert held, smi  # the orphan still holds devices 0-3 ...
    assert all(f"| {pids[0]} " not in ln for ln in held), smi  # ... as itself, not the dead parent
    hbm = [int(m) for m in re.findall(r"(\d+)\s*/\s*65536", smi)]
    assert min(hbm[0:4]) > 30000, smi  # and their HBM
    # restart the group: stop rank 1 (its process group, inside the container), start both again
    assert d.on("p0", "docker", "exec", d.name, "sh", "-c", 'kill -TERM -"$1"', "sh", str(pids[1]))["status"] == "ok"
    d.wait_dead("p0", pids[1])
    for script in (rank0, rank1):
        d.start("p0", script)
    d.wait_log("p0", rank0, r"ValueError: Free memory on device \(.*\) on startup is less than desired GPU memory "
                            r"utilization")
