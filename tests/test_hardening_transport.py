"""Issue 8, run side: interruption, silent nodes, bounded output, a broken state folder, causes.

Real SSH servers (tests/conftest_ssh.py) run every command as a real process on this machine, so
"nothing left on the node" is checked in /proc, never by trusting our own kill.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.runlog import inside
from orchestrator.transport import Cause, Cluster

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full, **kw)


def live(marker: str) -> list[int]:
    """PIDs (not zombies) whose argv is exactly `marker` split on spaces."""
    want = marker.replace(" ", "\0").encode() + b"\0"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmd == want and state != "Z" and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def wait_for(predicate, limit: float = 30) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_kills_remote_commands_and_writes_the_result(farm, tmp_path, sig, code):
    for n in ("d0", "d1", "d2"):
        farm.add(n)
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    marker = f"{os.getpid() % 1000}.{int(sig)}13"  # unique argv: sleep <marker>
    script = (f'if [ "$FAKE_NODE" = d0 ]; then echo quick; else sh -c "sleep {marker}; :" & '
              f'sleep {marker}; fi')
    p = cli("exec", str(inv), "--", "sh", "-c", script,
            env={"DEPLOY_STATE_DIR": str(tmp_path / "state")})
    # every node's commands are running (2 nodes x 2 sleeps, one of them a grandchild) and d0's
    # has finished: its node log has the end record (under load d0 can finish after the sleeps start)
    assert wait_for(lambda: len(live(f"sleep {marker}")) == 4), live(f"sleep {marker}")
    runs = tmp_path / "state" / "farm" / "runs"
    assert wait_for(lambda: any(" ok rc=0 " in log.read_text() for log in runs.glob("*/d0.log")))
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert wait_for(lambda: not live(f"sleep {marker}"), 10), "left running on the node"
    assert "quick" in out and "interrupted" in out
    assert "3 nodes: 1 ok, 2 failed, 0 unreachable, 2 interrupted" in out
    [run] = list((tmp_path / "state" / "farm" / "runs").iterdir())
    doc = json.loads((run / "result.json").read_text())
    assert doc["interrupted"] == sig and doc["exit_code"] == code
    assert doc["nodes"]["d0"]["cause"] == "ok"
    assert {doc["nodes"][n]["cause"] for n in ("d1", "d2")} == {"interrupted"}


def test_second_ctrl_c_exits_at_once(farm, tmp_path):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    marker = f"{os.getpid() % 1000}.777"
    # the first Ctrl-C's kill cannot finish: the kill channel hangs (a node-side `grep` that
    # never returns), so only the second Ctrl-C ends the run
    fake = tmp_path / "hang"
    fake.mkdir()
    (fake / "grep").write_text(f"#!/bin/sh\nexec sleep {marker}9\n")
    (fake / "grep").chmod(0o755)
    p = cli("exec", str(inv), "--", "sh", "-c", f"sleep {marker}",
            env={"DEPLOY_STATE_DIR": str(tmp_path / "state"),
                 "PATH": f"{fake}:{os.environ['PATH']}"})
    assert wait_for(lambda: live(f"sleep {marker}"))
    os.environ["PATH"] = f"{fake}:{os.environ['PATH']}"  # the farm's shell finds the hung grep
    try:
        p.send_signal(signal.SIGINT)
        assert wait_for(lambda: live(f"sleep {marker}9"))
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
        for pid in live(f"sleep {marker}"):
            os.kill(pid, signal.SIGKILL)
    assert p.returncode == 130
    assert "interrupted again: exiting now" in err  # not the first interrupt's slow exit


def test_silent_node_does_not_hold_back_the_others(farm):
    farm.add("d0")
    silent = farm.add("d1", listen=False)
    done: list[str] = []
    with socket.socket() as s:  # accepts TCP (backlog) but never says a word of SSH
        s.bind((silent.addr, silent.port))
        s.listen(8)
        inv = farm.inventory(connect_timeout=2)

        async def main():
            async with Cluster(inv) as c:
                return await c.run_all(["echo", "hi"], on_done=lambda o: done.append(o.node))

        results = asyncio.run(main())
    assert done == ["d0", "d1"]  # d0 ran and finished while d1 was still connecting
    assert results["d0"].ok and results["d1"].cause is Cause.UNREACHABLE
    assert results["d1"].reason.startswith("timeout: no SSH session within 2s")
    assert "attempts" not in results["d1"].reason  # a silent node is not retried


def test_each_returns_per_node_results(farm):
    for n in ("d0", "d1"):
        farm.add(n)

    async def main():
        async with Cluster(farm.inventory()) as c:
            async def fn(node):
                o = await c.run(node, ["sh", "-c", "echo $FAKE_NODE"])
                return o.stdout.strip()
            return await c.each(["d0", "d1"], fn)

    assert asyncio.run(main()) == {"d0": "d0", "d1": "d1"}


def test_a_bug_is_not_unreachable(farm, monkeypatch):
    farm.add("d0")

    def broken(self, host):
        raise KeyError("a programming error")

    monkeypatch.setattr(Cluster, "_config", broken)

    async def main():
        async with Cluster(farm.inventory()) as c:
            return await c.run("d0", ["true"])

    with pytest.raises(KeyError):
        asyncio.run(main())


def test_causes(farm):
    farm.add("d0")

    async def main():
        async with Cluster(farm.inventory()) as c:
            return (await c.run("d0", ["true"]), await c.run("d0", ["false"]),
                    await c.run("d0", ["sleep", "9.5"], timeout=0.3))

    ok, failed, slow = asyncio.run(main())
    assert (ok.cause, failed.cause, slow.cause) == (Cause.OK, Cause.FAILED, Cause.TIMED_OUT)
    assert (ok.status, failed.status, slow.status) == ("ok", "failed", "failed")


def test_sudo_refused_could_not_run(farm):
    farm.add("d0")
    (farm.bin / "sudo").write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")

    async def main():
        async with Cluster(farm.inventory(sudo=True)) as c:
            return await c.run("d0", ["true"])

    o = asyncio.run(main())
    assert o.cause is Cause.COULD_NOT_RUN and o.reason.startswith("sudo refused")



def test_50mb_of_output_keeps_memory_and_logs_bounded(farm, tmp_path):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    state = tmp_path / "state"
    # 50 MB on one line, then a last line: the head and the tail survive, the middle is logged
    script = "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo the-end"
    env = dict(os.environ, PYTHONPATH=str(ROOT), DEPLOY_STATE_DIR=str(state))
    # A small wrapper forks the CLI and reports its peak RSS: forking from this (large) pytest
    # process would charge the CLI with pytest's own pages (ru_maxrss keeps the pre-exec size).
    wrapper = ("import os, sys, json\n"
               "pid = os.fork()\n"
               "if pid == 0:\n"
               "    f = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
               "    os.dup2(f, 1)\n"
               "    os.execv(sys.executable, [sys.executable, '-m', 'orchestrator', *sys.argv[2:]])\n"
               "_, status, usage = os.wait4(pid, 0)\n"
               "print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss]))\n")
    w = subprocess.run([sys.executable, "-S", "-c", wrapper, str(tmp_path / "out"), "exec", str(inv), "--json",
                        "--", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    rc, maxrss = json.loads(w.stdout)
    assert rc == 0, w.stderr
    peak_mib = maxrss / 1024
    assert peak_mib < 120, f"peak RSS {peak_mib:.0f} MiB for 50 MB of output"
    doc = json.loads((tmp_path / "out").read_text())
    node = doc["nodes"]["d0"]
    assert node["stdout"].startswith("xxxx") and node["stdout"].endswith("the-end\n")
    assert node["omitted_bytes"] > 49_000_000 and len(node["stdout"]) < 1_000_000
    [log] = list(state.glob("farm/runs/*/d0.log"))
    size = log.stat().st_size
    assert 50_000_000 <= size < 51_000_000  # the whole output once, a header per chunk


def test_run_log_cap(farm, tmp_path):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    p = cli("exec", str(inv), "--", "sh", "-c", "head -c 5000000 /dev/zero",
            env={"DEPLOY_STATE_DIR": str(tmp_path / "state"), "DEPLOY_RUN_LOG_MAX": "1000000"})
    p.communicate(timeout=120)
    assert p.returncode == 0
    [log] = list((tmp_path / "state").glob("farm/runs/*/d0.log"))
    assert log.stat().st_size < 1_100_000
    assert b"log cap of 1000000 bytes" in log.read_bytes()


def test_old_runs_are_pruned(farm, tmp_path):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    runs = tmp_path / "state" / "farm" / "runs"
    runs.mkdir(parents=True)
    for i in range(5):
        (runs / f"2020010{i}T000000Z-exec").mkdir()
    p = cli("exec", str(inv), "--", "true",
            env={"DEPLOY_STATE_DIR": str(tmp_path / "state"), "DEPLOY_KEEP_RUNS": "3"})
    p.communicate(timeout=60)
    assert p.returncode == 0
    names = sorted(x.name for x in runs.iterdir())
    assert len(names) == 3 and names[:2] == ["20200103T000000Z-exec", "20200104T000000Z-exec"]


def test_unwritable_state_folder_loses_nothing(farm, tmp_path):
    farm.add("d0"), farm.add("d1")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    blocker = tmp_path / "state-is-a-file"
    blocker.write_text("")
    marker = tmp_path / "ran-on-node"
    p = cli("exec", str(inv), "--", "sh", "-c", f"touch {marker}-$FAKE_NODE; echo done",
            env={"DEPLOY_STATE_DIR": str(blocker)})
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    assert "---------------- d[0-1] (2)\ndone\n" in out and "2 nodes: 2 ok" in out
    assert str(blocker) in err and "Traceback" not in err
    assert (tmp_path / "ran-on-node-d0").exists() and (tmp_path / "ran-on-node-d1").exists()


def test_full_state_folder_loses_nothing(farm, tmp_path):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")

    def small_files():  # every write past 2 KB fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    p = cli("exec", str(inv), "--json", "--", "sh", "-c", "head -c 100000 /dev/zero | tr '\\0' y",
            env={"DEPLOY_STATE_DIR": str(tmp_path / "state")}, preexec_fn=small_files)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    doc = json.loads(out)
    assert doc["nodes"]["d0"]["cause"] == "ok" and len(doc["nodes"]["d0"]["stdout"]) == 100000
    assert str(tmp_path / "state") in doc["state_error"]
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e12", "abc"])
def test_timeout_must_be_finite_and_bounded(farm, tmp_path, value):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    p = cli("exec", str(inv), "--json", "--timeout", value, "--", "true")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 2 and "--timeout" in doc["error"]


@pytest.mark.parametrize("selector,word", [("n[0-99999999]", "more than"),
                                           ("d[3-1]", "reversed"),
                                           ("d[0-99999999999999999999]", "too large")])
def test_node_selector_is_bounded(farm, tmp_path, selector, word):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    p = cli("exec", str(inv), "--json", "--nodes", selector, "--", "true")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    doc = json.loads(out)
    assert doc["exit_code"] == 2 and word in doc["error"]


def test_json_on_inventory_error_is_one_object(tmp_path):
    bad = tmp_path / "inv.yaml"
    bad.write_text("name: x\nsoc: a2\nnodes: {n0: {host: 10.0.0.1, nic: eth0, ip: 1.2.3}}\n")
    for args in (["exec", str(bad), "--json", "--", "true"], ["check-network", str(bad), "--json"]):
        p = cli(*args)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 2
        doc = json.loads(out)
        assert doc["ok"] is False and doc["exit_code"] == 2
        fields = {x["field"] for x in doc["problems"]}
        assert "nodes.n0.ip" in fields and all(x["line"] for x in doc["problems"])


def test_local_paths_stay_in_their_folder(tmp_path):
    assert inside(tmp_path, "d0", ".log") == tmp_path / "d0.log"
    for bad in ("../x", "a/b", "..", ".", "", ".hidden", "x\0y"):
        with pytest.raises(ValueError):
            inside(tmp_path, bad, ".log")


@pytest.mark.parametrize("mode", ["openssh", "embedded"])
def test_interrupt_against_the_simulator_leaves_nothing_on_the_node(tmp_path, mode):
    """`deploy sim` nodes (real sshd when present): the kill goes through the node's own sshd."""
    if mode == "openssh" and not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs OpenSSH's sshd")
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="h8-int-", dir="/tmp"))
    work.chmod(0o755)
    root = work / "sim"
    env = {"DEPLOY_STATE_DIR": str(tmp_path / "state")}
    up = cli("sim", "up", "--nodes", "2", "--soc", "a2", "--dir", str(root), "--sshd", mode, env=env)
    out, err = up.communicate(timeout=120)
    assert up.returncode == 0, err
    inventory = out.strip().splitlines()[-1]
    marker = f"{os.getpid() % 1000}.9191"
    try:
        p = cli("exec", inventory, "--", "sh", "-c", f"sleep {marker} & sleep {marker}", env=env)
        assert wait_for(lambda: len(live(f"sleep {marker}")) == 4), live(f"sleep {marker}")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130, err
        assert wait_for(lambda: not live(f"sleep {marker}"), 10), "left running on the node"
    finally:
        down = cli("sim", "down", "--dir", str(root), env=env)
        down.communicate(timeout=120)
        for pid in live(f"sleep {marker}"):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def test_keep_head_and_tail_are_configurable(farm, tmp_path):
    from click.testing import CliRunner

    from orchestrator.commands.exec import command as exec_command

    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = CliRunner().invoke(exec_command, [str(inv), "--json", "--keep-head", "10", "--keep-tail",
                                          "5", "--", "printf", "0123456789abcdefghijKLMNO"])
    assert r.exit_code == 0, r.output
    node = json.loads(r.stdout)["nodes"]["d0"]
    head, marker, tail = node["stdout"].split("\n")
    assert (head, tail) == ("0123456789", "KLMNO") and "10 bytes omitted" in marker
    assert node["omitted_bytes"] == 10
    [log] = list((tmp_path / "state").glob("farm/runs/*/d0.log"))
    assert b"0123456789abcdefghijKLMNO" in log.read_bytes()  # all of it in the log
