"""The sim's processes: the process table, listeners, freezing and signalling.

Used by `down` (find everything of DIR and stop it), by the servers (wait until they listen) and
by the SSH faults (stop one node's server). Reads /proc only.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from .errors import SimError
from .layout import sshd_dir
from .manifest import Sim


def listening() -> set[tuple[str, int]]:
    """(addr, port) of every IPv4 TCP socket in LISTEN state: readiness without connecting
    (a probe connection would show up in the sshd logs that benchmarks count)."""
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "0A":
                host, port = parts[1].split(":")
                addr = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(host, 16)))
                out.add((addr, int(port, 16)))
    return out


def wait_listening(sim: Sim, names: list[str], up: bool = True, timeout: float = 15.0) -> None:
    """Wait until each node's server is listening (up) or not (down); SimError naming the rest."""
    deadline = time.monotonic() + timeout
    while True:
        live = listening()
        late = [n for n in names if ((sim.nodes[n].addr, sim.nodes[n].port) in live) != up]
        if not late:
            return
        if time.monotonic() > deadline:
            what = "is not listening" if up else "still listens"
            logs = "".join(f"\n  {n}: {tail(sshd_dir(sim.dir, n) / 'sshd.log')}" for n in late[:5])
            raise SimError(f"after {timeout:.0f}s the SSH server of {', '.join(late)} {what}{logs}")
        time.sleep(0.02)


def tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return f"(no log at {path})"


def alive(pid: int | None) -> bool:
    """Running and not a zombie (a killed child of ours stays a zombie until reaped)."""
    return pid is not None and pid > 0 and proc_state(pid) not in ("", "Z", "X")


def proc_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat ("" when there is no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def procs() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                rest = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
                out[int(entry.name)] = (int(rest[1]), rest[0])
    return out


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def sim_processes(root: Path) -> list[int]:
    """Every live process of the sim in DIR: its servers (sim.json PIDs and sshd processes whose
    command line names DIR/nodes/), their descendants, and anything with DEPLOY_SIM_ROOT=DIR in
    its environment. Never this process or its ancestors."""
    root = Path(root)
    table = procs()
    env_entry = f"DEPLOY_SIM_ROOT={root}".encode()
    nodes_arg = f"{root}/nodes/".encode()
    found = set()
    with contextlib.suppress(SimError):
        sim = Sim.load(root)
        for n in sim.nodes.values():
            if n.pid in table and str(root).encode() in read_bytes(f"/proc/{n.pid}/cmdline"):
                found.add(n.pid)
    for pid in table:
        cmd = read_bytes(f"/proc/{pid}/cmdline")
        if (cmd.startswith(b"sshd") or b"/sshd\0" in cmd) and nodes_arg in cmd:
            found.add(pid)
        elif env_entry in read_bytes(f"/proc/{pid}/environ").split(b"\0"):
            found.add(pid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    mine, pid = set(), os.getpid()
    while pid > 1 and pid in table and pid not in mine:
        mine.add(pid)
        pid = table[pid][0]
    return sorted(p for p in found - mine if table[p][1] not in ("Z", "X"))


def signal_all(pids, sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def freeze(scan: Callable[[], set[int]]) -> set[int]:
    """SIGSTOP whatever `scan` finds, until it finds nothing new. A stopped process cannot fork,
    so no child escapes the PID tree mid-kill (an orphaned sshd child is unrecognisable: its
    environ and command line are overwritten). Send SIGCONT after the fatal signal."""
    frozen: set[int] = set()
    while new := scan() - frozen:
        signal_all(new, signal.SIGSTOP)
        frozen |= new
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(
                proc_state(p) not in ("T", "t", "Z", "X", "") for p in new):
            time.sleep(0.002)
    return frozen
