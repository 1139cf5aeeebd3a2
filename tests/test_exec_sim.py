"""Issue 4's acceptance, through the real CLI: `deploy exec` against `deploy sim`, both sshd modes."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import simcluster

MODES = simcluster.MODES


def deploy(*args: str) -> subprocess.CompletedProcess:
    return simcluster.deploy(*args, env=simcluster.SHARED_ENV, timeout=120)


def sim_processes(root: Path) -> list[int]:
    """PIDs whose environment or command line mention the sim folder."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "environ").read_bytes() + (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in blob:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module", params=MODES)
def sim(request):
    work = Path(tempfile.mkdtemp(prefix="exec-sim-", dir="/tmp"))
    work.chmod(0o755)
    root = work / "sim"
    up = deploy("sim", "up", "--nodes", "4", "--soc", "a2", "--dir", str(root), "--sshd", request.param)
    assert up.returncode == 0, up.stderr
    inventory = up.stdout.strip().splitlines()[-1]
    yield root, inventory
    down = deploy("sim", "down", "--dir", str(root))
    assert down.returncode == 0, down.stdout + down.stderr
    assert sim_processes(root) == []
    shutil.rmtree(work, ignore_errors=True)


def test_link_up_folded_for_all_nodes(sim):
    root, inv = sim
    p = deploy("exec", inv, "--", "hccn_tool", "-i", "0", "-link", "-g")
    assert p.returncode == 0, p.stdout + p.stderr
    headers = [line for line in p.stdout.splitlines() if line.startswith("----")]
    assert len(headers) == 1 and "(4)" in headers[0]
    assert "link status: UP" in p.stdout
    assert "4 nodes: 4 ok, 0 failed, 0 unreachable" in p.stdout


def test_link_down_node_shown_apart(sim):
    root, inv = sim
    names = list(json.loads(deploy("exec", inv, "--json", "--", "true").stdout)["nodes"])
    target = names[2]
    assert deploy("sim", "fault", "--dir", str(root), target, "link-down", "--device", "0").returncode == 0
    try:
        p = deploy("exec", inv, "--", "hccn_tool", "-i", "0", "-link", "-g")
        assert p.returncode == 0
        blocks = re.split(r"^-+ ", p.stdout, flags=re.M)[1:]
        down = [b for b in blocks if "link status: DOWN" in b]
        up = [b for b in blocks if "link status: UP" in b]
        assert len(down) == 1 and down[0].startswith(f"{target} (1)")
        assert len(up) == 1 and "(3)" in up[0].splitlines()[0]
    finally:
        assert deploy("sim", "fault", "--dir", str(root), target, "clear").returncode == 0
    healed = deploy("exec", inv, "--", "hccn_tool", "-i", "0", "-link", "-g").stdout
    assert [line for line in healed.splitlines() if line.startswith("----")] == ["---------------- n[0-3] (4)"]


def test_unreachable_node_exit_4_others_complete(sim):
    root, inv = sim
    names = list(json.loads(deploy("exec", inv, "--json", "--", "true").stdout)["nodes"])
    target = names[1]
    assert deploy("sim", "fault", "--dir", str(root), target, "unreachable").returncode == 0
    try:
        p = deploy("exec", inv, "--json", "--", "hccn_tool", "-i", "1", "-link", "-g")
        assert p.returncode == 4
        out = json.loads(p.stdout)["nodes"]
        assert out[target]["status"] == "unreachable" and "refused" in out[target]["reason"]
        assert all(v["status"] == "ok" for k, v in out.items() if k != target)
        human = deploy("exec", inv, "--", "true")
        assert human.returncode == 4 and target in human.stdout and "refused" in human.stdout
    finally:
        assert deploy("sim", "fault", "--dir", str(root), target, "clear-ssh").returncode == 0


def test_host_key_changed_refused_with_fix(sim):
    root, inv = sim
    names = list(json.loads(deploy("exec", inv, "--json", "--", "true").stdout)["nodes"])
    target = names[0]
    assert deploy("sim", "fault", "--dir", str(root), target, "host-key-changed").returncode == 0
    try:
        p = deploy("exec", inv, "--", "true")
        assert p.returncode == 4
        assert "host key changed" in p.stdout
        assert re.search(r"ssh-keygen -R '?\[127\.[0-9.]+\]:\d+'? -f \S+", p.stdout), p.stdout
    finally:
        assert deploy("sim", "fault", "--dir", str(root), target, "clear-ssh").returncode == 0
    assert deploy("exec", inv, "--", "true").returncode == 0
