"""Every node-side name and path of a deployment, in one place.

`up`, `status`, `teardown`, `plan --script` and the simulator's runtime all use these, so a
file written by one is found by the others. Nothing here does I/O.

Host paths are written on the node relative to `${DEPLOY_NODE_ROOT-}`: empty on a real node
(so `/var/tmp/deploy/<name>` is exactly that), and the simulated node's own root folder under
`deploy sim` (every simulated node shares this machine's real `/var/tmp`). Inside the container
the state folder is mounted at the same path, without any prefix.
"""
from __future__ import annotations

import re

NODE_ROOT_VAR = "DEPLOY_NODE_ROOT"
STATE_BASE = "/var/tmp/deploy"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _safe(*parts: str) -> None:
    """Names become file names on the node: refuse anything that is not a plain name."""
    for part in parts:
        if not _SAFE.match(part) or ".." in part:
            raise ValueError(f"not a plain name for a node-side path: {part!r}")


def container_name(inventory) -> str:
    """`container.name`, else `vllm-<name>`."""
    return inventory.container.name or f"vllm-{inventory.name}"


def remote_dir(inventory) -> str:
    """The deployment's state folder on every node (scripts, logs, PIDs, rank table).

    Mounted into the container at the same path."""
    _safe(inventory.name)
    return f"{STATE_BASE}/{inventory.name}"


def host_path(path: str) -> str:
    """A host path as node-side sh text: `"${DEPLOY_NODE_ROOT-}"'/var/tmp/...'` (quoted)."""
    import shlex

    return f'"${{{NODE_ROOT_VAR}-}}"{shlex.quote(path)}'


def rank_table_path(inventory) -> str:
    return f"{remote_dir(inventory)}/ranktable.json"


def rank_key(rank) -> str:
    """`<group>-<node>-<local rank>`: unique per `vllm serve` process of a plan."""
    _safe(rank.group, rank.node)
    return f"{rank.group}-{rank.node}-{rank.local_rank}"


def rank_script(inventory, rank) -> str:
    return f"{remote_dir(inventory)}/rank-{rank_key(rank)}.sh"


def rank_log(inventory, rank) -> str:
    return f"{remote_dir(inventory)}/rank-{rank_key(rank)}.log"


def rank_pid(inventory, rank) -> str:
    return f"{remote_dir(inventory)}/rank-{rank_key(rank)}.pid"


def proxy_script(inventory) -> str:
    return f"{remote_dir(inventory)}/proxy.sh"


def proxy_log(inventory) -> str:
    return f"{remote_dir(inventory)}/proxy.log"


def proxy_pid(inventory) -> str:
    return f"{remote_dir(inventory)}/proxy.pid"


def env_file(inventory) -> str:
    """0600 file of the secret container.env values, read by `docker run --env-file` (never
    on a command line)."""
    return f"{remote_dir(inventory)}/secret.env"


def sitecustomize_file(inventory) -> str:
    """The socket-env guard's sitecustomize.py as uploaded (copied into site-packages from here)."""
    return f"{remote_dir(inventory)}/sitecustomize.py"


def script_name(rank) -> str:
    """The file name (no folder) of a rank's launch script."""
    return f"rank-{rank_key(rank)}.sh"


def rank_env_file(inventory, rank) -> str:
    """The rank's 0600 file of secret environment values, sourced by its launch script."""
    return f"{remote_dir(inventory)}/rank-{rank_key(rank)}.env"


def proxy_env_file(inventory) -> str:
    """The proxy's 0600 env file (the API key it sends to the backends)."""
    return f"{remote_dir(inventory)}/proxy.env"
