"""Simulated nodes served by the system OpenSSH: one sshd per node, each with its own config.

sshd daemonizes itself (so nothing of it is our child and `sim up` returns at once) and writes
its PidFile once it listens. Its config lives in DIR/nodes/<node>/sshd/ with the host key, the
authorized_keys it reads at every login (which is how `auth-fail` works without a restart) and
its log (`LogLevel VERBOSE`: one "Connection from" line per connection, for benchmarks). A new
host key takes a SIGHUP (sshd re-executes itself under the same PID, so its open connections stay
its children and `down` still finds them by PID tree: sshd overwrites its environ).

The node environment comes from `SetEnv` (it does override PATH in OpenSSH 9.2), and
`ForceCommand` runs every session through `/bin/sh` with PATH set again: the login shell's rc
files (a non-root user's ~/.bashrc) or a login shell's /etc/profile cannot change it, and a
session without a command gets a plain `/bin/sh` as in the embedded server.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .errors import SimError
from .layout import authorized_keys_path, host_key_path, node_env, sshd_dir
from .manifest import Sim
from .processes import freeze, wait_listening
from .processes import procs as _procs
from .processes import signal_all as _signal
from .processes import tail as _tail

SSHD = "/usr/sbin/sshd"


def available() -> bool:
    return os.access(SSHD, os.X_OK)


def config(sim: Sim, node: str) -> str:
    n, d = sim.nodes[node], sshd_dir(sim.dir, node)
    env = node_env(sim.dir, node)
    force = f'export PATH={env["PATH"]}; exec /bin/sh -c "${{SSH_ORIGINAL_COMMAND:-exec /bin/sh}}"'
    return "\n".join([
        f"# deploy sim: node {node}",
        f"ListenAddress {n.addr}:{n.port}",
        f"HostKey {host_key_path(sim.dir, node)}",
        f"AuthorizedKeysFile {authorized_keys_path(sim.dir, node)}",
        f"PidFile {d}/sshd.pid",
        f"AllowUsers {sim.user}",
        "StrictModes no",  # DIR is under /tmp, owned by whoever ran `sim up`
        "UsePAM no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "PermitUserEnvironment no",
        "SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()),
        f"ForceCommand {force}",
        "MaxStartups 1000",
        "MaxSessions 1000",
        "LoginGraceTime 30",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "AllowTcpForwarding local",  # direct-tcpip: `deploy up` polls /health through the connection
        "LogLevel VERBOSE",
        "",
    ])


def start(sim: Sim, nodes: list[str]) -> None:
    """Start the nodes' sshds (in parallel) and record their PIDs in `sim` (not saved)."""
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    procs = {}
    for node in nodes:
        d = sshd_dir(sim.dir, node)
        (d / "sshd_config").write_text(config(sim, node))
        pidfile = d / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        env = {**os.environ, **node_env(sim.dir, node)}
        procs[node] = subprocess.Popen(
            [SSHD, "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    errors = []
    for node, p in procs.items():
        _, err = p.communicate()  # returns when sshd has forked into the background
        if p.returncode != 0:
            errors.append(f"{node}: sshd exited {p.returncode}: {err.decode(errors='replace').strip()}")
    if errors:
        raise SimError("sshd did not start:\n  " + "\n  ".join(errors))
    wait_listening(sim, nodes, timeout=15 + len(nodes) / 10)
    deadline = time.monotonic() + 10
    for node in nodes:  # the PidFile is written just after listen()
        while not (text := _read_text(sshd_dir(sim.dir, node) / "sshd.pid")).endswith("\n"):
            if time.monotonic() > deadline:
                raise SimError(f"sshd of {node} listens but wrote no PidFile")
            time.sleep(0.01)
        sim.nodes[node].pid = int(text)


def restart(sim: Sim, node: str, timeout: float = 10.0) -> None:
    """SIGHUP: sshd re-executes itself under the same PID, re-reading config and host key; its
    open connections stay its children. Done when the log shows it listening again."""
    log = sshd_dir(sim.dir, node) / "sshd.log"
    before = log.read_text(errors="replace").count("Server listening on")
    pid = sim.nodes[node].pid
    if pid is None:
        raise RuntimeError(f"{node}: sshd is not running, nothing to restart")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("Server listening on") <= before:
        if time.monotonic() > deadline:
            raise SimError(f"sshd of {node} did not restart: {_tail(log)}")
        time.sleep(0.01)


def stop(pid: int) -> None:
    """Stop a node's sshd and drop its connections: the sshds under it, not the commands they
    run (those only lose their client, as on a node cut off the network)."""
    def tree() -> set[int]:
        table, found, todo = _procs(), {pid}, [pid]
        while todo:
            parent = todo.pop()
            for child, (ppid, _) in table.items():
                if ppid == parent and child not in found and _comm(child) == "sshd":
                    found.add(child)
                    todo.append(child)
        return found

    victims = freeze(tree)
    _signal(victims, signal.SIGTERM)
    _signal(victims, signal.SIGCONT)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
