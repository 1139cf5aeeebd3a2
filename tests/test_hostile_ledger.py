"""A tampered ledger and hostile pid files on a node never make `up`, `status` or `teardown` run
anything or signal anything but our own process groups.

The ledger (local, `$DEPLOY_STATE_DIR/<name>/ledger.json`) and the pid files (on the node, in
`/var/tmp/deploy/<name>/`) are read back by later commands: the PIDs in them are put on kill lines,
their entries name nodes. A value that is not exactly what deploy wrote (`"1; touch CANARY"`,
`1` — `kill -TERM -1` is every process — `0`, `²`, a second line) is ignored or the whole ledger
refused, never signalled, never a traceback. End to end against `deploy sim` (the module's
simulator of tests/test_fuzz_up.py); the units first.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from test_fuzz_up import CANARY, Node, canaries, deploy, nothing_left

from orchestrator.launch import nodeside
from orchestrator.launch.ledger import Ledger, RankEntry

HOSTILE_PIDS = ["1", "0", "-1", "²", "١٢٣", "12 13", "123\n456", f"1; touch {CANARY}", f"$(touch {CANARY})",
                "99999999", "0x10", "+5", "", "\x00", "4194305"]


@pytest.mark.parametrize("text", HOSTILE_PIDS)
def test_a_pid_file_with_anything_but_one_pid_of_ours_is_ignored(text):
    out = nodeside.parse_pids(f"@@pid /a.pid\n{text}\n@@pid /b.pid\n4242\n")
    assert out == {"/b.pid": 4242}
    if "\n" not in text:  # one line per started script; callers look up their own paths
        assert "/a.pid" not in nodeside.parse_started(f"/a.pid {text}\n")
    assert all(nodeside.pid_value(p) == p for p in nodeside.parse_alive(f"{text} S\n"))


def test_pid_lines_never_carry_pid_0_or_1():
    for bad in ([1], [0], [-1], [True], [4194305]):
        with pytest.raises(ValueError):
            nodeside.signal_groups("c", bad, "TERM")
        with pytest.raises(ValueError):
            nodeside.alive("c", bad)
    # the node-side loop refuses them too (defence in depth): run it with `kill` recorded
    argv = nodeside.signal_groups("c", [4242, 4243], "TERM")
    script = argv[argv.index("-c") + 1]
    p = subprocess.run(["sh", "-c", 'kill() { echo "kill $*"; }; ' + script, "sh", "TERM", "1", "0", "", "1;x",
                        "-1", "01", "4242"], capture_output=True, text=True, timeout=10)
    assert p.stdout.splitlines() == ["kill -TERM -4242"]


def test_node_side_reads_of_pid_files_and_logs_are_bounded(tmp_path):
    """A FIFO (a read blocks) or a link to /dev/zero (a read never ends) where a pid file or a log
    should be: the node-side script `status`/`teardown`/`up` send returns at once, nothing read."""
    state = tmp_path / "var/tmp/deploy/x"
    state.mkdir(parents=True)
    os.mkfifo(state / "fifo.pid")
    (state / "zero.pid").symlink_to("/dev/zero")
    (state / "ok.pid").write_text("4242\n")
    os.mkfifo(state / "fifo.log")
    (state / "zero.log").symlink_to("/dev/zero")
    (state / "ok.log").write_text("x" * 3_000_000 + "\nlast line\n")
    names = ["fifo", "zero", "ok"]
    script = nodeside.pids_script([f"/var/tmp/deploy/x/{n}.pid" for n in names])
    script += nodeside.tail_script([f"/var/tmp/deploy/x/{n}.log" for n in names], 1)
    proc = subprocess.Popen(["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={"PATH": "/usr/bin:/bin", "DEPLOY_NODE_ROOT": str(tmp_path)})
    try:
        out, _ = proc.communicate(script, timeout=20)
    finally:  # a read that blocks (the FIFO) must not outlive the test
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    assert nodeside.parse_pids(p.stdout) == {"/var/tmp/deploy/x/ok.pid": 4242}
    tails = nodeside.parse_tails(p.stdout)
    assert tails["/var/tmp/deploy/x/ok.log"] == "last line"
    assert tails["/var/tmp/deploy/x/fifo.log"] == tails["/var/tmp/deploy/x/zero.log"] == ""
    assert len(p.stdout) < 10_000


def _ledger(tmp_path, monkeypatch, **changes) -> Ledger:
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path))
    led = Ledger("x", inventory_text="name: x\n", ranks={"p-n0-0": RankEntry("p-n0-0", "n0", "p", 4242, 1.0)},
                 proxy_pid=4243, containers={"n0": "abc"})
    led.save()
    data = json.loads(Ledger.path_for("x").read_text())
    for path, value in changes.items():
        cur = data
        keys = path.split(".")
        for k in keys[:-1]:
            cur = cur[k]
        cur[keys[-1]] = value
    Ledger.path_for("x").write_text(json.dumps(data))
    return led


@pytest.mark.parametrize("path,value", [
    ("ranks.p-n0-0.pid", f"1; touch {CANARY}"), ("ranks.p-n0-0.pid", 1), ("ranks.p-n0-0.pid", 0),
    ("ranks.p-n0-0.pid", True), ("ranks.p-n0-0.pid", "4242"), ("ranks.p-n0-0.pid", -4242),
    ("ranks.p-n0-0.pid", 4242.0), ("ranks.p-n0-0.node", ["n0"]), ("ranks.p-n0-0.key", "other"),
    ("ranks.p-n0-0.started", "yesterday"), ("ranks.p-n0-0.evil", "$(touch x)"), ("ranks.p-n0-0", "x"),
    ("proxy_pid", "$(touch x)"), ("proxy_pid", 1), ("containers", {"n0": ["x"]}), ("name", "other"),
    ("ranks", []), ("plan", "x"), ("inventory_text", 5), ("steps", {}),
])
def test_a_tampered_ledger_is_refused_whole_naming_it(tmp_path, monkeypatch, path, value):
    _ledger(tmp_path, monkeypatch, **{path: value})
    with pytest.raises(ValueError, match="ledger"):
        Ledger.load("x")


def test_an_untampered_ledger_loads(tmp_path, monkeypatch):
    _ledger(tmp_path, monkeypatch)
    led = Ledger.load("x")
    assert led is not None and led.ranks["p-n0-0"].pid == 4242 and led.proxy_pid == 4243


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def node():
    n = Node()
    yield n
    n.down()


def _up(node: Node) -> tuple[Path, dict]:
    inv = node.inventory(node.base)
    code, doc, err = node.run("up", str(inv), "--skip-checks")
    assert code == 0 and doc["ok"], err[-3000:]
    code, st, _ = node.run("status", str(inv))
    assert code == 0, st
    return inv, st


def _decoy(node: Node) -> int:
    """A process of the nodes' user outside the deployment, in its own process group: nothing
    deploy does may signal it (`kill -TERM -1` from the container would)."""
    p = deploy("exec", str(node.dir / "sim" / "inventory.yaml"), "--json", "--",
               "sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!", env=node.env)
    pid = int(json.loads(p.stdout)["nodes"]["n0"]["stdout"].strip())
    assert Path(f"/proc/{pid}").exists()
    return pid


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _kill(pid: int) -> None:
    import signal

    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_tampered_ledgers_and_pid_files_never_run_or_signal_anything(node):
    """One deployment, really running; then, in turn:
    1. a ledger copied from it to pass for another deployment's (of another name inside):
       that one's teardown acts on its own inventory file, ours keeps serving;
    2. our ledger tampered (pids `"1; touch CANARY"` and `1`, an entry for a node `n0; touch …`,
       a container id with metacharacters, a foreign inventory_file): status warns and acts on
       the inventory file, up refuses to continue from it (exit 1, naming it);
    3. every rank's and the proxy's pid file on the node overwritten with garbage (a hostile
       string, `²`, two PIDs, a FIFO, a link to /dev/zero, 160 digits): status says not alive
       (exit 1, no traceback, no hang); then, with `1`, `0` and `-1` in them (`kill -TERM -1` is
       every process the node's user may signal), teardown signals none of them and still leaves
       nothing running (the container goes, and with it its processes).
    Throughout: no canary, and a decoy process of the nodes' user outside the deployment lives."""
    from orchestrator import nodepaths
    from orchestrator.inventory import load_inventory
    from orchestrator.launch.deployment import rank_refs
    from orchestrator.plan import make_plan

    inv, st = _up(node)
    decoy = _decoy(node)
    state = Path(node.env["DEPLOY_STATE_DIR"])
    try:
        # 1. another deployment's ledger: its own devices and ports, never brought up
        other = json.loads(json.dumps(node.base))
        other["groups"][0].update(devices=[2], port=7300, dp_rpc_port=12500, kv_port=40200)
        other["groups"][1].update(devices=[3], port=7400, dp_rpc_port=12600, kv_port=40300)
        other["proxy"]["port"] = 2999
        other_inv = node.inventory(other)
        (state / other_inv.stem).mkdir(parents=True, exist_ok=True)
        copy = json.loads((state / inv.stem / "ledger.json").read_text())
        copy["name"] = other_inv.stem  # made to pass for its own; the inventory inside is ours
        (state / other_inv.stem / "ledger.json").write_text(json.dumps(copy))
        code, td, err = node.run("teardown", str(other_inv))
        assert code == 0 and td["acted_on"].startswith("inventory file"), (td, err)
        code, doc, err = node.run("status", str(inv))
        assert code == 0 and doc["ok"], "the teardown of one deployment stopped another"

        # 2. our ledger tampered
        path = state / inv.stem / "ledger.json"
        data = json.loads(path.read_text())
        for entry in data["ranks"].values():
            entry["pid"] = f"1; touch {CANARY}"
        data["ranks"]["evil"] = {"key": "evil", "node": f"n0; touch {CANARY}", "group": "$(touch x)", "pid": 1}
        data["proxy_pid"] = 1
        data["containers"] = {"n0": f"x; touch {CANARY}"}
        data["inventory_file"] = "/etc/passwd"
        path.write_text(json.dumps(data))
        code, doc, err = node.run("status", str(inv))
        assert code == 0 and doc["ok"] and doc["acted_on"] == "inventory file", (doc, err)
        assert "not one deploy wrote" in err
        code, doc, err = node.run("up", str(inv), "--skip-checks")
        assert code == 1 and "ledger" in doc["error"] and "move it away" in doc["error"], doc
        assert not canaries(node)

        # 3. hostile pid files on the node
        plan = make_plan(load_inventory(inv))
        files = [r.pidfile for r in rank_refs(plan)] + [nodepaths.proxy_pid(plan.inventory)]
        assert len(files) == 3
        for texts in ([f"$(touch {CANARY})", "\u00b2", "4242\n4243"], ["FIFO", "/dev/zero", "4242" * 40],
                      ["1", "0", "-1"]):
            for f, text in zip(files, texts):
                target = node.root / f.lstrip("/")
                target.unlink()
                if text == "FIFO":  # a read would block
                    os.mkfifo(target)
                elif text == "/dev/zero":  # a read would never end
                    target.symlink_to(text)
                else:
                    target.write_text(text)
            code, doc, err = node.run("status", str(inv))
            assert code == 1 and not doc["ok"], (doc, err)
            assert all(not r["alive"] and r["pid"] is None for r in doc["ranks"]) and doc["proxy"]["pid"] is None
        code, td, err = node.run("teardown", str(inv))
        assert code == 0 and td["ok"], err[-2000:]
        assert _alive(decoy), "teardown signalled a process that is not the deployment's"
        assert not canaries(node)
        nothing_left(node, st)
    finally:
        _kill(decoy)
