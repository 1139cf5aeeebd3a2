"""Simulated nodes served by one asyncssh daemon: real key exchange, auth and channels, no root
and no system package needed, and one Python process for the whole sim (cheap to start).

`start(sim)` runs `python -m orchestrator.sim.embedded DIR`, which forks: the child detaches (own
session, stdio to DIR/embedded.log), binds one listener per node and only then tells the parent,
which exits 0 (or 1 with the error), so `sim up` returns once every node listens. On SIGHUP the
daemon re-reads DIR/sim.json and reconciles: a node's listener is closed for `unreachable` (its
connections dropped) and re-opened when its host key file changed; then it writes the manifest's
generation to DIR/embedded.ack. authorized_keys is read at every login, as sshd does.

Commands run as real processes: `/bin/sh -c CMD`, or `/bin/sh` reading stdin when the client
sends no command; in their own session, with the node environment and HOME=DIR/home (empty); as
the sim user when the daemon runs as root. Each node's sshd.log gets sshd-like "Connection from"
and "Accepted publickey" lines.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import asyncssh

from .errors import SimError
from .layout import authorized_keys_path, host_key_path, node_env, sshd_dir
from .manifest import Sim
from .processes import tail as _tail

_PKG_PARENT = str(Path(__file__).resolve().parents[2])
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_SIGNAL_NAMES = {s.value: s.name[3:] for s in signal.Signals if not s.name.startswith("SIG_")}


# ---------------------------------------------------------------------------- control (CLI side)


def start(sim: Sim) -> None:
    """Start the daemon for every node of `sim`; record its PID on every node (not saved)."""
    env = {**os.environ, "DEPLOY_SIM_ROOT": str(sim.dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [_PKG_PARENT, os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-m", "orchestrator.sim.embedded", str(sim.dir)], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    if p.returncode != 0:
        raise SimError("the embedded SSH daemon did not start: "
                       + (p.stderr.decode(errors="replace").strip() or _tail(sim.dir / "embedded.log")))
    pid = int((sim.dir / "embedded.pid").read_text())
    for n in sim.nodes.values():
        n.pid = pid


def reload(sim: Sim, timeout: float = 10.0) -> None:
    """SIGHUP the daemon and wait until it has applied sim.json's current generation."""
    pid = int((sim.dir / "embedded.pid").read_text())
    os.kill(pid, signal.SIGHUP)
    ack = sim.dir / "embedded.ack"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if int(ack.read_text()) >= sim.generation:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise SimError(f"the embedded SSH daemon (pid {pid}) did not reload: {_tail(sim.dir / 'embedded.log')}")


# ---------------------------------------------------------------------------- the daemon


class _Node:
    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.log = open(log_path, "a", buffering=1)
        self.acceptor: asyncssh.SSHAcceptor | None = None
        self.key: bytes | None = None
        self.where: tuple[str, int] | None = None
        self.conns: set = set()

    def say(self, msg: str) -> None:
        self.log.write(msg + "\n")


class _Server(asyncssh.SSHServer):
    """Per connection: public-key auth against the node's authorized_keys, read at each try."""

    def __init__(self, daemon: Daemon, node: _Node):
        self.daemon, self.node, self.conn, self.peer = daemon, node, None, ("?", 0)

    def connection_made(self, conn) -> None:
        self.conn = conn
        self.node.conns.add(conn)
        self.peer = conn.get_extra_info("peername")[:2]
        local = conn.get_extra_info("sockname")[:2]
        self.node.say(f"Connection from {self.peer[0]} port {self.peer[1]} on {local[0]} port {local[1]}")

    def connection_lost(self, exc) -> None:
        self.node.conns.discard(self.conn)
        self.node.say(f"Disconnected from {self.peer[0]} port {self.peer[1]}")

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key) -> bool:
        ok = False
        if username == self.daemon.user:
            try:
                lines = authorized_keys_path(self.daemon.root, self.node.name).read_text().splitlines()
            except OSError:
                lines = []
            for line in lines:
                if line.strip() and not line.startswith("#"):
                    try:
                        ok = ok or asyncssh.import_public_key(line).public_data == key.public_data
                    except (asyncssh.KeyImportError, ValueError):
                        pass
        if not ok:
            self.node.say(f"Failed publickey for {username} from {self.peer[0]} port {self.peer[1]}")
        return ok

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        """direct-tcpip (local port forwarding, `conn.open_connection`): loopback only, as the
        sim's nodes and everything they run live on 127.0.0.0/8."""
        try:
            ok = ipaddress.ip_address(dest_host) in _LOOPBACK
        except ValueError:
            ok = False
        if not ok:
            self.node.say(f"refused direct-tcpip to {dest_host} port {dest_port}: not on 127.0.0.0/8")
        return ok

    def auth_completed(self) -> None:
        user, (addr, port) = self.daemon.user, self.peer
        self.node.say(f"Accepted publickey for {user} from {addr} port {port}")


class Daemon:
    def __init__(self, root: Path):
        self.root = root
        self.nodes: dict[str, _Node] = {}
        self.sim: Sim | None = None
        self.creds: dict = {}

    @property
    def user(self) -> str:
        """The account the simulated nodes accept (known once reconcile() has loaded sim.json)."""
        if self.sim is None:
            raise RuntimeError("the embedded daemon has not loaded its simulator yet")
        return self.sim.user

    async def reconcile(self) -> None:
        self.sim = sim = Sim.load(self.root)
        if os.geteuid() == 0 and sim.user != "root":
            pw = pwd.getpwnam(sim.user)
            self.creds = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        for name, n in sim.nodes.items():
            if name not in self.nodes:
                self.nodes[name] = _Node(name, sshd_dir(self.root, name) / "sshd.log")
            node = self.nodes[name]
            want = "unreachable" not in n.ssh_faults
            key = host_key_path(self.root, name).read_bytes() if want else None
            if node.acceptor and (not want or key != node.key or node.where != (n.addr, n.port)):
                node.acceptor.close()
                node.acceptor = None
                if node.where is not None:
                    node.say(f"Stopped listening on {node.where[0]} port {node.where[1]}.")
                if not want:
                    for conn in list(node.conns):
                        conn.abort()
            if key is not None and node.acceptor is None:  # key is read when wanted
                node.acceptor = await asyncssh.listen(
                    n.addr, n.port, server_factory=partial(_Server, self, node),
                    server_host_keys=[asyncssh.import_private_key(key)],
                    process_factory=partial(self.session, name), encoding=None,
                    allow_pty=True, line_editor=False, x11_forwarding=False,
                    agent_forwarding=False, sftp_factory=None, allow_scp=False, backlog=1024,
                    reuse_address=True)
                node.key, node.where = key, (n.addr, n.port)
                node.say(f"Server listening on {n.addr} port {n.port}.")
        (self.root / "embedded.ack").write_text(f"{sim.generation}\n")

    async def session(self, node: str, process) -> None:
        """One channel: the command as a real process, stdin/stdout/stderr pumped, exit status."""
        peer = process.get_extra_info("peername")[:2]
        local = process.get_extra_info("sockname")[:2]
        home = str(self.root / "home")
        env = {**node_env(self.root, node), "HOME": home, "USER": self.user,
               "LOGNAME": self.user, "SHELL": "/bin/sh",
               "SSH_CLIENT": f"{peer[0]} {peer[1]} {local[1]}",
               "SSH_CONNECTION": f"{peer[0]} {peer[1]} {local[0]} {local[1]}"}
        argv = ["/bin/sh", "-c", process.command] if process.command is not None else ["/bin/sh"]
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE, stdout=out_w, stderr=err_w, env=env, cwd=home,
                start_new_session=True, **self.creds)
        except OSError as e:
            os.close(out_r)
            os.close(err_r)
            process.stderr.write(f"deploy sim: cannot run /bin/sh: {e}\n".encode())
            process.exit(127)
            return
        finally:
            os.close(out_w)
            os.close(err_w)
        feeder = asyncio.create_task(_feed(process.stdin, proc.stdin))
        await asyncio.gather(_pump(loop, out_r, process.stdout), _pump(loop, err_r, process.stderr))
        rc = await proc.wait()
        feeder.cancel()
        try:
            if rc < 0 and -rc in _SIGNAL_NAMES:
                process.exit_with_signal(_SIGNAL_NAMES[-rc])
            else:
                process.exit(rc if rc >= 0 else 128 - rc)
        except OSError:
            pass  # the client is gone

    async def run(self, ready_fd: int) -> int:
        loop = asyncio.get_running_loop()
        hup, stop = asyncio.Event(), asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        try:
            await self.reconcile()
        except Exception as e:
            os.write(ready_fd, f"{type(e).__name__}: {e}".encode())
            return 1
        (self.root / "embedded.pid").write_text(f"{os.getpid()}\n")
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
        while not stop.is_set():
            waiters = [asyncio.create_task(hup.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if hup.is_set() and not stop.is_set():
                hup.clear()
                try:
                    await self.reconcile()
                except Exception as e:
                    print(f"reload failed: {type(e).__name__}: {e}", flush=True)
        for node in self.nodes.values():
            if node.acceptor:
                node.acceptor.close()
            for conn in list(node.conns):
                conn.abort()
        await asyncio.sleep(0.1)  # let the aborted sessions finish
        return 0


async def _feed(src, dst) -> None:
    """Channel -> process stdin, then EOF."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        dst.close()


async def _pump(loop, fd: int, dst) -> None:
    """Process pipe -> channel until EOF. If the client went away, close the pipe so that the
    writer gets SIGPIPE, as under sshd."""
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(fd, "rb", 0))
    try:
        while data := await reader.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        transport.close()


def main(argv: list[str]) -> int:
    """`python -m orchestrator.sim.embedded DIR`: fork; the child is the daemon."""
    root = Path(argv[0])
    ready_r, ready_w = os.pipe()
    if os.fork():
        os.close(ready_w)
        msg = b""
        while chunk := os.read(ready_r, 4096):
            msg += chunk
        if msg == b"ok":
            return 0
        sys.stderr.write((msg.decode(errors="replace") or "it exited; see DIR/embedded.log") + "\n")
        return 1
    os.close(ready_r)
    os.setsid()
    log = os.open(root / "embedded.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    os.chdir("/")
    try:
        code = asyncio.run(Daemon(root).run(ready_w))
    except BaseException as e:
        print(f"daemon died: {type(e).__name__}: {e}", flush=True)
        code = 1
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
