"""The shared driver of the end-to-end tests: the real CLI (a subprocess) against `deploy sim`.

Why one module: the e2e files each carried their own `deploy()` runner and `Sim` wrapper (start
a simulated cluster from an inventory, inject faults, restore, stop it); one copy keeps them the
same and keeps the leak check (`assert_nothing_left`: on every node no container, no process in
npu-smi, no deployment port listening — checked on the nodes, not by trusting our own kill) in
one place.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: Both SSH server kinds when the system sshd exists (for what SSH itself decides), else embedded.
MODES = ["openssh", "embedded"] if Path("/usr/sbin/sshd").exists() else ["embedded"]
#: The state folder the tests that need no deployment of their own share (check-network, ranktable).
SHARED_ENV = {"DEPLOY_STATE_DIR": os.environ.get("DEPLOY_STATE_DIR", tempfile.gettempdir() + "/deploy-test-state")}


def deploy(*args: str, env: dict | None = None, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m orchestrator ARGS` with this environment plus `env`; `check`: fail on a non-zero exit."""
    p = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"deploy {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


class Sim:
    """One simulated cluster in its own /tmp folder, from an inventory (text or a file).

    `readiness_timeout` overrides readiness.timeout of the inventory; `state=True` gives the sim
    its own DEPLOY_STATE_DIR (ledger, runs) so tests in parallel never share a deployment;
    `startup` / `time_factor` go to `deploy sim up` when given."""

    def __init__(self, source: str | Path, mode: str, *, prefix: str = "sim-", readiness_timeout: float | None = None,
                 state: bool = True, startup: str | None = None, time_factor: str | None = None,
                 up_args: Sequence[str] = ()):
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.dir.chmod(0o755)
        text = source.read_text() if isinstance(source, Path) else source
        if readiness_timeout is not None:
            data = yaml.safe_load(text)
            data.setdefault("readiness", {})["timeout"] = readiness_timeout
            text = yaml.safe_dump(data, sort_keys=False)
        src = self.dir / "source.yaml"
        src.write_text(text)
        self.env = {"DEPLOY_STATE_DIR": str(self.dir / "state")} if state else dict(SHARED_ENV)
        extra = (["--startup", startup] if startup is not None else []) + \
                (["--time-factor", time_factor] if time_factor is not None else []) + list(up_args)
        p = deploy("sim", "up", str(src), "--dir", str(self.sim), "--sshd", mode, *extra, env=self.env)
        if p.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise AssertionError(f"deploy sim up -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        self.mode = mode
        self.inventory = p.stdout.strip().splitlines()[-1]
        self.inv = yaml.safe_load(Path(self.inventory).read_text())
        self.faulted: set[str] = set()

    @property
    def sim(self) -> Path:
        """The simulator's own folder (`--dir`)."""
        return self.dir / "sim"

    @property
    def ledger_path(self) -> Path:
        return Path(self.env["DEPLOY_STATE_DIR"]) / self.inv["name"] / "ledger.json"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return deploy(*args, env=self.env, timeout=timeout)

    def json(self, *args: str) -> tuple[int, dict]:
        p = self.run(*args, "--json")
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            raise AssertionError(f"not one JSON object on stdout (rc {p.returncode}):\n{p.stdout}\n{p.stderr}") from None
        return p.returncode, doc

    def node_exec(self, *argv: str, nodes: str | None = None) -> dict:
        args = ["exec", self.inventory, "--json"] + (["--nodes", nodes] if nodes else []) + ["--", *argv]
        p = self.run(*args)
        return json.loads(p.stdout)["nodes"]

    def fault(self, node: str, fault: str, device: int | None = None) -> None:
        """`deploy sim fault NODE FAULT [--device N]`; the node is remembered for `restore`."""
        args = ["sim", "fault", "--dir", str(self.sim), node, fault]
        if device is not None:
            args += ["--device", str(device)]
        p = self.run(*args)
        assert p.returncode == 0, p.stderr
        self.faulted.add(node)

    def restore(self) -> None:
        """`deploy sim fault NODE clear` on every node a test broke."""
        for node in sorted(self.faulted):
            deploy("sim", "fault", "--dir", str(self.sim), node, "clear", env=self.env, check=True)
        self.faulted.clear()

    def assert_nothing_left(self) -> None:
        """On every node: no container, no process in npu-smi, no deployment port listening."""
        out = self.node_exec("sh", "-c", "docker ps -a -q; echo @@npu-smi; npu-smi info")
        for node, o in out.items():
            assert o["status"] == "ok", o
            ps, sep, smi = o["stdout"].partition("@@npu-smi\n")
            assert sep and ps.strip() == "", f"{node} still has containers: {ps}"
            assert "Process id" in smi
            rows = [ln for ln in smi.splitlines() if ln.startswith("|") and "No running processes" not in ln]
            procs = [ln for ln in rows if ln.count("|") == 5 and ln.split("|")[2].strip().isdigit()]
            assert not procs, f"{node} still has processes:\n" + "\n".join(procs)
        addrs = {n["host"] for n in self.inv["nodes"].values()}
        ports = plan_ports(self.inventory)
        held = [(a, p) for a, p in listening() if a in addrs and p in ports]
        assert not held, f"still listening: {held}"

    def down(self) -> None:
        deploy("sim", "down", "--dir", str(self.sim), env=self.env)
        shutil.rmtree(self.dir, ignore_errors=True)


def plan_ports(inventory: str) -> set[int]:
    """Every port the plan of the inventory listens on (HTTP, kv ranges, proxy)."""
    from orchestrator.inventory import load_inventory
    from orchestrator.plan import make_plan

    plan = make_plan(load_inventory(inventory)).to_json()
    ports = {r["port"] for r in plan["ranks"] if r["port"]}
    ports |= {p for r in plan["ranks"] if r.get("kv_ports") for p in range(r["kv_ports"][0], r["kv_ports"][1] + 1)}
    if plan["proxy"]:
        ports.add(plan["proxy"]["port"])
    return ports


def listening() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket on this machine (the nodes are loopback addresses)."""
    from orchestrator.launch.nodeside import parse_listening

    return parse_listening(Path("/proc/net/tcp").read_text())
