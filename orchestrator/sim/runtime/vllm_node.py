"""What the fake vLLM knows of the simulated node it runs on, and how it prints.

Node context comes from the environment the simulated container gives every process
(orchestrator CONTRACT "The simulated node"):

- DEPLOY_SIM_NODE       the node's folder: state.json (hardware truth: "address", "nic", devices
                        with ip / tls_switch / hbm), runtime/config.json (startup_s, time_factor,
                        faults) and runtime/hbm/ (occupancy claims, see occupancy.py)
- DEPLOY_SIM_CONTAINER  the container's folder; its config.json has HostConfig.Devices. Absent (no
                        container): every device of the node is present.
- DEPLOY_SIM_HCCN_CONF  where the container's /etc/hccn.conf is (default /etc/hccn.conf inside a
                        container; the node's own file without one).

Log lines follow vLLM's format, `(APIServer pid=N) INFO 12-01 08:30:00 [api_server.py:1880] ...`,
on stdout (vLLM's default handler); tracebacks go to stderr. Stdlib only.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

try:  # package import (tests) or a sibling module (DIR/runtime/ on a simulated node)
    from . import occupancy  # type: ignore[no-redef]
except ImportError:  # pragma: no cover - exercised on the node
    import occupancy  # type: ignore[no-redef]

VLLM_VERSION = "0.11.0"
PYTHON_PREFIX = "/usr/local/python3.11.14/lib/python3.11/site-packages"


# ---------------------------------------------------------------------------------------------
# printing

class Log:
    """vLLM-style log lines with the process prefix real multi-process vLLM prints."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def line(self, level: str, where: str, msg: str) -> None:
        ts = time.strftime("%m-%d %H:%M:%S")
        text = "".join(f"{self.prefix}{level} {ts} [{where}] {m}\n" for m in msg.split("\n"))
        _write(sys.stdout, text)

    def info(self, where: str, msg: str) -> None:
        self.line("INFO", where, msg)

    def warning(self, where: str, msg: str) -> None:
        self.line("WARNING", where, msg)

    def error(self, where: str, msg: str) -> None:
        self.line("ERROR", where, msg)

    def raw(self, text: str) -> None:
        _write(sys.stdout, "".join(f"{self.prefix}{t}\n" for t in text.split("\n")))


def _write(stream, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # the log went away (a closed channel): keep running
        pass


def traceback_text(frames: list[tuple[str, int, str, str]], last: str) -> str:
    """A Python traceback as the real program prints it; frames are (file, line, func, code)."""
    out = ["Traceback (most recent call last):"]
    for file, line, func, code in frames:
        out.append(f'  File "{file}", line {line}, in {func}')
        out.append(f"    {code}")
    out.append(last)
    return "\n".join(out)


def print_traceback(frames: list[tuple[str, int, str, str]], last: str, prefix: str = "") -> None:
    text = traceback_text(frames, last)
    _write(sys.stderr, "".join(f"{prefix}{t}\n" for t in text.split("\n")))


def plog_time() -> str:
    """CANN plog timestamp: 2025-04-08-18:07:20.444.436."""
    t = time.time()
    us = int((t % 1) * 1_000_000)
    return time.strftime("%Y-%m-%d-%H:%M:%S", time.localtime(t)) + f".{us // 1000:03d}.{us % 1000:03d}"


def torch_time() -> str:
    """c10 warning timestamp: W1201 08:30:00.123456789."""
    t = time.time()
    return time.strftime("%m%d %H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1e9):09d}"


# ---------------------------------------------------------------------------------------------
# node context

class Node:
    """The node's hardware truth, runtime knobs and this container's devices."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.env: Mapping[str, str] = env
        self.dir = Path(env.get("DEPLOY_SIM_NODE") or ".")
        self.container_dir = Path(env["DEPLOY_SIM_CONTAINER"]) if env.get("DEPLOY_SIM_CONTAINER") else None
        self.state = _read_json(self.dir / "state.json") or {}
        self.address: str = self.state.get("address") or "127.0.0.1"
        self.nic: str | None = self.state.get("nic")
        self.soc: str = self.state.get("soc") or "a3"
        self.name: str = self.state.get("name") or self.dir.name
        self.devices: dict[int, dict] = {int(d["id"]): d for d in self.state.get("devices", [])}
        self._config_path = self.dir / "runtime" / "config.json"
        self._config_mtime: float | None = None
        self.config: dict = {}
        self.reload_config()

    # runtime/config.json ---------------------------------------------------------------------
    def reload_config(self) -> bool:
        """Re-read runtime/config.json if it changed; True when it did."""
        try:
            mtime = self._config_path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime == self._config_mtime and self._config_mtime is not None:
            return False
        self._config_mtime = mtime
        self.config = _read_json(self._config_path) or {}
        return True

    @property
    def startup_s(self) -> float:
        return float(self.config.get("startup_s", 2.0))

    @property
    def time_factor(self) -> float:
        return float(self.config.get("time_factor", 1.0))

    def faults(self) -> dict[str, str | None]:
        """{"crash-after": "5", "engine-death": None, ...} from runtime/config.json "faults"."""
        out: dict[str, str | None] = {}
        for spec in self.config.get("faults", []) or []:
            name, sep, arg = str(spec).partition(":")
            out[name.strip()] = arg.strip() if sep else None
        return out

    # devices ---------------------------------------------------------------------------------
    def _container_config(self) -> dict | None:
        if self.container_dir is None:
            return None
        cfg = _read_json(self.container_dir / "config.json")
        if isinstance(cfg, list):
            cfg = cfg[0] if cfg else None
        return cfg if isinstance(cfg, dict) else None

    def container_devices(self) -> list[int]:
        """Physical device ids the container was given (`--device /dev/davinciN`), sorted: the
        container's logical device i is the i-th of them (what ASCEND_RT_VISIBLE_DEVICES indexes)."""
        cfg = self._container_config()
        if cfg is None:
            return sorted(self.devices)
        found = set()
        for dev in ((cfg.get("HostConfig") or {}).get("Devices") or []):
            m = re.fullmatch(r"/dev/davinci(\d+)", str(dev.get("PathOnHost") or dev.get("PathInContainer") or ""))
            if m:
                found.add(int(m.group(1)))
        return sorted(found)

    def container_binds(self) -> list[tuple[str, str]] | None:
        """(source, destination) of the container's -v mounts; None without a container record."""
        cfg = self._container_config()
        if cfg is None:
            return None
        out = []
        for b in ((cfg.get("HostConfig") or {}).get("Binds") or []):
            parts = str(b).split(":")
            if len(parts) >= 2:
                out.append((parts[0], parts[1].rstrip("/") or "/"))
        return out

    def mounted(self, path: str) -> bool:
        """Whether a container path comes from a -v mount (the path or a folder above it)."""
        binds = self.container_binds()
        if binds is None:
            return True
        path = path.rstrip("/")
        return any(path == dst or path.startswith(dst + "/") for _src, dst in binds)

    def hccn_conf_path(self) -> Path | None:
        """The container's /etc/hccn.conf as this process can read it; None when not mounted."""
        if self.env.get("DEPLOY_SIM_HCCN_CONF"):
            return Path(self.env["DEPLOY_SIM_HCCN_CONF"])
        binds = self.container_binds()
        if binds is not None:
            for src, dst in binds:
                if dst == "/etc/hccn.conf":
                    inside = Path("/etc/hccn.conf")
                    if inside.exists():  # chrooted into the container's rootfs
                        return inside
                    return self.dir / "root" / src.lstrip("/")
            return None
        for p in (self.dir / "root" / "etc" / "hccn.conf", self.dir / "etc" / "hccn.conf"):
            if p.exists():
                return p
        return Path("/etc/hccn.conf")

    def hccn_addresses(self) -> dict[int, str] | None:
        """address_N=IP entries of the container's /etc/hccn.conf; None when the file is absent."""
        path = self.hccn_conf_path()
        if path is None:
            return None
        try:
            text = path.read_text()
        except OSError:
            return None
        out = {}
        for line in text.splitlines():
            m = re.fullmatch(r"\s*address_(\d+)\s*=\s*(\S+)\s*", line)
            if m:
                out[int(m.group(1))] = m.group(2)
        return out

    def hbm(self, device: int) -> tuple[int, int]:
        """(total, baseline used) MB of a device without any process's memory."""
        d = self.devices.get(device, {})
        total = int(d.get("hbm_total_mb", 65536))
        used = int(d.get("hbm_used_mb", 3380)) - sum(int(p.get("memory_mb", 0)) for p in d.get("processes", []))
        return total, max(0, used)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def parse_visible(value: str | None) -> list[int] | None:
    """ASCEND_RT_VISIBLE_DEVICES "0,1,2" -> [0, 1, 2]; None when unset. ValueError when malformed."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return []
    return [int(x) for x in value.split(",")]


__all__ = ["Log", "Node", "occupancy", "parse_visible", "print_traceback", "traceback_text", "plog_time",
           "torch_time", "VLLM_VERSION", "PYTHON_PREFIX"]
