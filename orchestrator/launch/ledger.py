"""The local ledger of a deployment: what `up` launched, so `status` and `teardown` act on that
and not on a re-plan of an inventory edited since.

    $DEPLOY_STATE_DIR/<name>/ledger.json   the plan as launched, per node container id, per rank
                                           PID and start time, step results (written atomically)
    $DEPLOY_STATE_DIR/<name>/lock          held (flock) by the running up/teardown; names its holder

The folder is created 0700 and the ledger 0600. It never holds a secret value: the plan and
the inventory copy are saved redacted (orchestrator/redact.py), every other text scrubbed, and
`secrets` keeps only a keyed hash of the values, so a second `up` can tell a changed key.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import redact
from ..runlog import state_dir

VERSION = 1


class LockHeld(Exception):
    """Another up/teardown of the same inventory is running."""


def deployment_dir(name: str) -> Path:
    base = state_dir()
    path = base / name
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for private in (base, path):
        with contextlib.suppress(OSError):
            os.chmod(private, 0o700)
    return path


@contextlib.contextmanager
def deployment_lock(name: str, command: str):
    """Exclusive per inventory name; refuses at once with who holds it."""
    path = deployment_dir(name) / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise LockHeld(f"another deploy command is working on '{name}': {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"deploy {command} pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


@dataclass
class RankEntry:
    key: str
    node: str
    group: str
    pid: int | None = None
    started: float | None = None  # epoch seconds
    ready: float | None = None
    table: str | None = None      # sha256 of the rank table the rank started with


@dataclass
class Ledger:
    name: str
    inventory_text: str = ""  # the inventory as launched (status/teardown re-plan from it)
    inventory_file: str = ""
    plan: dict = field(default_factory=dict)  # Plan.to_json() as launched
    containers: dict[str, str] = field(default_factory=dict)  # node -> container id
    ranks: dict[str, RankEntry] = field(default_factory=dict)  # rank key -> entry
    proxy_pid: int | None = None
    ranktable_hash: str | None = None
    steps: list[dict] = field(default_factory=list)  # {"step", "ok", "detail", "at"}
    state: str = "new"  # new | launching | serving | failed | torn-down
    secrets: str = ""  # "salt:hmac" of the plan's secret values (redact.digest), never the values

    @classmethod
    def path_for(cls, name: str) -> Path:
        return deployment_dir(name) / "ledger.json"

    @classmethod
    def load(cls, name: str) -> Ledger | None:
        try:
            data = json.loads(cls.path_for(name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ValueError(f"the ledger {cls.path_for(name)} is unreadable ({e}); "
                             "move it away to start afresh") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"the ledger {cls.path_for(name)} has version {version}, "
                             f"expected {VERSION}")
        why = _malformed(data, name)
        if why:
            raise ValueError(f"the ledger {cls.path_for(name)} is not one deploy wrote ({why}); "
                             "move it away to start afresh")
        ranks = {k: RankEntry(**v) for k, v in data.get("ranks", {}).items()}
        return cls(name=data["name"], inventory_text=data.get("inventory_text", ""),
                   inventory_file=data.get("inventory_file", ""), plan=data.get("plan", {}),
                   containers=data.get("containers", {}), ranks=ranks, proxy_pid=data.get("proxy_pid"),
                   ranktable_hash=data.get("ranktable_hash"), steps=data.get("steps", []),
                   state=data.get("state", "new"), secrets=data.get("secrets", ""))

    def save(self) -> None:
        path = self.path_for(self.name)
        data = {"version": VERSION, "name": self.name, "state": self.state,
                "inventory_file": self.inventory_file,
                "inventory_text": redact.redact_inventory_text(self.inventory_text) if self.inventory_text else "",
                "plan": redact.redact_plan_json(self.plan),
                "containers": self.containers,
                "ranks": {k: vars(v) for k, v in self.ranks.items()},
                "proxy_pid": self.proxy_pid, "ranktable_hash": self.ranktable_hash, "steps": self.steps[-200:],
                "secrets": self.secrets}
        data = redact.scrub_obj(data)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)

    def record(self, step: str, ok: bool, detail: str = "") -> None:
        self.steps.append({"step": step, "ok": ok, "detail": detail[:2000], "at": time.time()})


def _malformed(data: dict, name: str) -> str:
    """Why `data` is not a ledger `save` wrote for `name` ("" if it is). A ledger edited by hand
    or by someone else is refused whole: its PIDs are signalled and its entries name nodes, so
    each field must have exactly the type and range `save` gives it (a pid is never `1`,
    `"1; touch x"` or `true`; see nodeside.pid_value)."""
    from .nodeside import pid_value

    def text(v: object) -> bool:
        return isinstance(v, str)

    def number(v: object) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))

    if data.get("name") != name:
        return f"name {str(data.get('name'))[:60]!r}, expected {name!r}"
    for key, check in (("state", text), ("inventory_text", text), ("inventory_file", text),
                       ("plan", lambda v: isinstance(v, dict)), ("steps", lambda v: isinstance(v, list)),
                       ("ranktable_hash", lambda v: v is None or text(v)),
                       ("containers", lambda v: isinstance(v, dict) and all(text(k) and text(x) for k, x in v.items())),
                       ("ranks", lambda v: isinstance(v, dict))):
        if key in data and not check(data[key]):
            return f"field {key}"
    if data.get("proxy_pid") is not None and pid_value(data["proxy_pid"]) != data["proxy_pid"]:
        return f"proxy_pid {str(data['proxy_pid'])[:60]!r} is not a PID"
    fields = {f.name for f in dataclasses.fields(RankEntry)}
    for key, entry in data.get("ranks", {}).items():
        if not isinstance(entry, dict) or set(entry) - fields or not {"key", "node", "group"} <= set(entry):
            return f"ranks.{str(key)[:60]}"
        if entry["key"] != key or not all(text(entry[k]) for k in ("node", "group")):
            return f"ranks.{str(key)[:60]}: key, node or group"
        pid = entry.get("pid")
        if pid is not None and pid_value(pid) != pid:
            return f"ranks.{str(key)[:60]}.pid {str(pid)[:60]!r} is not a PID"
        if not (number(entry.get("started")) and number(entry.get("ready"))):
            return f"ranks.{str(key)[:60]}: started/ready"
        if entry.get("table") is not None and not text(entry["table"]):
            return f"ranks.{str(key)[:60]}.table"
    return ""
