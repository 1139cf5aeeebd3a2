"""Per-node runtime knobs: DIR/nodes/<n>/runtime/config.json (stdlib; the fake vllm reads it).

    {"startup_s": 2.0, "time_factor": 1.0, "faults": ["slow-start:5", ...]}

startup_s: how long `vllm serve` loads before it turns ready; time_factor scales vLLM's time
limits (the 5-minute handshake, VLLM_ENGINE_READY_TIMEOUT_S) so a test can hit them in seconds;
faults: the node's runtime faults (faults.FAULTS, kind runtime), read at start-up and polled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

try:
    from .occupancy import node_lock
except ImportError:  # as DIR/runtime/knobs.py
    from occupancy import node_lock  # type: ignore[no-redef]

DEFAULTS = {"startup_s": 2.0, "time_factor": 1.0, "faults": []}


def read(runtime_dir: str | os.PathLike) -> dict:
    try:
        data = json.loads((Path(runtime_dir) / "config.json").read_text())
    except (OSError, ValueError):
        data = {}
    return {**DEFAULTS, **data}


def write(runtime_dir: str | os.PathLike, config: dict) -> None:
    d = Path(runtime_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".config.json.{os.getpid()}"
    tmp.write_text(json.dumps({**DEFAULTS, **config}, indent=1) + "\n")
    os.chmod(tmp, 0o666)
    os.replace(tmp, d / "config.json")


def _edit(runtime_dir, fn) -> None:  # type: ignore[no-untyped-def]
    with node_lock(Path(runtime_dir).parent):
        config = read(runtime_dir)
        fn(config)
        write(runtime_dir, config)


def add_fault(runtime_dir: str | os.PathLike, spec: str) -> None:
    """Add a runtime fault; one per name (a new `slow-start:S` replaces the old one)."""
    name = spec.partition(":")[0]
    _edit(runtime_dir, lambda c: c.__setitem__(
        "faults", [f for f in c["faults"] if f.partition(":")[0] != name] + [spec]))


def clear_faults(runtime_dir: str | os.PathLike) -> None:
    _edit(runtime_dir, lambda c: c.__setitem__("faults", []))
