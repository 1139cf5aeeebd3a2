"""Every path of a sim directory (DIR) and the environment a simulated node's commands see.

The one place that names DIR's files (docs/simulator.md, "Layout"); everything else asks here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import SimUsageError

DEFAULT_PORT = 2222
SIM_USER = "deploy-sim"  # the account nodes log in as when `sim up` runs as root
SIM_HOME = "/var/lib/deploy-sim"
BLOCK_DIR = Path("/tmp/deploy-sim-blocks")
BLOCKS = range(16, 250)
_SAFE_DIR = re.compile(r"^/[A-Za-z0-9_./+@-]*$")


def default_dir() -> Path:
    return Path(f"/tmp/deploy-sim-{os.getuid()}")


def check_dir(root: str | Path) -> Path:
    root = Path(os.path.realpath(root))
    if not _SAFE_DIR.match(str(root)):
        raise SimUsageError(f"--dir {root}: use only letters, digits and / . _ - + @ "
                            "(the path goes into sshd configs and environment values)")
    return root


def node_dir(root: str | Path, node: str) -> Path:
    """DIR/nodes/<node>: the node's hardware truth (state.json, render/, etc/hccn.conf)."""
    return Path(root) / "nodes" / node


def node_root(root: str | Path, node: str) -> Path:
    """DIR/nodes/<node>/root: the node's host view (DEPLOY_NODE_ROOT), hostview.py."""
    return node_dir(root, node) / "root"


def node_runtime(root: str | Path, node: str) -> Path:
    """DIR/nodes/<node>/runtime: config.json (knobs, runtime faults), hbm/ (occupancy)."""
    return node_dir(root, node) / "runtime"


def containers_dir(root: str | Path, node: str) -> Path:
    """DIR/nodes/<node>/containers/<name>/{config.json, rootfs/}: the fake docker's containers."""
    return node_dir(root, node) / "containers"


def docker_dir(root: str | Path, node: str) -> Path:
    """DIR/nodes/<node>/docker: the fake docker's image store (images.json)."""
    return node_dir(root, node) / "docker"


def runtime_dir(root: str | Path) -> Path:
    """DIR/runtime: copies of sim/runtime/*.py run on the nodes with /usr/bin/python3."""
    return Path(root) / "runtime"


def bin_dir(root: str | Path) -> Path:
    """DIR/bin: the fake tools (hccn_tool, npu-smi, docker), first on every node's PATH."""
    return Path(root) / "bin"


# Per-node SSH files, shared by both servers (DIR/nodes/<node>/sshd/).
def sshd_dir(root: Path, node: str) -> Path:
    return Path(root) / "nodes" / node / "sshd"


def host_key_path(root: Path, node: str) -> Path:
    return sshd_dir(root, node) / "host_ed25519_key"


def authorized_keys_path(root: Path, node: str) -> Path:
    return sshd_dir(root, node) / "authorized_keys"


def client_key_path(root: Path) -> Path:
    return Path(root) / "keys" / "id_ed25519"


def known_hosts_path(root: Path) -> Path:
    return Path(root) / "keys" / "known_hosts"


def node_env(root: Path, node: str) -> dict[str, str]:
    """The environment every command on `node` sees (docs/simulator.md, "Who runs the commands")."""
    ndir = f"{root}/nodes/{node}"
    return {
        "PATH": f"{root}/bin:/usr/local/bin:/usr/bin:/bin",
        "DEPLOY_SIM_NODE": ndir,
        "DEPLOY_SIM_ROOT": str(root),
        "DEPLOY_NODE_ROOT": f"{ndir}/root",
        "HCCN_CONF": f"{ndir}/etc/hccn.conf",
        "ASCEND_TOOLKIT_HOME": f"{ndir}/render/toolkit",
    }
