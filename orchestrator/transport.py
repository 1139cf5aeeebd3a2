"""The only module that speaks SSH (asyncssh).

One connection per node per CLI run, opened at most `ssh.parallel` at a time and reused for every
command (channels multiplexed), because the handshake is the expensive part and sshd's
MaxStartups punishes bursts. Every per-node result is an `Outcome` value: one node's failure
never aborts the others and no exception escapes for a node-level problem.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import getpass
import hashlib
import hmac
import os
import posixpath
import re
import resource
import secrets
import shlex
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import asyncssh
from asyncssh.config import SSHClientConfig
from asyncssh.encryption import get_encryption_algs
from asyncssh.kex import get_kex_algs
from asyncssh.mac import get_mac_algs
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from .inventory import Inventory

Status = Literal["ok", "failed", "unreachable"]


@dataclass
class Outcome:
    node: str
    status: Status
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# Only algorithms from OpenSSH's default client lists, cheapest first. Measured client CPU
# (asyncssh 2.24 against OpenSSH 9.2): a curve25519 handshake ~4-5 ms (mlkem768x25519 +0.1 ms,
# dh-group16 ~9 ms, dh-gex ~500 ms); bulk data ~1.5 ms/MB AES-GCM (AES-NI), ~2.3 ms/MB chacha20.
# No compression: the links are fast and zlib costs client CPU per host.
KEX_ALGS = ("curve25519-sha256", "curve25519-sha256@libssh.org", "mlkem768x25519-sha256",
            "sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com", "ecdh-sha2-nistp256",
            "ecdh-sha2-nistp384", "ecdh-sha2-nistp521", "diffie-hellman-group-exchange-sha256",
            "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512",
            "diffie-hellman-group14-sha256")
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com",
        "umac-128-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512", "umac-128@openssh.com")

CONNECT_ATTEMPTS = 3                                   # refused/reset/timeout only
BACKOFF = wait_random_exponential(multiplier=0.25, max=2)  # full jitter: spreads MaxStartups bursts
CHANNELS_PER_NODE = 8                                  # under sshd's default MaxSessions 10
HANDSHAKES_PER_HOST = 8                                # under sshd's default MaxStartups 10
KEEPALIVE = 30                                         # s; notices a node dying mid-command
TAIL_LINES = 5


def _supported(wanted: Sequence[str], available: Iterable[bytes]) -> list[str]:
    have = set(available)
    return [a for a in wanted if a.encode() in have]


def _connect_algs() -> dict:
    return {"kex_algs": _supported(KEX_ALGS, get_kex_algs()),
            "encryption_algs": _supported(CIPHERS, get_encryption_algs()),
            "mac_algs": _supported(MACS, get_mac_algs()),
            "compression_algs": ["none"]}


# ---------------------------------------------------------------- host keys


class _Failed(Exception):
    """A classified connection failure: its reason is the user-facing text."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HostKeys:
    """known_hosts with OpenSSH's rules, parsed once per run.

    asyncssh never writes known_hosts and, for a non-22 port, falls back to port-less entries;
    OpenSSH does neither, so matching is exact on `[host]:port` and accept-new appends here.
    """

    def __init__(self, path: str, mode: str, ssh_configs: Sequence[Path]):
        self.path = Path(path).expanduser().absolute()
        self.mode = mode
        text = self.path.read_text() if self.path.is_file() else ""
        self.known = asyncssh.import_known_hosts(text)
        self.hashed = _hash_known_hosts(ssh_configs)

    def trusted(self, host: str, addr: str, port: int | None):
        """asyncssh's `known_hosts` callable: keys for exactly this host (and port)."""
        return self.known._match(host, "", port)[:3]  # noqa: SLF001 (match() adds the fallback)

    @staticmethod
    def entry(host: str, port: int) -> str:
        return host if port == 22 else f"[{host}]:{port}"

    def judge(self, host: str, port: int, key: asyncssh.SSHKey) -> None:
        """Called only when the key is not already trusted: accept a new host or refuse."""
        entry = self.entry(host, port)
        keys, cas, _ = self.trusted(host, "", port if port != 22 else None)
        if key in keys:  # recorded meanwhile by another connection to the same host:port
            return
        fp = key.get_fingerprint()
        if keys or cas:
            raise _Failed(
                f"host key changed: {entry} now offers {key.get_algorithm()} {fp}, which is not "
                f"the key recorded in {self.path}. If the node was reinstalled, remove the old "
                f"key:\n  ssh-keygen -R {shlex.quote(entry)} -f {shlex.quote(str(self.path))}")
        if self.mode == "strict":
            raise _Failed(
                f"host key unknown: {entry} ({key.get_algorithm()} {fp}) is not in {self.path} and "
                f"ssh.host_keys is strict. Verify the fingerprint, then add it:\n  ssh-keyscan "
                f"{'-p %d ' % port if port != 22 else ''}{shlex.quote(host)} >> "
                f"{shlex.quote(str(self.path))}")
        self.record(entry, key)

    def record(self, entry: str, key: asyncssh.SSHKey) -> None:
        algo, blob = key.export_public_key("openssh").decode().split()[:2]
        name = entry
        if self.hashed:
            salt = secrets.token_bytes(20)
            digest = hmac.new(salt, entry.encode(), hashlib.sha1).digest()
            name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
        line = f"{name} {algo} {blob}\n"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path, "a") as f:  # other deploy runs may be appending too
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(line)
        self.known.load(f"{entry} {algo} {blob}\n")


def _hash_known_hosts(configs: Sequence[Path]) -> bool:
    """OpenSSH's HashKnownHosts (asyncssh does not parse it): first value found wins."""
    for path in configs:
        with contextlib.suppress(OSError):
            m = re.search(r"(?im)^\s*HashKnownHosts\s+(\w+)", path.read_text())
            if m:
                return m.group(1).lower() == "yes"
    return False


class _Client(asyncssh.SSHClient):
    def __init__(self, keys: HostKeys):
        self.keys = keys
        self.refusal: _Failed | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key) -> bool:
        try:
            self.keys.judge(host, port, key)
            return True
        except _Failed as e:
            self.refusal = e
            return False


# ---------------------------------------------------------------- failure classification


def _transient(exc: BaseException) -> bool:
    """Connection-level failures worth another attempt; never auth, host keys or DNS."""
    if isinstance(exc, (socket.gaierror, _Failed)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, asyncssh.ConnectionLost)):
        return True
    if isinstance(exc, asyncssh.ChannelOpenError):  # via a jump host: target refused / no route
        return exc.code == asyncssh.OPEN_CONNECT_FAILED
    return isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)


def _reason(exc: BaseException, attempts: int = 1, timeout: float = 0) -> str:
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    if isinstance(exc, _Failed):
        return exc.reason
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"auth: {exc.reason or exc} (check the user, identity_file and ssh agent)"
    if isinstance(exc, socket.gaierror):
        return f"dns: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"refused: {exc.strerror or exc}{tries}"
    if isinstance(exc, TimeoutError):
        return f"timeout: no SSH session within {timeout:g}s{tries}"
    if isinstance(exc, (ConnectionError, asyncssh.ConnectionLost)):
        return f"reset: the connection was closed during the handshake{tries}"
    if isinstance(exc, asyncssh.ChannelOpenError):
        return f"refused via the jump host: {exc.reason}{tries}"
    if isinstance(exc, OSError):
        return f"network: {exc.strerror or exc}{tries}"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"ssh: {exc.reason or exc}"
    return f"error: {type(exc).__name__}: {exc}"


def _tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-n:])


def raise_nofile(needed: int) -> None:
    """About two descriptors per node (socket + log): lift the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---------------------------------------------------------------- per-node log


class _NodeLog:
    """`<log_dir>/<node>.log`: each command, its output lines as they arrive, its end."""

    def __init__(self, path: Path | None):
        self._f = open(path, "a", encoding="utf-8") if path else None
        self._n = 0
        self._partial: dict[tuple[int, str], str] = {}

    def _write(self, cid: int, tag: str, text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        prefix = f"{stamp} #{cid} {tag} "
        self._f.write("".join(f"{prefix}{line}\n" for line in text.split("\n")))
        self._f.flush()  # one write per chunk: the log is readable while the command runs

    def begin(self, command: str, stdin: str | None) -> int:
        self._n += 1
        if self._f:
            self._write(self._n, "$", command)
            if stdin:
                self._write(self._n, "in|", stdin.rstrip("\n"))
        return self._n

    def feed(self, cid: int, tag: str, chunk: bytes) -> None:
        if not self._f:
            return
        text = self._partial.pop((cid, tag), "") + chunk.decode("utf-8", "replace")
        head, sep, rest = text.rpartition("\n")
        if sep:
            self._write(cid, tag, head)
        if rest:
            self._partial[(cid, tag)] = rest

    def end(self, cid: int, o: Outcome, seconds: float) -> None:
        if not self._f:
            return
        for tag in ("out|", "err|"):
            if (cid, tag) in self._partial:
                self._write(cid, tag, self._partial.pop((cid, tag)))
        self._write(cid, o.status, f"rc={o.rc} {seconds:.2f}s {o.reason}".rstrip())

    def close(self) -> None:
        if self._f:
            self._f.close()


# ---------------------------------------------------------------- the cluster


def _split_hop(spec: str) -> tuple[str | None, str, int | None]:
    """'user@host:port' (host may be '[v6]') -> (user, host, port)."""
    user, _, hostport = spec.rpartition("@")
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", hostport)
    if not m:
        raise ValueError(f"cannot parse jump host {spec!r} (expected user@host:port)")
    host = m.group(1) or m.group(3)
    port = m.group(2) or m.group(4)
    return user or None, host, int(port) if port else None


class Cluster:
    """The SSH side of one CLI run over an inventory's nodes (async context manager).

    Connections open lazily on first use (or all at once with `connect()`), each once; every
    later command on that node is a new channel on the same connection.
    """

    def __init__(self, inv: Inventory, nodes: list[str] | None = None,
                 log_dir: Path | None = None):
        self.inv = inv
        self.nodes = list(nodes) if nodes is not None else list(inv.nodes)
        unknown = [n for n in self.nodes if n not in inv.nodes]
        if unknown:
            raise ValueError(f"not in the inventory: {', '.join(unknown)}")
        self.log_dir = Path(log_dir) if log_dir else None
        self.unreachable: dict[str, Outcome] = {}
        home_config = Path.home() / ".ssh" / "config"
        self._config_paths = [str(home_config)] if os.access(home_config, os.R_OK) else []
        self._keys = HostKeys(inv.ssh.known_hosts, inv.ssh.host_keys,
                              [home_config, Path("/etc/ssh/ssh_config")])
        self._algs = _connect_algs()
        self._handshakes = asyncio.Semaphore(inv.ssh.parallel)
        self._per_host: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(HANDSHAKES_PER_HOST))  # one sshd behind many ports
        self._channels = {n: asyncio.Semaphore(CHANNELS_PER_NODE) for n in self.nodes}
        self._conns: dict[str, asyncio.Task] = {}
        self._jumps: dict[str, asyncio.Task] = {}
        self._logs: dict[str, _NodeLog] = {}
        self._identities: dict[str, list] = {}
        self._configs: dict[str, SSHClientConfig] = {}
        self._local_user: str | None = None
        raise_nofile(2 * len(self.nodes) + 64)

    async def __aenter__(self) -> "Cluster":
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        opened = []
        for task in [*self._conns.values(), *self._jumps.values()]:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and isinstance(task.result(), asyncssh.SSHClientConnection):
                opened.append(task.result())
        for conn in opened:
            conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in opened),
                                                  return_exceptions=True), 5)
        for log in self._logs.values():
            log.close()
        self._conns.clear()
        self._jumps.clear()
        self._logs.clear()

    # ------------------------------------------------------------ connecting

    async def connect(self, on_node: Callable[[Outcome], None] | None = None
                      ) -> dict[str, Outcome]:
        """Open every node now (for a progress count and an early list of the unreachable)."""
        async def one(name: str) -> Outcome:
            conn = await self._connection(name)
            o = conn if isinstance(conn, Outcome) else Outcome(name, "ok", reason="connected")
            if on_node:
                on_node(o)
            return o

        return dict(zip(self.nodes, await asyncio.gather(*(one(n) for n in self.nodes))))

    async def _connection(self, name: str) -> asyncssh.SSHClientConnection | Outcome:
        if name not in self._conns:
            self._conns[name] = asyncio.ensure_future(self._open(name))
        return await asyncio.shield(self._conns[name])

    def _config(self, host: str) -> SSHClientConfig:
        """~/.ssh/config for `host`, parsed once per host per run (cheap with no config file)."""
        cfg = self._configs.get(host)
        if cfg is None:
            if self._local_user is None:
                self._local_user = getpass.getuser()
            cfg = SSHClientConfig.load(None, self._config_paths, False, False, False,
                                       self._local_user, (), host, ())
            self._configs[host] = cfg
        return cfg

    async def _open(self, name: str) -> asyncssh.SSHClientConnection | Outcome:
        node, ssh = self.inv.nodes[name], self.inv.ssh
        try:
            cfg = self._config(node.host)
            jump = ssh.jump or cfg.get("ProxyJump")
            tunnel = None
            if jump:
                tunnel = await self._jump(jump)
                if isinstance(tunnel, str):
                    return self._unreachable(name, f"jump host {jump}: {tunnel}")
            return await self._dial(
                node.host, node.port or ssh.port or cfg.get("Port") or 22,
                node.user or ssh.user or cfg.get("User") or "root",
                node.identity_file or ssh.identity_file, tunnel)
        except _Failed as f:
            return self._unreachable(name, f.reason)
        except Exception as e:  # a node-level problem of any kind stays a value
            return self._unreachable(name, _reason(e))

    def _unreachable(self, name: str, reason: str) -> Outcome:
        o = Outcome(name, "unreachable", reason=reason)
        self.unreachable[name] = o
        return o

    async def _jump(self, spec: str) -> asyncssh.SSHClientConnection | str:
        """One connection per jump spec for the whole run, shared by every node behind it.

        A hop's user and port come from the spec, else ssh config, else root and 22; its key is
        `ssh.identity_file` (else ssh config and the agent), as bastions usually take the same.
        """
        async def open_chain() -> asyncssh.SSHClientConnection | str:
            conn = None
            try:
                for hop in spec.split(","):
                    user, host, port = _split_hop(hop.strip())
                    cfg = self._config(host)
                    conn = await self._dial(host, port or cfg.get("Port") or 22,
                                            user or cfg.get("User") or "root",
                                            self.inv.ssh.identity_file, conn)
                return conn
            except _Failed as f:
                return f.reason
            except Exception as e:
                return _reason(e)

        if spec not in self._jumps:
            self._jumps[spec] = asyncio.ensure_future(open_chain())
        return await asyncio.shield(self._jumps[spec])

    def _identity(self, path: str | None) -> list | tuple:
        if not path:
            return ()  # ssh config IdentityFile, ~/.ssh defaults and the agent
        if path not in self._identities:  # parse once per run, not once per node
            self._identities[path] = asyncssh.load_keypairs(str(Path(path).expanduser()))
        return self._identities[path]

    async def _dial(self, host: str, port: int, user: str, identity: str | None,
                    tunnel) -> asyncssh.SSHClientConnection:
        try:
            keys = self._identity(identity)
        except (OSError, asyncssh.KeyImportError) as e:
            raise _Failed(f"auth: cannot load identity_file {identity}: {e}") from None
        attempts = 0
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(CONNECT_ATTEMPTS),
                                               wait=BACKOFF, retry=retry_if_exception(_transient),
                                               reraise=True):
                with attempt:
                    attempts += 1
                    client = _Client(self._keys)
                    # the handshake only, not the backoff; per host first, not to hog a slot
                    async with self._per_host[host], self._handshakes:
                        try:
                            return await asyncssh.connect(
                                host, port, tunnel=tunnel, username=user, client_keys=keys,
                                config=self._config_paths, known_hosts=self._keys.trusted,
                                client_factory=lambda: client,
                                connect_timeout=self.inv.ssh.connect_timeout,
                                keepalive_interval=KEEPALIVE, **self._algs)
                        except asyncssh.HostKeyNotVerifiable:
                            if client.refusal:
                                raise client.refusal from None
                            raise
        except Exception as e:
            raise _Failed(_reason(e, attempts, self.inv.ssh.connect_timeout)) from None
        raise AssertionError("tenacity returns or raises")

    # ------------------------------------------------------------ commands

    def _command(self, argv: Sequence[str], timeout: float | None) -> str:
        argv = [str(a) for a in argv]
        if timeout:  # closing the channel does not stop a remote process (no pty), and OpenSSH
            # refuses signal requests for root logins: the node enforces the limit itself
            argv = ["timeout", "-k", "5", f"{timeout:g}", *argv]
        return shlex.join(["sudo", "-n", *argv] if self.inv.ssh.sudo else argv)

    async def run(self, node: str, argv: list[str], *, timeout: float | None = None,
                  input: str | None = None) -> Outcome:
        stdin = None if input is None else f"({len(input)} bytes on stdin)"
        return await self._exec(node, self._command(argv, timeout), input, timeout, stdin)

    async def run_script(self, node: str, script: str, *, timeout: float | None = None
                         ) -> Outcome:
        """A POSIX sh script on stdin: many node-side steps for one channel and one round trip."""
        return await self._exec(node, self._command(["sh", "-s"], timeout), script, timeout,
                                script)

    async def run_all(self, argv_or_fn: list[str] | Callable[[str], list[str]],
                      nodes: list[str] | None = None, timeout: float | None = None, *,
                      on_done: Callable[[Outcome], None] | None = None) -> dict[str, Outcome]:
        names = list(nodes) if nodes is not None else self.nodes

        async def one(name: str) -> Outcome:
            argv = argv_or_fn(name) if callable(argv_or_fn) else argv_or_fn
            o = await self.run(name, argv, timeout=timeout)
            if on_done:
                on_done(o)
            return o

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names))))

    async def put(self, node: str, data: bytes | str, remote_path: str, mode: int = 0o644, *,
                  timeout: float | None = None) -> Outcome:
        """Atomic replace: readers see the old file or the new one, never a partial one.

        `cat` over a channel instead of SFTP: no subsystem start, one round trip, and sudo works.
        """
        data = data.encode() if isinstance(data, str) else data
        directory = posixpath.dirname(remote_path) or "."
        tmp = posixpath.join(directory,
                             f".{posixpath.basename(remote_path)}.deploy-{secrets.token_hex(4)}")
        script = ('set -e; mkdir -p -- "$1"; trap \'rm -f -- "$2"\' EXIT; cat > "$2"; '
                  'chmod "$4" "$2"; mv -f -- "$2" "$3"')
        argv = ["sh", "-c", script, "put", directory, tmp, remote_path, format(mode, "o")]
        return await self._exec(node, self._command(argv, timeout), data, timeout,
                                f"({len(data)} bytes to {remote_path})")

    def _log(self, node: str) -> _NodeLog:
        if node not in self._logs:
            self._logs[node] = _NodeLog(self.log_dir / f"{node}.log" if self.log_dir else None)
        return self._logs[node]

    async def _exec(self, node: str, command: str, data: bytes | str | None,
                    timeout: float | None, stdin_note: str | None) -> Outcome:
        conn = await self._connection(node)
        if isinstance(conn, Outcome):
            return conn
        log = self._log(node)
        async with self._channels[node]:
            started = time.monotonic()
            cid = log.begin(command, stdin_note)
            out, err = bytearray(), bytearray()
            proc = None
            try:
                proc = await conn.create_process(command, encoding=None, request_pty=False)
                await asyncio.wait_for(self._collect(proc, data, out, err, log, cid), timeout)
                o = self._finished(node, proc, out, err)
            except asyncio.TimeoutError:
                if proc is not None:
                    proc.close()
                o = Outcome(node, "failed", None, _text(out), _text(err),
                            f"timed out after {timeout:g}s")
            except asyncssh.ChannelOpenError as e:
                o = Outcome(node, "failed", None, reason=f"cannot open a session: {e.reason}")
                if conn.is_closed():
                    o = self._unreachable(node, "connection lost: the node closed the connection")
            except (OSError, asyncssh.Error) as e:
                o = Outcome(node, "unreachable", None, _text(out), _text(err),
                            f"connection lost: {getattr(e, 'reason', '') or e}")
            if o.status == "unreachable":
                self.unreachable[node] = o
            log.end(cid, o, time.monotonic() - started)
            return o

    @staticmethod
    async def _collect(proc, data, out: bytearray, err: bytearray, log: _NodeLog, cid: int):
        async def pump(reader, buf: bytearray, tag: str) -> None:
            while chunk := await reader.read(65536):
                buf += chunk
                log.feed(cid, tag, chunk)

        if data is not None:
            proc.stdin.write(data.encode() if isinstance(data, str) else data)
        proc.stdin.write_eof()
        await asyncio.gather(pump(proc.stdout, out, "out|"), pump(proc.stderr, err, "err|"))
        await proc.wait()

    async def open_tcp(self, node: str, host: str, port: int):
        """(reader, writer) of a TCP connection made BY the node (direct-tcpip on its open SSH
        connection): HTTP to a rank without another connection, through jump hosts too.
        Raises ConnectionRefusedError when the node cannot connect or is unreachable."""
        conn = await self._connection(node)
        if isinstance(conn, Outcome):
            raise ConnectionRefusedError(f"{node} is unreachable: {conn.reason}")
        try:
            return await conn.open_connection(host, port)
        except asyncssh.ChannelOpenError as e:
            raise ConnectionRefusedError(e.reason or str(e)) from None
        except (asyncssh.Error, OSError) as e:
            raise ConnectionRefusedError(f"connection lost: {getattr(e, 'reason', '') or e}") from None

    def _finished(self, node: str, proc, out: bytearray, err: bytearray) -> Outcome:
        stdout, stderr = _text(out), _text(err)
        if proc.exit_status is None and proc.exit_signal is None:
            return Outcome(node, "unreachable", None, stdout, stderr,
                           "connection lost before the command finished")
        if proc.exit_signal is not None:
            return Outcome(node, "failed", proc.returncode, stdout, stderr,
                           f"killed by signal {proc.exit_signal[0]}")
        rc = proc.exit_status
        if rc == 0:
            return Outcome(node, "ok", 0, stdout, stderr)
        return Outcome(node, "failed", rc, stdout, stderr, _tail(stderr) or f"exit code {rc}")


def _text(buf: bytes | bytearray) -> str:
    return bytes(buf).decode("utf-8", "replace")
