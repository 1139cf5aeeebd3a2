"""Where a command's run leaves its logs, so every command files them the same way.

`$DEPLOY_STATE_DIR` (default `~/.local/state/deploy`)`/<inventory name>/runs/<UTC time>-<command>/`

The state folder is local and may be full or read-only: that never loses what happened on the
nodes. `run_dir` raises `StateError` naming the folder; commands then run without logs, print
everything, and say so (exit 1 at least). Old runs are pruned (keep the last `DEPLOY_KEEP_RUNS`,
default 50, per inventory) so the folder cannot grow without bound.
"""
from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

KEEP_RUNS = 50
_RUN = re.compile(r"^\d{8}T\d{6}Z-")


class StateError(OSError):
    """The local state folder cannot be written; `folder` is the one named to the user."""

    def __init__(self, folder: Path, err: OSError | str):
        why = err if isinstance(err, str) else (err.strerror or str(err))
        super().__init__(f"cannot write the state folder {folder}: {why}")
        self.folder = folder


def state_dir() -> Path:
    return Path(os.environ.get("DEPLOY_STATE_DIR") or "~/.local/state/deploy").expanduser()


def keep_runs() -> int:
    try:
        return max(1, int(os.environ.get("DEPLOY_KEEP_RUNS", KEEP_RUNS)))
    except ValueError:
        return KEEP_RUNS


def inside(folder: Path, name: str, suffix: str = "") -> Path:
    """`folder/name+suffix`, refusing any name that would leave the folder (`..`, `/`, NUL)."""
    if not name or "/" in name or "\0" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"not a plain file name: {name!r:.60}")
    path = folder / f"{name}{suffix}"
    if path.parent != folder or os.path.commonpath(
            [os.path.abspath(folder), os.path.abspath(path)]) != os.path.abspath(folder):
        raise ValueError(f"{name!r:.60} leaves {folder}")
    return path


def run_dir(inventory, command: str, now: datetime | None = None) -> Path:
    """Create and return a fresh run folder; runs started in the same second get -2, -3 …

    `inventory` is an `Inventory` or its name. Raises StateError if the folder cannot be made.
    """
    inventory_name = inventory if isinstance(inventory, str) else inventory.name
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = state_dir()
    runs = inside(inside(base, inventory_name), "runs")
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        for private in (base, runs.parent, runs):  # logs, ledger and plans may hold secrets: not world-readable
            os.chmod(private, 0o700)
        prune(runs, keep_runs() - 1)
        for n in range(1, 1000):
            path = runs / (f"{stamp}-{command}" if n == 1 else f"{stamp}-{command}-{n}")
            try:
                path.mkdir(mode=0o700)
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise StateError(runs, e) from None
    raise StateError(runs, "1000 runs started in the same second")


def write_private(path: Path, text: str) -> None:
    """Write a file of the state folder 0600, scrubbed of every registered secret value
    (orchestrator/redact.py): diagnostics bundles hold log tails a node sent back."""
    from .redact import scrub

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(scrub(text))


def prune(runs: Path, keep: int) -> None:
    """Remove all but the newest `keep` run folders (names sort by time)."""
    try:
        names = sorted(p.name for p in runs.iterdir() if _RUN.match(p.name) and p.is_dir())
    except OSError:
        return
    for name in names[:max(0, len(names) - keep)]:
        shutil.rmtree(runs / name, ignore_errors=True)
