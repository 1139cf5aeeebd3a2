"""The only module that speaks SSH (asyncssh).

One connection per node per CLI run, opened at most `ssh.parallel` at a time and reused for every
command (channels multiplexed), because the handshake is the expensive part and sshd's
MaxStartups punishes bursts. Every per-node result is an `Outcome` value with a `Cause`: one
node's failure never aborts the others. Only network and SSH errors become values; anything else
is a bug and propagates as one.

Bounded: each command's output keeps a head and a tail in memory and streams whole to the node
log (chunks, not lines, so one long line is linear); a run's logs share one size cap. Every
command carries `DEPLOY_RUN=<token>` in its node-side environment, so an interrupted run can find
and kill exactly what it started, through a second channel (OpenSSH refuses signal requests for
root and closing a channel without a pty leaves the process running).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
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
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from .capture import CAPTURE_HEAD, CAPTURE_TAIL
from .redact import scrub_bytes
from .runlog import inside
from .sshimport import SSHClientConfig, asyncssh, get_encryption_algs, get_kex_algs, get_mac_algs

if TYPE_CHECKING:  # a type only: `deploy exec` on a cached inventory never imports pydantic
    from .inventory import Inventory

Status = Literal["ok", "failed", "unreachable"]
T = TypeVar("T")


class Cause(str, enum.Enum):
    """Why a command on a node ended as it did (what callers branch on, never the reason text)."""
    OK = "ok"                        # exit 0
    FAILED = "failed"                # ran and exited non-zero (or was killed by a signal)
    COULD_NOT_RUN = "could_not_run"  # no channel, sudo refused: the command never started
    TIMED_OUT = "timed_out"          # the --timeout / step limit ended it
    UNREACHABLE = "unreachable"      # no SSH connection, or it was lost
    INTERRUPTED = "interrupted"      # Ctrl-C / SIGTERM of this CLI run stopped it


_STATUS = {Cause.OK: "ok", Cause.UNREACHABLE: "unreachable"}


@dataclass
class Outcome:
    node: str
    cause: Cause
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    reason: str = ""
    omitted: int = 0  # output bytes kept only in the node log (between the head and the tail)

    def __post_init__(self) -> None:
        self.cause = Cause(self.cause)  # "ok" / "failed" / "unreachable" still construct

    @property
    def status(self) -> Status:
        """The three-way view older callers use: ok, unreachable, or failed (everything else)."""
        return _STATUS.get(self.cause, "failed")  # type: ignore[return-value]

    @property
    def ok(self) -> bool:
        return self.cause is Cause.OK


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
RUN_LOG_MAX = 256 * 1024 * 1024  # bytes of command output all node logs of one run may hold
KILL_TIMEOUT = 15.0         # s for the node-side kill of an interrupted run
RUN_VAR = "DEPLOY_RUN"      # node-side environment marker of every command this run started
# Only these become per-node values; anything else raised in the transport is a bug.
NETWORK_ERRORS = (OSError, asyncssh.Error, TimeoutError, asyncio.TimeoutError)


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


def _supported(wanted: Sequence[str], available: Iterable[bytes]) -> list[str]:
    have = set(available)
    return [a for a in wanted if a.encode() in have]


def _connect_algs() -> dict:
    return {"kex_algs": _supported(KEX_ALGS, get_kex_algs()),
            "encryption_algs": _supported(CIPHERS, get_encryption_algs()),
            "mac_algs": _supported(MACS, get_mac_algs()),
            "compression_algs": ["none"]}


class _Settings(Protocol):
    """What `_config` answers: an asyncssh SSHClientConfig, or _NO_CONFIG (both have get)."""

    def get(self, option: str, default: Any = None) -> Any: ...


_NO_CONFIG: dict = {}  # what `_config` answers without a ~/.ssh/config: every option unset
_CONFIG_WE_READ = {"port", "user", "proxyjump"}
_KEYWORD = re.compile(r"^[ \t]*([A-Za-z]+)", re.M)


def _config_keywords(paths: Sequence[str]) -> set[str]:
    """The keywords (lower case) that start a line of these ssh config files. An Include or
    an unreadable file could mean anything: then every keyword we read."""
    found: set[str] = set()
    for path in paths:
        try:
            found.update(k.lower() for k in _KEYWORD.findall(Path(path).read_text(errors="replace")))
        except OSError:
            return set(_CONFIG_WE_READ)
    return set(_CONFIG_WE_READ) if "include" in found else found


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
        text = (self.path.read_text(errors="replace") if self.path.is_file() else "")
        self.known = asyncssh.import_known_hosts(text)
        self.hashed = _hash_known_hosts(ssh_configs)

    def trusted(self, host: str, addr: str, port: int | None):
        """asyncssh's `known_hosts` callable: keys for exactly this host (and port)."""
        return self.known._match(host, "", port)[:3]

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
                f"{f'-p {port} ' if port != 22 else ''}{shlex.quote(host)} >> "
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
    if isinstance(exc, TimeoutError):  # a silent node stays silent: one connect_timeout, no more
        return False
    if isinstance(exc, (ConnectionError, asyncssh.ConnectionLost)):
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


class _Capture:
    """One stream of one command in memory: the first `head` and last `tail` bytes, a count."""

    def __init__(self, head: int, tail: int):
        self.head_max, self.tail_max = head, tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_max:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_max:  # trim in batches: amortised linear
                del self.tail[:len(self.tail) - self.tail_max]

    @property
    def omitted(self) -> int:
        return max(0, self.total - len(self.head) - min(len(self.tail), self.tail_max))

    def text(self, log: str = "the node log") -> str:
        tail = bytes(self.tail[-self.tail_max:]) if self.tail_max else b""
        if not self.omitted:
            return _text(self.head + tail)
        return (_text(self.head) + f"\n[... {self.omitted} bytes omitted; all of it is in {log} "
                f"...]\n" + _text(tail))


class _LogBudget:
    """The byte cap shared by every node log of one run."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True


class _NodeLog:
    """`<log_dir>/<node>.log`: each command, its output chunks as they arrive, its end.

    A record is one header line (`<UTC time> #<command> <tag> …`) and, for output, the chunk's
    bytes exactly (`out| N bytes`, then N bytes, then a newline if they did not end with one). A write error (disk full,
    read-only) stops this log and is kept in `error`; it never fails the command.
    """

    def __init__(self, path: Path | None, budget: _LogBudget):
        self.path = path
        self.budget = budget
        self.error: str | None = None
        self._n = 0
        self._capped = False
        self._f = None
        if path is not None:
            try:
                self._f = open(path, "ab")
            except OSError as e:
                self.error = f"{path}: {e.strerror or e}"

    def _put(self, data: bytes) -> None:
        if self._f is None:
            return
        try:
            self._f.write(scrub_bytes(data))  # no secret value in a run log (orchestrator/redact.py)
            self._f.flush()  # one write per chunk: the log is readable while the command runs
        except OSError as e:
            self.error = f"{self.path}: {e.strerror or e}"
            with contextlib.suppress(OSError):
                self._f.close()
            self._f = None

    @staticmethod
    def _head(cid: int, tag: str, text: str) -> bytes:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{stamp} #{cid} {tag} {text}\n".encode("utf-8", "replace")

    def begin(self, command: str, stdin: str | None) -> int:
        self._n += 1
        if self._f:
            self._put(self._head(self._n, "$", command))
            if stdin:
                data = stdin.encode("utf-8", "replace")
                self._put(self._head(self._n, "in|", f"{len(data)} bytes") + data + b"\n")
        return self._n

    def feed(self, cid: int, tag: str, chunk: bytes) -> None:
        if not self._f or self._capped:
            return
        if not self.budget.take(len(chunk)):
            self._capped = True
            self._put(self._head(cid, "!!", f"the run's log cap of {self.budget.limit} bytes is "
                                             "reached; further output is not logged"))
            return
        end = b"" if chunk.endswith(b"\n") else b"\n"
        self._put(self._head(cid, tag, f"{len(chunk)} bytes") + chunk + end)

    def end(self, cid: int, o: Outcome, seconds: float) -> None:
        if self._f:
            self._put(self._head(cid, o.cause.value,
                                 f"rc={o.rc} {seconds:.2f}s {o.reason}".rstrip()))

    def close(self) -> None:
        if self._f:
            with contextlib.suppress(OSError):
                self._f.close()
            self._f = None


# ---------------------------------------------------------------- the cluster


KILL_SCRIPT = r"""
scan() { grep -lsxzF "$@" /proc/[0-9]*/environ 2>/dev/null | sed 's,^/proc/,,;s,/environ$,,'; }
pids=$(scan "$@")
[ -n "$pids" ] && kill -TERM $pids 2>/dev/null
n=0
while [ $n -lt 20 ] && [ -n "$(scan "$@")" ]; do sleep 0.25; n=$((n + 1)); done
left=$(scan "$@")
[ -n "$left" ] && kill -KILL $left 2>/dev/null && sleep 0.25
echo "killed:" $pids
echo "left:" $(scan "$@")
"""


def _cfg_str(cfg: _Settings, key: str) -> str | None:
    """A string option of the user's ssh config for one host (None when unset)."""
    value = cfg.get(key)
    return value if isinstance(value, str) and value else None


def _cfg_int(cfg: _Settings, key: str) -> int | None:
    """An integer option (Port) of the user's ssh config for one host (None when unset)."""
    value = cfg.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Cluster:
    """The SSH side of one CLI run over an inventory's nodes (async context manager).

    Connections open lazily on first use (or all at once with `connect()`), each once; every
    later command on that node is a new channel on the same connection. `each()` runs one
    coroutine per node and is what commands use: a node connects and starts as soon as it can,
    so one silent node never holds back the others.

    With `handle_signals`, the first Ctrl-C / SIGTERM interrupts the run (node tasks cancelled,
    every remote command this run started killed on its node, `interrupted` set to the signal);
    a second Ctrl-C exits at once.
    """

    def __init__(self, inv: Inventory, nodes: list[str] | None = None,
                 log_dir: Path | None = None, *, capture_head: int | None = None,
                 capture_tail: int | None = None, log_max: int | None = None,
                 handle_signals: bool = False):
        self.inv = inv
        self.nodes = list(nodes) if nodes is not None else list(inv.nodes)
        unknown = [n for n in self.nodes if n not in inv.nodes]
        if unknown:
            raise ValueError(f"not in the inventory: {', '.join(unknown)}")
        self.log_dir = Path(log_dir) if log_dir else None
        self.unreachable: dict[str, Outcome] = {}
        self.interrupted: int | None = None  # the signal number once interrupted
        self.killed: dict[str, Outcome] = {}  # node -> the node-side kill's outcome
        self.capture = (_env_int("DEPLOY_CAPTURE_HEAD", CAPTURE_HEAD) if capture_head is None
                        else capture_head,
                        _env_int("DEPLOY_CAPTURE_TAIL", CAPTURE_TAIL) if capture_tail is None
                        else capture_tail)
        self._budget = _LogBudget(_env_int("DEPLOY_RUN_LOG_MAX", RUN_LOG_MAX) if log_max is None
                                  else log_max)
        self._handle_signals = handle_signals
        self._signals: list[int] = []
        self._tasks: set[asyncio.Task] = set()
        self._running: dict[str, set[str]] = defaultdict(set)   # node -> tokens still running
        self._started: dict[str, set[str]] = defaultdict(set)   # node -> every token started
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
        self._identities: dict[str, Sequence[asyncssh.SSHKeyPair]] = {}
        self._configs: dict[str, _Settings] = {}
        self._config_sets: set[str] | None = None  # of _CONFIG_WE_READ, what the file may set
        self._local_user: str | None = None
        raise_nofile(2 * len(self.nodes) + 64)

    @property
    def log_errors(self) -> dict[str, str]:
        """node -> why its log could not be written (disk full, read-only …)."""
        return {n: log.error for n, log in self._logs.items() if log.error}

    async def __aenter__(self) -> Cluster:
        if self.log_dir:
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # each node log then records the error; the run goes on without logs
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    self._signals.append(sig)
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            if self.interrupted:
                await self.stop_remote()
        finally:
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            self._signals.clear()
            await self.close()

    def _on_signal(self, sig: int) -> None:
        if self.interrupted:  # the second one: the user means it
            if sig == signal.SIGINT:
                sys.stderr.write("\ninterrupted again: exiting now; remote commands may remain\n")
                sys.stderr.flush()
                os._exit(128 + sig)
            return
        sys.stderr.write(f"\n{signal.Signals(sig).name}: stopping the commands started on the "
                         "nodes (Ctrl-C again to exit at once)\n")
        sys.stderr.flush()
        self.interrupt(sig)

    def interrupt(self, sig: int = signal.SIGINT) -> None:
        """Stop the run: cancel every node task; `each()` then kills what was started."""
        self.interrupted = int(sig)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._conns.values()):
            if not task.done():
                task.cancel()

    async def stop_remote(self) -> dict[str, Outcome]:
        """Kill, on each node, every command of this run that did not finish (found by its
        DEPLOY_RUN token in /proc, through a new channel); wait until they are gone."""
        targets = {n: sorted(t) for n, t in self._running.items() if t and n not in self.killed}

        async def one(node: str) -> Outcome:
            conn = self._conns.get(node)
            if conn is None or not conn.done() or conn.cancelled() or isinstance(conn.result(), Outcome):
                return Outcome(node, Cause.UNREACHABLE, reason="no connection to kill through")
            args = [a for t in targets[node] for a in ("-e", f"{RUN_VAR}={t}")]
            argv = ["sh", "-c", KILL_SCRIPT, "deploy-kill", *args]
            if self.inv.ssh.sudo:
                argv = ["sudo", "-n", *argv]
            o = await self._exec(node, shlex.join(argv), None, KILL_TIMEOUT, None, kill=True)
            if o.ok:
                self._running[node].clear()
            return o

        results = await asyncio.gather(*(one(n) for n in targets))
        self.killed.update(zip(targets, results))
        return dict(zip(targets, results))

    async def close(self) -> None:
        opened = []
        for task in [*self._conns.values(), *self._jumps.values()]:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and isinstance(task.result(), asyncssh.SSHClientConnection):
                opened.append(task.result())
        for conn in opened:
            conn.close()
        with contextlib.suppress(*NETWORK_ERRORS):
            await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in opened),
                                                  return_exceptions=True), 5)
        for log in self._logs.values():
            log.close()
        self._conns.clear()
        self._jumps.clear()

    # ------------------------------------------------------------ many nodes at once

    async def each(self, nodes: Iterable[str], fn: Callable[[str], Awaitable[T]], *,
                   on_done: Callable[[str, T], None] | None = None) -> dict[str, T]:
        """`fn(node)` on every node concurrently -> {node: result} for the nodes that finished.

        Node-level problems are values inside `fn`'s result (Outcome); an exception from `fn`
        is a bug and is raised once the others have finished. After an interruption, the nodes
        that did not finish are missing from the result and their remote commands are killed.
        """
        names = list(nodes)
        if self.interrupted:
            return {}

        async def one(name: str) -> T:
            result = await fn(name)
            if on_done:
                on_done(name, result)
            return result

        tasks = {n: asyncio.ensure_future(one(n)) for n in names}
        self._tasks.update(tasks.values())
        try:
            if tasks:
                await asyncio.wait(tasks.values())
        finally:
            self._tasks.difference_update(tasks.values())
        if self.interrupted:
            await self.stop_remote()
        out: dict[str, T] = {}
        error: BaseException | None = None
        for n, t in tasks.items():
            if t.cancelled():
                continue
            if t.exception() is not None:
                error = error or t.exception()
                continue
            out[n] = t.result()
        if error is not None:
            raise error
        return out

    # ------------------------------------------------------------ connecting

    async def connect(self, on_node: Callable[[Outcome], None] | None = None
                      ) -> dict[str, Outcome]:
        """Open every node now (for a progress count and an early list of the unreachable)."""
        async def one(name: str) -> Outcome:
            conn = await self._connection(name)
            o = conn if isinstance(conn, Outcome) else Outcome(name, Cause.OK, reason="connected")
            if on_node:
                on_node(o)
            return o

        return await self.each(self.nodes, one)

    async def _connection(self, name: str) -> asyncssh.SSHClientConnection | Outcome:
        if name not in self._conns:
            self._conns[name] = asyncio.ensure_future(self._open(name))
        return await asyncio.shield(self._conns[name])

    def _config(self, host: str) -> _Settings:
        """~/.ssh/config for `host` (what it says of Port, User and ProxyJump: asyncssh applies
        the rest itself), parsed once per host per run, and not at all when the file cannot set
        any of the three: then no node costs a parse that raw asyncssh does not make."""
        if self._config_sets is None:
            self._config_sets = _config_keywords(self._config_paths) & _CONFIG_WE_READ
        if not self._config_sets:
            return _NO_CONFIG
        cfg = self._configs.get(host)
        if cfg is None:
            if self._local_user is None:
                self._local_user = getpass.getuser()
            cfg = cast(SSHClientConfig, SSHClientConfig.load(None, self._config_paths, False, False, False,
                                                             self._local_user, (), host, ()))
            self._configs[host] = cfg
        return cfg

    async def _open(self, name: str) -> asyncssh.SSHClientConnection | Outcome:
        node, ssh = self.inv.nodes[name], self.inv.ssh
        try:
            cfg = self._config(node.host)
            jump = ssh.jump or _cfg_str(cfg, "ProxyJump")
            tunnel = None
            if jump:
                tunnel = await self._jump(jump)
                if isinstance(tunnel, str):
                    return self._unreachable(name, f"jump host {jump}: {tunnel}")
            return await self._dial(
                node.host, node.port or ssh.port or _cfg_int(cfg, "Port") or 22,
                node.user or ssh.user or _cfg_str(cfg, "User") or "root",
                node.identity_file or ssh.identity_file, tunnel)
        except _Failed as f:
            return self._unreachable(name, f.reason)
        except NETWORK_ERRORS as e:  # only the network: a bug is not "unreachable"
            return self._unreachable(name, _reason(e))

    def _unreachable(self, name: str, reason: str) -> Outcome:
        o = Outcome(name, Cause.UNREACHABLE, reason=reason)
        self.unreachable[name] = o
        return o

    async def _jump(self, spec: str) -> asyncssh.SSHClientConnection | str:
        """One connection per jump spec for the whole run, shared by every node behind it.

        A hop's user and port come from the spec, else ssh config, else root and 22; its key is
        `ssh.identity_file` (else ssh config and the agent), as bastions usually take the same.
        """
        async def open_chain() -> asyncssh.SSHClientConnection | str:
            conn: asyncssh.SSHClientConnection | None = None
            from .inventory import parse_jump

            try:
                hops = parse_jump(spec)  # ssh.jump is checked at load; ProxyJump is not
            except ValueError as e:
                return str(e)
            try:
                for user, host, port in hops:
                    cfg = self._config(host)
                    conn = await self._dial(host, port or _cfg_int(cfg, "Port") or 22,
                                            user or _cfg_str(cfg, "User") or "root",
                                            self.inv.ssh.identity_file, conn)
                return conn if conn is not None else f"jump spec {spec!r} names no host"
            except _Failed as f:
                return f.reason
            except NETWORK_ERRORS as e:
                return _reason(e)

        if spec not in self._jumps:
            self._jumps[spec] = asyncio.ensure_future(open_chain())
        return await asyncio.shield(self._jumps[spec])

    def _identity(self, path: str | None) -> Sequence[asyncssh.SSHKeyPair]:
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
                                client_factory=lambda c=client: c,
                                connect_timeout=self.inv.ssh.connect_timeout,
                                keepalive_interval=KEEPALIVE, **self._algs)
                        except asyncssh.HostKeyNotVerifiable:
                            if client.refusal:
                                raise client.refusal from None
                            raise
        except _Failed:
            raise
        except NETWORK_ERRORS as e:
            raise _Failed(_reason(e, attempts, self.inv.ssh.connect_timeout)) from None
        raise AssertionError("tenacity returns or raises")

    # ------------------------------------------------------------ commands

    def _command(self, argv: Sequence[str], timeout: float | None) -> tuple[str, str]:
        """The node-side command line and its run token."""
        argv = [str(a) for a in argv]
        if timeout:  # closing the channel does not stop a remote process (no pty), and OpenSSH
            # refuses signal requests for root logins: the node enforces the limit itself
            argv = ["timeout", "-k", "5", f"{timeout:g}", *argv]
        token = secrets.token_hex(8)
        argv = ["env", f"{RUN_VAR}={token}", *argv]
        return shlex.join(["sudo", "-n", *argv] if self.inv.ssh.sudo else argv), token

    async def run(self, node: str, argv: list[str], *, timeout: float | None = None,
                  input: str | None = None, capture: tuple[int, int] | None = None) -> Outcome:
        """`capture`: (head, tail) bytes kept per stream, for callers that parse all of a
        command's output (default: the cluster's)."""
        stdin = None if input is None else f"({len(input)} bytes on stdin)"
        command, token = self._command(argv, timeout)
        return await self._exec(node, command, input, timeout, stdin, token=token, capture=capture)

    async def run_script(self, node: str, script: str, *, timeout: float | None = None,
                         capture: tuple[int, int] | None = None) -> Outcome:
        """A POSIX sh script on stdin: many node-side steps for one channel and one round trip."""
        command, token = self._command(["sh", "-s"], timeout)
        return await self._exec(node, command, script, timeout, script, token=token,
                                capture=capture)

    async def run_all(self, argv_or_fn: list[str] | Callable[[str], list[str]],
                      nodes: list[str] | None = None, timeout: float | None = None, *,
                      on_done: Callable[[Outcome], None] | None = None) -> dict[str, Outcome]:
        names = list(nodes) if nodes is not None else self.nodes

        async def one(name: str) -> Outcome:
            argv = argv_or_fn(name) if callable(argv_or_fn) else argv_or_fn
            return await self.run(name, argv, timeout=timeout)

        done = None if on_done is None else (lambda _n, o: on_done(o))
        results = await self.each(names, one, on_done=done)
        return {n: results.get(n) or self._interrupted(n) for n in names}

    def _interrupted(self, node: str) -> Outcome:
        return Outcome(node, Cause.INTERRUPTED, reason="interrupted before it finished")

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
        command, token = self._command(argv, timeout)
        return await self._exec(node, command, data, timeout,
                                f"({len(data)} bytes to {remote_path})", token=token)

    def _log(self, node: str) -> _NodeLog:
        if node not in self._logs:
            path = inside(self.log_dir, node, ".log") if self.log_dir else None
            self._logs[node] = _NodeLog(path, self._budget)
        return self._logs[node]

    async def _exec(self, node: str, command: str, data: bytes | str | None,
                    timeout: float | None, stdin_note: str | None, *, token: str | None = None,
                    kill: bool = False, capture: tuple[int, int] | None = None) -> Outcome:
        if self.interrupted and not kill:
            return self._interrupted(node)
        conn = await self._connection(node)
        if isinstance(conn, Outcome):
            return conn
        log = self._log(node)
        async with self._channels[node]:
            started = time.monotonic()
            cid = log.begin(command, stdin_note)
            out = _Capture(*(capture or self.capture))
            err = _Capture(*(capture or self.capture))
            proc = None
            try:
                if token:
                    self._running[node].add(token)
                    self._started[node].add(token)
                proc = await conn.create_process(command, encoding=None, request_pty=False)
                await asyncio.wait_for(self._collect(proc, data, out, err, log, cid), timeout)
                o = self._finished(node, proc, out, err, timeout)
            except asyncio.CancelledError:
                o = Outcome(node, Cause.INTERRUPTED, None, out.text(), err.text(),
                            "interrupted before it finished", out.omitted + err.omitted)
                log.end(cid, o, time.monotonic() - started)
                if proc is not None:
                    proc.close()
                raise  # the token stays in _running: stop_remote() kills it on the node
            except TimeoutError:
                if proc is not None:
                    proc.close()
                o = Outcome(node, Cause.TIMED_OUT, None, out.text(), err.text(),
                            f"timed out after {timeout:g}s", out.omitted + err.omitted)
            except asyncssh.ChannelOpenError as e:
                o = Outcome(node, Cause.COULD_NOT_RUN, None,
                            reason=f"cannot open a session: {e.reason}")
                if conn.is_closed():
                    o = self._unreachable(node, "connection lost: the node closed the connection")
            except (OSError, asyncssh.Error) as e:
                o = Outcome(node, Cause.UNREACHABLE, None, out.text(), err.text(),
                            f"connection lost: {getattr(e, 'reason', '') or e}",
                            out.omitted + err.omitted)
            if token and o.cause is not Cause.INTERRUPTED:
                self._running[node].discard(token)
            if o.cause is Cause.UNREACHABLE:
                self.unreachable[node] = o
            log.end(cid, o, time.monotonic() - started)
            return o

    @staticmethod
    async def _collect(proc, data, out: _Capture, err: _Capture, log: _NodeLog, cid: int):
        async def pump(reader, buf: _Capture, tag: str) -> None:
            while chunk := await reader.read(65536):
                buf.add(chunk)
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

    def _finished(self, node: str, proc, out: _Capture, err: _Capture,
                  timeout: float | None) -> Outcome:
        where = (f"{self.log_dir / (node + '.log')}" if self.log_dir
                 else "no log (the run has no log folder)")
        stdout, stderr = out.text(where), err.text(where)
        omitted = out.omitted + err.omitted
        if proc.exit_status is None and proc.exit_signal is None:
            return Outcome(node, Cause.UNREACHABLE, None, stdout, stderr,
                           "connection lost before the command finished", omitted)
        if proc.exit_signal is not None:
            return Outcome(node, Cause.FAILED, proc.returncode, stdout, stderr,
                           f"killed by signal {proc.exit_signal[0]}", omitted)
        rc = proc.exit_status
        if rc == 0:
            return Outcome(node, Cause.OK, 0, stdout, stderr, omitted=omitted)
        if timeout and rc in (124, 137):  # coreutils timeout: TERM (124) or, after -k, KILL
            return Outcome(node, Cause.TIMED_OUT, rc, stdout, stderr,
                           f"timed out after {timeout:g}s", omitted)
        if self.inv.ssh.sudo and rc == 1 and "sudo:" in stderr and (
                "password" in stderr or "not allowed" in stderr or "not in the sudoers" in stderr):
            return Outcome(node, Cause.COULD_NOT_RUN, rc, stdout, stderr,
                           f"sudo refused: {_tail(stderr, 1)}", omitted)
        return Outcome(node, Cause.FAILED, rc, stdout, stderr, _tail(stderr) or f"exit code {rc}",
                       omitted)


def _text(buf: bytes | bytearray) -> str:
    return bytes(buf).decode("utf-8", "replace")
