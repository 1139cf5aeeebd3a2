"""Runtime occupancy of a simulated node's NPUs: which live process holds how much HBM where.

Hardware truth (devices, IPs, TLS, links, the `hbm-held` fault) lives in the node's state.json;
what running programs hold lives here, one file per claim:

    DIR/nodes/<node>/runtime/hbm/<device>/<pid>     text "<MB> <process name>\n"

A claim whose process is gone (or a zombie) is void, so a process that dies without cleaning up
releases its devices, and one that survives its parent (an orphaned VLLM::EngineCore) keeps them:
exactly the behaviour an orchestrator's teardown must cope with. Stdlib only (runs on the node).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("" when there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0].decode()
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 here reaps slowly)."""
    return bool(pid) and proc_state(pid) not in ("", "Z", "X")


@contextlib.contextmanager
def node_lock(node_dir: str | os.PathLike, timeout: float = 10.0):
    """The per-node lock shared with the fake tools: `mkdir NODE/.lock`; stale after `timeout`."""
    lock = Path(node_dir) / ".lock"
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.mkdir(lock)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.rmdir(lock)
                deadline = time.monotonic() + timeout
            time.sleep(0.005)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(lock)


def _hbm_dir(node_dir: str | os.PathLike) -> Path:
    return Path(node_dir) / "runtime" / "hbm"


def claim(node_dir: str | os.PathLike, devices: list[int], pid: int, mb: int, name: str) -> None:
    """Record that `pid` holds `mb` MB on each of `devices` (call under `node_lock`)."""
    for d in devices:
        path = _hbm_dir(node_dir) / str(int(d))
        path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chmod(path, 0o777)
        tmp = path / f".{pid}.tmp"
        tmp.write_text(f"{int(mb)} {name}\n")
        os.replace(tmp, path / str(int(pid)))


def release(node_dir: str | os.PathLike, pid: int) -> None:
    """Drop every claim of `pid` (a clean exit)."""
    base = _hbm_dir(node_dir)
    if base.is_dir():
        for dev in base.iterdir():
            with contextlib.suppress(FileNotFoundError):
                (dev / str(int(pid))).unlink()


def claims(node_dir: str | os.PathLike, devices: list[int] | None = None) -> list[tuple[int, int, int, str]]:
    """(device, pid, MB, name) of every live runtime claim on `devices` (None: all), sorted."""
    wanted = None if devices is None else {int(d) for d in devices}
    out: list[tuple[int, int, int, str]] = []
    base = _hbm_dir(node_dir)
    if base.is_dir():
        for dev in base.iterdir():
            if not dev.name.isdigit() or (wanted is not None and int(dev.name) not in wanted):
                continue
            for f in dev.iterdir():
                if not f.name.isdigit() or not alive(int(f.name)):
                    continue
                with contextlib.suppress(OSError, ValueError):
                    mb, _, name = f.read_text().strip().partition(" ")
                    out.append((int(dev.name), int(f.name), int(mb), name))
    return sorted(out)


def sweep(node_dir: str | os.PathLike) -> None:
    """Delete void claims (dead or zombie PIDs), so the tools' "no claims" fast path comes back."""
    base = _hbm_dir(node_dir)
    if not base.is_dir():
        return
    for dev in base.iterdir():
        with contextlib.suppress(OSError):
            for f in dev.iterdir():
                if f.name.isdigit() and not alive(int(f.name)):
                    with contextlib.suppress(OSError):
                        f.unlink()


def holders(node_dir: str | os.PathLike, devices: list[int] | None = None) -> list[tuple[int, int, int, str]]:
    """(device, pid, MB, name) of every live claim on `devices` (None: all), plus the processes
    of the node's hardware state (the `hbm-held` fault), sorted by device then pid."""
    wanted = None if devices is None else {int(d) for d in devices}
    out = claims(node_dir, devices)
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((Path(node_dir) / "state.json").read_text())
        for d in state.get("devices", []):
            if wanted is None or d["id"] in wanted:
                for p in d.get("processes", []):
                    out.append((d["id"], p["pid"], p["memory_mb"], p.get("name", "")))
    return sorted(out)
