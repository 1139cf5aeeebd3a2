"""Loopback blocks: each sim owns one 127.B.0.0/16, claimed in /tmp/deploy-sim-blocks."""
from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

from .errors import SimError
from .layout import BLOCK_DIR, BLOCKS
from .manifest import flock
from .processes import alive, listening


def claim_block(root: Path) -> int:
    """A /16 of 127/8 that no other sim holds and where nothing listens; recorded in
    BLOCK_DIR/127.B (dir, claiming pid) until `down`."""
    BLOCK_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(BLOCK_DIR, 0o1777)
    with flock(BLOCK_DIR / ".lock"):
        used = {int(a.split(".")[1]) for a, _ in listening() if a.startswith("127.")}
        blocks = list(BLOCKS)
        start = random.randrange(len(blocks))
        for b in blocks[start:] + blocks[:start]:
            claim = BLOCK_DIR / f"127.{b}"
            if b in used or (claim.exists() and _claim_held(claim, b, root)):
                continue
            try:
                claim.write_text(json.dumps({"dir": str(root), "pid": os.getpid()}) + "\n")
            except PermissionError:  # a stale claim of another user's
                continue
            return b
    raise SimError(f"no free loopback block: every 127.B/16 for B in {BLOCKS.start}..{BLOCKS.stop - 1} "
                   f"is claimed in {BLOCK_DIR} or has a listener")


def _claim_held(claim: Path, block: int, root: Path) -> bool:
    try:
        data = json.loads(claim.read_text())
    except (OSError, ValueError):
        return False
    if data.get("dir") == str(root):
        return False  # ours from an earlier run
    if alive(data.get("pid", 0)):
        return True  # a `sim up` in progress
    try:
        other = json.loads((Path(data["dir"]) / "sim.json").read_text())
    except (OSError, ValueError, KeyError):
        return False
    return other.get("block") == block and other.get("state") == "up"


def release_block(root: Path) -> None:
    for claim in BLOCK_DIR.glob("127.*"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(claim.read_text()).get("dir") == str(root):
                claim.unlink()


def node_addr(block: int, index: int) -> str:
    return f"127.{block}.{index // 254}.{index % 254 + 1}"
