"""A small real-SSH fixture: asyncssh servers on 127.x loopback addresses, one per fake node.

Each server has its own host key, accepts the farm's client key, and runs every command as a
real `/bin/sh -c` process (a fake `sudo` first on PATH, FAKE_NODE=<name> set). It counts
connections and records users and command lines, so tests can assert what the client really did.
The servers run on their own event loop in a thread, so both `asyncio.run` tests and click's
CliRunner can use them.

The `farm` fixture reaches every test module through tests/conftest.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
import yaml

from orchestrator.inventory import Inventory, parse_inventory

_addresses = itertools.count(2)

FAKE_SUDO = '#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n'


@dataclass
class FakeNode:
    name: str
    addr: str
    port: int
    host_key: asyncssh.SSHKey | None = None
    authorized: bool = True
    forwarding: bool = False
    connections: int = 0
    users: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    listener: object = None
    conns: list = field(default_factory=list)

    def public_line(self) -> str:
        entry = self.addr if self.port == 22 else f"[{self.addr}]:{self.port}"
        return f"{entry} {self.host_key.export_public_key().decode().strip()}\n"


class _Server(asyncssh.SSHServer):
    def __init__(self, node: FakeNode):
        self.node = node

    def connection_made(self, conn) -> None:
        self.node.connections += 1
        self.node.conns.append(conn)

    def begin_auth(self, username: str) -> bool:
        self.node.users.append(username)
        return True

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        return self.node.forwarding  # True: plain direct-tcpip, for a jump host


class SSHFarm:
    def __init__(self, root: Path):
        self.root = root
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.identity = root / "id_ed25519"
        self.client_key.write_private_key(str(self.identity))
        self.identity.chmod(0o600)
        self.known_hosts = root / "known_hosts"
        self.bin = root / "bin"
        self.bin.mkdir()
        (self.bin / "sudo").write_text(FAKE_SUDO)
        (self.bin / "sudo").chmod(0o755)
        self.nodes: dict[str, FakeNode] = {}
        self._procs: list = []

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def add(self, name: str, *, authorized: bool = True, forwarding: bool = False,
            listen: bool = True) -> FakeNode:
        """A node; `listen=False` gives an address and port where nothing listens."""
        addr = f"127.0.0.{next(_addresses) % 250 + 2}"
        node = FakeNode(name, addr, 0, authorized=authorized, forwarding=forwarding)
        if listen:
            node.host_key = asyncssh.generate_private_key("ssh-ed25519")
            self._call(self._listen(node))
        else:
            with socket.socket() as s:
                s.bind((addr, 0))
                node.port = s.getsockname()[1]
        self.nodes[name] = node
        return node

    async def _listen(self, node: FakeNode) -> None:
        allowed = (self.client_key if node.authorized
                   else asyncssh.generate_private_key("ssh-ed25519"))
        authorized = asyncssh.import_authorized_keys(allowed.export_public_key().decode())
        node.listener = await asyncssh.create_server(
            lambda: _Server(node), node.addr, 0, server_host_keys=[node.host_key],
            authorized_client_keys=authorized, encoding=None,
            process_factory=lambda p: self._handle(node, p))
        node.port = node.listener.sockets[0].getsockname()[1]

    async def _handle(self, node: FakeNode, process: asyncssh.SSHServerProcess) -> None:
        node.commands.append(process.command or "")
        env = {**os.environ, "FAKE_NODE": node.name,
               "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", process.command or "", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            start_new_session=True)
        self._procs.append(proc)

        async def feed() -> None:
            with contextlib.suppress(Exception):
                while data := await process.stdin.read(65536):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            with contextlib.suppress(Exception):
                proc.stdin.close()

        async def pump(src, dst) -> None:
            while chunk := await src.read(65536):
                with contextlib.suppress(Exception):
                    dst.write(chunk)

        # Like OpenSSH without a pty, a closed channel does not end the process.
        feeder = asyncio.ensure_future(feed())
        await asyncio.gather(pump(proc.stdout, process.stdout), pump(proc.stderr, process.stderr))
        rc = await proc.wait()
        feeder.cancel()
        with contextlib.suppress(Exception):
            process.exit(rc if rc >= 0 else 128 - rc)

    def stop(self, name: str) -> None:
        node = self.nodes[name]
        if node.listener:
            node.listener.close()
            node.listener = None

    def drop(self, name: str) -> None:
        """The node dies: stop listening and cut its open connections."""
        self.stop(name)

        async def cut() -> None:
            for conn in self.nodes[name].conns:
                conn.abort()

        self._call(cut())

    def trust(self, name: str, key: asyncssh.SSHKey | None = None) -> None:
        """Record the node's host key (or another one) in known_hosts."""
        node = self.nodes[name]
        line = node.public_line()
        if key is not None:
            line = line.split()[0] + " " + key.export_public_key().decode().strip() + "\n"
        with open(self.known_hosts, "a") as f:
            f.write(line)

    def inventory_data(self, names: list[str] | None = None, **ssh) -> dict:
        names = names or list(self.nodes)
        return {
            "name": "farm",
            "soc": "a2",
            "ssh": {"identity_file": str(self.identity), "known_hosts": str(self.known_hosts),
                    "connect_timeout": 5, **ssh},
            "nodes": {n: {"host": self.nodes[n].addr, "port": self.nodes[n].port, "nic": "eth0"}
                      for n in names},
            "container": {"image": "example/vllm-ascend:test"},
            "model": {"path": "/models/m"},
            "groups": [{"name": f"g-{n}", "role": "serve", "nodes": [n]} for n in names],
        }

    def inventory(self, names: list[str] | None = None, **ssh) -> Inventory:
        return parse_inventory(yaml.safe_dump(self.inventory_data(names, **ssh), sort_keys=False))

    def write_inventory(self, path: Path, names: list[str] | None = None, **ssh) -> Path:
        path.write_text(yaml.safe_dump(self.inventory_data(names, **ssh), sort_keys=False))
        return path

    def close(self) -> None:
        async def shutdown() -> None:
            for node in self.nodes.values():
                for conn in node.conns:
                    conn.abort()
                if node.listener:
                    node.listener.close()
                    await node.listener.wait_closed()
            for proc in self._procs:  # leftovers of commands a test abandoned
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
            await asyncio.sleep(0)  # let transports finish closing

        with contextlib.suppress(Exception):
            self._call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def farm(tmp_path, monkeypatch):
    """An SSH farm with a HOME of its own (plain known_hosts, no agent) and a state dir."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("HashKnownHosts no\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    f = SSHFarm(tmp_path)
    yield f
    f.close()
