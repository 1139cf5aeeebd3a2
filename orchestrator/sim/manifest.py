"""DIR/sim.json: what should run and where (the manifest), and the file lock around changing it."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SimUsageError


@dataclass
class SimNode:
    addr: str
    port: int
    node_dir: str
    pid: int | None = None  # openssh: the node's sshd; embedded: the daemon (same for all)
    ssh_faults: list[str] = field(default_factory=list)


@dataclass
class Sim:
    """DIR/sim.json: what runs, where; the embedded daemon re-reads it on SIGHUP."""

    dir: Path
    mode: str
    user: str
    port: int
    block: int
    soc: str
    inventory: str  # DIR/inventory.yaml
    source_inventory: str  # the inventory it was made from (generated: DIR/source-inventory.yaml)
    nodes: dict[str, SimNode]
    state: str = "up"  # "down" once `sim down` ran
    generation: int = 0  # bumped on every change the embedded daemon must pick up

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        tmp = self.dir / ".sim.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.dir / "sim.json")

    @classmethod
    def load(cls, root: Path) -> Sim:
        try:
            data = json.loads((Path(root) / "sim.json").read_text())
        except FileNotFoundError:
            raise SimUsageError(f"no simulator in {root} (no sim.json); "
                                "start one with `deploy sim up`") from None
        data["dir"] = Path(data["dir"])
        data["nodes"] = {name: SimNode(**n) for name, n in data["nodes"].items()}
        return cls(**data)


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing)."""
    try:  # read-only: the file may be another user's (flock works on any open file)
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
