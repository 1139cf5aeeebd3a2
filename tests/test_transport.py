"""Cluster against real SSH servers (tests/conftest_ssh.py): what the servers saw is the truth."""
import asyncio
import os
import re
import shutil
import socket
import subprocess
import time

import asyncssh
import yaml

from orchestrator.inventory import parse_inventory
from orchestrator.transport import Cause, Cluster

TOKEN = re.compile(r"env DEPLOY_RUN=[0-9a-f]{16} ")


def plain(commands: list[str]) -> list[str]:
    """What the node ran, without the run token every command carries (tested apart)."""
    return [TOKEN.sub("", c, count=1) for c in commands]


def go(inv, body, **kw):
    async def main():
        async with Cluster(inv, **kw) as c:
            return await body(c)
    return asyncio.run(main())


def test_ok_and_failed_outcomes(farm):
    farm.add("d0")
    inv = farm.inventory()

    async def body(c):
        return (await c.run("d0", ["echo", "link status: UP"]),
                await c.run("d0", ["sh", "-c", "echo partial; echo one >&2; echo two >&2; exit 3"]),
                await c.run("d0", ["cat"], input="fed on stdin\n"))

    ok, bad, fed = go(inv, body)
    assert (ok.status, ok.rc, ok.stdout, ok.ok) == ("ok", 0, "link status: UP\n", True)
    assert (bad.status, bad.rc, bad.stdout, bad.ok) == ("failed", 3, "partial\n", False)
    assert bad.reason == "one\ntwo"
    assert fed.stdout == "fed on stdin\n"


def test_one_unreachable_node_does_not_stop_the_others(farm):
    farm.add("d0"), farm.add("d1", listen=False), farm.add("d2")
    inv = farm.inventory()

    async def body(c):
        return await c.connect(), await c.run_all(["hostname"]), c.unreachable

    connected, ran, unreachable = go(inv, body)
    assert [n for n, o in connected.items() if o.ok] == ["d0", "d2"]
    assert set(unreachable) == {"d1"}
    assert ran["d1"].status == "unreachable" and ran["d1"].reason.startswith("refused")
    assert "3 attempts" in ran["d1"].reason
    assert ran["d0"].ok and ran["d2"].ok


def test_node_dying_mid_command_becomes_unreachable(farm):
    farm.add("d0"), farm.add("d1")

    async def body(c):
        await c.connect()
        slow = asyncio.ensure_future(c.run("d0", ["sleep", "20"]))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(farm.drop, "d0")
        return await slow, await c.run("d0", ["true"]), await c.run("d1", ["true"]), c.unreachable

    died, later, other, unreachable = go(farm.inventory(), body)
    assert died.status == "unreachable" and "connection lost" in died.reason
    assert later.status == "unreachable"
    assert other.ok and set(unreachable) == {"d0"}


def test_auth_failure_is_reported_and_not_retried(farm):
    node = farm.add("d0", authorized=False)
    o = go(farm.inventory(), lambda c: c.run("d0", ["true"]))
    assert o.status == "unreachable" and o.reason.startswith("auth:")
    assert node.connections == 1


def test_dns_failure(farm):
    farm.add("d0")
    inv = farm.inventory()
    inv.nodes["d0"].host = "no-such-node.invalid"
    o = go(inv, lambda c: c.run("d0", ["true"]))
    assert o.status == "unreachable" and o.reason.startswith("dns:")


def test_connect_timeout_bounds_a_silent_server(farm):
    node = farm.add("d0", listen=False)
    with socket.socket() as s:  # accepts TCP (backlog) but never says a word of SSH
        s.bind((node.addr, node.port))
        s.listen(8)
        inv = farm.inventory(connect_timeout=0.3)
        t0 = time.monotonic()
        o = go(inv, lambda c: c.run("d0", ["true"]))
    assert o.status == "unreachable" and o.reason.startswith("timeout")
    assert time.monotonic() - t0 < 5


def test_changed_host_key_is_refused_with_the_fix(farm):
    node = farm.add("d0")
    farm.trust("d0", key=asyncssh.generate_private_key("ssh-ed25519"))
    before = farm.known_hosts.read_text()
    for mode in ("accept-new", "strict"):
        o = go(farm.inventory(host_keys=mode), lambda c: c.run("d0", ["true"]))
        assert o.status == "unreachable" and o.reason.startswith("host key changed")
        assert f"ssh-keygen -R '[{node.addr}]:{node.port}' -f {farm.known_hosts}" in o.reason
    assert farm.known_hosts.read_text() == before
    assert node.connections == 2 and node.commands == []  # once per run, never retried


def test_accept_new_records_the_key_and_strict_then_accepts(farm):
    node = farm.add("d0")
    o = go(farm.inventory(host_keys="strict"), lambda c: c.run("d0", ["true"]))
    assert o.status == "unreachable" and o.reason.startswith("host key unknown")
    assert not farm.known_hosts.exists()

    assert go(farm.inventory(host_keys="accept-new"), lambda c: c.run("d0", ["true"])).ok
    line = farm.known_hosts.read_text()
    assert line.split() == node.public_line().split()[:3]  # [addr]:port ssh-ed25519 AAAA…

    assert go(farm.inventory(host_keys="strict"), lambda c: c.run("d0", ["true"])).ok
    assert farm.known_hosts.read_text() == line  # nothing appended twice


def test_accept_new_hashes_like_openssh_when_configured(farm):
    node = farm.add("d0")
    (farm.root / "home" / ".ssh" / "config").write_text("HashKnownHosts yes\n")
    assert go(farm.inventory(), lambda c: c.run("d0", ["true"])).ok
    text = farm.known_hosts.read_text()
    assert text.startswith("|1|") and node.addr not in text
    if shutil.which("ssh-keygen"):
        found = subprocess.run(["ssh-keygen", "-F", f"[{node.addr}]:{node.port}",
                                "-f", str(farm.known_hosts)], capture_output=True, text=True)
        assert found.returncode == 0 and "ssh-ed25519" in found.stdout


def _running(*argv: str) -> bool:
    want = "\0".join(argv).encode() + b"\0"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read() == want:
                return True
        except OSError:
            pass
    return False


def test_timeout_kills_the_command_and_keeps_the_connection(farm):
    node = farm.add("d0")

    async def body(c):
        t0 = time.monotonic()
        slow = await c.run("d0", ["sleep", "30.25"], timeout=0.5)
        took = time.monotonic() - t0
        return slow, took, await c.run("d0", ["echo", "still here"])

    slow, took, after = go(farm.inventory(), body)
    assert (slow.status, slow.rc, slow.reason) == ("failed", None, "timed out after 0.5s")
    assert took < 3
    assert after.ok and after.stdout == "still here\n"
    assert slow.cause is Cause.TIMED_OUT
    assert plain(node.commands)[0] == "timeout -k 5 0.5 sleep 30.25"  # the node enforces it too
    deadline = time.monotonic() + 5
    while _running("sleep", "30.25") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running("sleep", "30.25")
    assert node.connections == 1


def test_put_replaces_atomically(farm, tmp_path):
    farm.add("d0")
    target = tmp_path / "remote" / "etc" / "hccn.conf"

    async def body(c):
        first = await c.put("d0", "old\n", str(target))
        held = open(target)  # noqa: ASYNC230  a reader that opened the old file keeps the old content
        second = await c.put("d0", b"new\x00bytes\n", str(target), mode=0o600)
        return first, second, held

    first, second, held = go(farm.inventory(), body)
    assert first.ok and second.ok
    assert held.read() == "old\n"
    held.close()
    assert target.read_bytes() == b"new\x00bytes\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert os.listdir(target.parent) == ["hccn.conf"]  # no temp file left behind


def test_one_connection_per_node_for_many_commands(farm, tmp_path):
    nodes = [farm.add(f"d{i}") for i in range(3)]

    async def body(c):
        await c.connect()
        await c.run_all(["true"])
        await c.run_all(lambda n: ["echo", n])
        await c.run_script("d0", "echo a\necho b\n")
        await c.put("d1", "x", str(tmp_path / "f"))
        many = await asyncio.gather(*(c.run("d2", ["echo", str(i)]) for i in range(20)))
        return many

    many = go(farm.inventory(), body)
    assert [o.stdout for o in many] == [f"{i}\n" for i in range(20)]
    assert [n.connections for n in nodes] == [1, 1, 1]
    assert len(nodes[2].commands) == 22


def test_parallel_1_still_reaches_every_node(farm):
    nodes = [farm.add(f"d{i}") for i in range(4)]
    res = go(farm.inventory(parallel=1), lambda c: c.connect())
    assert all(o.ok for o in res.values()) and [n.connections for n in nodes] == [1] * 4


def test_sudo_prefix_is_what_the_node_runs(farm):
    node = farm.add("d0")

    async def body(c):
        return await c.run("d0", ["echo", "a b"]), await c.run_script("d0", "echo s\n")

    echo, script = go(farm.inventory(sudo=True), body)
    assert plain(node.commands) == ["sudo -n echo 'a b'", "sudo -n sh -s"]
    assert echo.stdout == "a b\n" and script.stdout == "s\n"


def test_logs_stream_each_node_to_its_file(farm, tmp_path):
    farm.add("d0")
    logs = tmp_path / "logs"
    go(farm.inventory(), lambda c: c.run("d0", ["sh", "-c", "echo out-line; echo err-line >&2"]),
       log_dir=logs)
    text = TOKEN.sub("", (logs / "d0.log").read_text())
    assert "$ sh -c 'echo out-line; echo err-line >&2'" in text
    assert "out| 9 bytes\nout-line\n2" in text and "err| 9 bytes\nerr-line\n2" in text
    assert "ok rc=0" in text


def test_ssh_config_alias_user_port_identity(farm):
    node = farm.add("d0")
    (farm.root / "home" / ".ssh" / "config").write_text(
        f"HashKnownHosts no\nHost npu-a\n  HostName {node.addr}\n  Port {node.port}\n"
        f"  User deployer\n  IdentityFile {farm.identity}\n")
    data = farm.inventory_data()
    data["nodes"]["d0"] = {"host": "npu-a", "nic": "eth0"}
    del data["ssh"]["identity_file"]
    inv = parse_inventory(yaml.safe_dump(data))
    assert go(inv, lambda c: c.run("d0", ["true"])).ok
    assert node.users == ["deployer"]
    assert farm.known_hosts.read_text().startswith(f"[{node.addr}]:{node.port} ")

    inv.ssh.user = "ops"  # the inventory wins over ssh config
    assert go(inv, lambda c: c.run("d0", ["true"])).ok
    assert node.users[-1] == "ops"


def test_user_defaults_to_root(farm):
    node = farm.add("d0")
    assert go(farm.inventory(), lambda c: c.run("d0", ["true"])).ok
    assert node.users == ["root"]


def test_jump_host_one_connection_for_every_node(farm):
    jump = farm.add("bastion", forwarding=True)
    nodes = [farm.add(f"d{i}") for i in range(3)]
    inv = farm.inventory(["d0", "d1", "d2"], jump=f"jumper@{jump.addr}:{jump.port}")
    res = go(inv, lambda c: c.run_all(["echo", "via jump"]))
    assert all(o.ok and o.stdout == "via jump\n" for o in res.values())
    assert jump.connections == 1 and jump.users == ["jumper"]
    assert [n.connections for n in nodes] == [1, 1, 1]


def test_unreachable_jump_host_marks_every_node(farm):
    jump = farm.add("bastion", listen=False)
    farm.add("d0")
    inv = farm.inventory(["d0"], jump=f"{jump.addr}:{jump.port}")
    o = go(inv, lambda c: c.run("d0", ["true"]))
    assert o.status == "unreachable" and o.reason.startswith(f"jump host {jump.addr}")
