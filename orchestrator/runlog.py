"""Where a command's run leaves its logs, so every command files them the same way.

`$DEPLOY_STATE_DIR` (default `~/.local/state/deploy`)`/<inventory name>/runs/<UTC time>-<command>/`
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("DEPLOY_STATE_DIR") or "~/.local/state/deploy").expanduser()


def run_dir(inventory, command: str, now: datetime | None = None) -> Path:
    """Create and return a fresh run folder; runs started in the same second get -2, -3 …

    `inventory` is an `Inventory` or its name.
    """
    inventory_name = inventory if isinstance(inventory, str) else inventory.name
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    runs = state_dir() / inventory_name / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = runs / (f"{stamp}-{command}" if n == 1 else f"{stamp}-{command}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder under {runs}")
