"""Units of `up`/`status`/`teardown` that need no node: HTTP parsing, drift, ledger, lock."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from orchestrator.launch import http, nodeside
from orchestrator.launch.ledger import Ledger, LockHeld, RankEntry, deployment_lock
from orchestrator.launch.status import parse_metrics
from orchestrator.launch.steps import Cause, NodeResult, exit_code
from orchestrator.launch.up import container_drift


def test_parse_response_plain_chunked_and_garbage():
    r = http.parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert (r.status, r.body) == (200, b"ok")
    r = http.parse_response(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"4\r\ndead\r\n0\r\n\r\n")
    assert (r.status, r.body) == (503, b"dead")
    assert http.parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").status == 0
    assert http.parse_response(b"HTTP/1.1 200 OK").status == 0


def test_request_refused_and_timeout_are_answers_not_exceptions():
    async def refused(host, port):
        raise ConnectionRefusedError("connect failed")

    async def silent(host, port):
        reader = asyncio.StreamReader()
        class W:
            def write(self, data): pass
            def close(self): pass
        return reader, W()

    r = asyncio.run(http.request(refused, "127.0.0.1", 1, "GET", "/health"))
    assert r.status == 0 and "refused" in r.error
    r = asyncio.run(http.request(silent, "127.0.0.1", 1, "GET", "/health", timeout=0.2))
    assert r.status == 0 and "no answer" in r.error


def test_header_injection_refused():
    async def never(host, port):
        raise AssertionError("must not connect")

    with pytest.raises(ValueError):
        asyncio.run(http.request(never, "h", 1, "GET", "/", headers={"X": "a\r\nEvil: 1"}))


def _spec():
    from orchestrator.plan import ContainerPlan

    return ContainerPlan(node="n", name="vllm-x", image="img:1",
                         devices=("/dev/davinci0", "/dev/davinci_manager"),
                         binds=("/etc/hccn.conf:/etc/hccn.conf",), env=(("A", "1"),), shm_size="1g",
                         privileged=False, setup=(), socket_env=None)


def test_container_drift_names_what_differs():
    same = {"Config": {"Image": "img:1", "Env": ["A=1", "PATH=/bin"]},
            "HostConfig": {"Devices": [{"PathOnHost": "/dev/davinci0"}, {"PathOnHost": "/dev/davinci_manager"}],
                           "Binds": ["/etc/hccn.conf:/etc/hccn.conf"], "NetworkMode": "host",
                           "ShmSize": 1024 ** 3}}
    assert container_drift(same, _spec()) == []
    other = {"Config": {"Image": "img:2", "Env": []},
             "HostConfig": {"Devices": [{"PathOnHost": "/dev/davinci_manager"}], "Binds": [],
                            "NetworkMode": "bridge", "ShmSize": 64 * 1024 ** 2, "Privileged": True}}
    diff = " ".join(container_drift(other, _spec()))
    for word in ("image img:2", "missing /dev/davinci0", "mounts missing /etc/hccn.conf", "env A",
                 "network bridge", "shm-size", "privileged True"):
        assert word in diff


def test_alive_and_listening_parsers():
    assert nodeside.parse_alive("12 S\n13 Z\n14 -\njunk\n") == {12: True, 13: False, 14: False}
    tcp = ("  sl  local_address rem_address   st\n"
           "   0: 0100007F:1F90 00000000:0000 0A 0\n"
           "   1: 0100007F:1F91 00000000:0000 01 0\n")
    assert nodeside.parse_listening(tcp) == {("127.0.0.1", 8080)}


def test_write_files_script_quotes_content_and_paths(tmp_path):
    evil = "$(touch {c}) `touch {c}` ; touch {c}\n'\"".format(c=tmp_path / "canary")
    script = nodeside.write_files_script({"/var/tmp/deploy/x/f.sh": (evil, 0o600)})
    env = {**os.environ, "DEPLOY_NODE_ROOT": str(tmp_path)}
    subprocess.run(["sh", "-c", script], env=env, check=True)
    assert (tmp_path / "var/tmp/deploy/x/f.sh").read_text() == evil
    assert not (tmp_path / "canary").exists()
    assert oct((tmp_path / "var/tmp/deploy/x/f.sh").stat().st_mode & 0o777) == "0o600"


def test_metrics_parse_sums_engines():
    text = ('# HELP x\nvllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n')
    assert parse_metrics(text) == {"vllm:num_requests_running": 3.0, "vllm:kv_cache_usage_perc": 0.25}


def test_exit_code():
    ok = NodeResult("a", Cause.OK)
    assert exit_code([ok]) == 0
    assert exit_code([ok, NodeResult("b", Cause.FAILED)]) == 1
    assert exit_code([NodeResult("b", Cause.FAILED), NodeResult("c", Cause.UNREACHABLE)]) == 4
    assert exit_code([ok], interrupted=130) == 130


def test_ledger_roundtrip_private_and_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path))
    led = Ledger("demo", inventory_text="name: demo\n", plan={"name": "demo"})
    led.ranks["g-n-0"] = RankEntry("g-n-0", "n", "g", 123, 1.0)
    led.save()
    back = Ledger.load("demo")
    assert back.ranks["g-n-0"].pid == 123 and back.inventory_text == "name: demo\n"
    assert oct(Ledger.path_for("demo").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "demo").stat().st_mode & 0o777) == "0o700"
    with deployment_lock("demo", "up"):
        code = ("from orchestrator.launch.ledger import deployment_lock\n"
                "with deployment_lock('demo', 'teardown'): pass\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "DEPLOY_STATE_DIR": str(tmp_path)})
        assert p.returncode != 0 and "deploy up pid" in p.stderr
    with deployment_lock("demo", "teardown"):
        pass
    with pytest.raises(LockHeld):
        with deployment_lock("demo", "up"):
            with deployment_lock("demo", "up"):
                pass


def test_signal_groups_kills_a_process_group_under_dash():
    """dash's kill takes no `--`: the group signal must work with the node's /bin/sh."""
    import time

    p = subprocess.Popen(["setsid", "sh", "-c", "sleep 100 & sleep 100; wait"])
    time.sleep(0.2)
    argv = nodeside.signal_groups("c", [p.pid], "TERM")
    assert argv[:3] == ["docker", "exec", "c"]
    subprocess.run(["/bin/sh", "-c", argv[5], *argv[6:]], check=True)
    assert p.wait(timeout=5) != 0


@pytest.mark.parametrize("command", ["up", "status", "teardown"])
def test_an_unwritable_state_folder_stops_before_any_node_is_touched(tmp_path, command):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the state folder would have to be made inside a file
    p = subprocess.run([sys.executable, "-m", "orchestrator", command, "inventories/dsv31-a3-2p1d.yaml", "--json"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "DEPLOY_STATE_DIR": str(blocker / "state")},
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["ok"] is False and str(blocker) in doc["error"]
    assert "Traceback" not in p.stderr


def test_pid_files_read_back_with_hostile_paths(tmp_path):
    """pids_script quotes the paths; parse_pids maps each pid file to its PID, absent ones left out."""
    d = tmp_path / "var/tmp/deploy/x"
    d.mkdir(parents=True)
    (d / "a b;$(touch canary).pid").write_text("123\n")
    script = nodeside.pids_script(["/var/tmp/deploy/x/a b;$(touch canary).pid", "/var/tmp/deploy/x/none.pid"])
    out = subprocess.run(["sh", "-c", script], env={**os.environ, "DEPLOY_NODE_ROOT": str(tmp_path)},
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert nodeside.parse_pids(out) == {"/var/tmp/deploy/x/a b;$(touch canary).pid": 123}
    assert not (tmp_path / "canary").exists()
