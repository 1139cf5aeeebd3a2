"""Storage of a simulated node's hardware truth and its rendered tool files.

The truth for simulated node X is ``DIR/nodes/X/state.json`` (a :class:`NodeState`).
:func:`save_state` writes it atomically and renders everything the fake tools in
``DIR/bin`` read, so the tools (POSIX sh under dash, and the compiled fast path
``fastpath.c`` when a C compiler is available, see :func:`install_tools`) never parse JSON:

    DIR/nodes/X/state.json           the node's truth (one device per line, see _dump_json)
    DIR/nodes/X/etc/hccn.conf        the node's /etc/hccn.conf (may drift from live state)
    DIR/nodes/X/render/dev<N>.sh     hccn_tool: shell variables with pre-rendered outputs
    DIR/nodes/X/render/dev<N>.fp     the same for the compiled fast path (records, see _fp_text)
    DIR/nodes/X/render/up<N>         exists iff device N's RoCE link is UP (read by peers' pings)
    DIR/nodes/X/render/vup<N>        exists iff device N's vNIC link is UP (A3, hccs_ping)
    DIR/nodes/X/render/noping/<peer> ping-loss fault with node <peer>
    DIR/nodes/X/render/busy          busy counter ("" = 0); hccn_tool decrements it
    DIR/nodes/X/pings/dev<N>.lock    flock'ed by a ping in flight on device N (busy to a second)
    DIR/nodes/X/pings/log            every answered ping: "<dev> <-ping|-hccs_ping> <addr> <rc>"
    DIR/nodes/X/render/smi/<key>.sh  npu-smi: pre-rendered outputs per query
    DIR/nodes/X/render/smi/all.fp    all of them, for the compiled fast path
    DIR/nodes/X/render/index         the index entries this node owns (below)
    DIR/addr/<roce ip>/<node>@<dev>          who answers RoCE pings to that IP
    DIR/vnic/<pod>/<vnic ip>/<node>@<dev>    who answers hccs_ping to that vNIC IP

The tools write back in two rare cases, always under the node lock (``DIR/nodes/X/.lock``,
a directory; see :func:`node_lock`): ``hccn_tool -tls -s enable V`` and the busy
counter.  They edit ``state.json`` in place with ``sed``, which is why the JSON is
written with one top-level key and one device per line.  Both are done by the sh script
(the fast path hands them over), which also patches ``dev<N>.fp`` for ``-tls -s``.

All output formats follow ``ascend-tools.md`` (Huawei HDK 25.2.0 era); see
``docs/simulator-tools.md``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import tempfile
from pathlib import Path

from .hardware import HEALTH_STATUSES, NET_HEALTH_STATUSES, DeviceState, NodeState, Process, build_states
from .render import render_hccn_conf, render_node
from .runtime.occupancy import node_lock
from .tools import install_tools

__all__ = [
    "DeviceState",
    "NodeState",
    "Process",
    "NET_HEALTH_STATUSES",
    "HEALTH_STATUSES",
    "build_states",
    "load_state",
    "save_state",
    "write_cluster",
    "install_tools",
    "node_lock",
    "node_dir",
    "render_node",
    "render_hccn_conf",
]


DIR_MODE = 0o777  # the sim user may differ from the creator: tools write in these dirs
RW_MODE = 0o666  # files the tools rewrite (state.json, hccn.conf, dev<N>.sh, busy)
RO_MODE = 0o644


# ---------------------------------------------------------------------------------------
# file helpers


def node_dir(root: str | os.PathLike[str], node: str) -> Path:
    return Path(root) / "nodes" / node


def _write(path: Path, text: str, mode: int = RO_MODE) -> None:
    """Atomic write (temp file + rename) with an explicit mode (umask-independent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mkdir(path: Path, mode: int = DIR_MODE) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(path, mode)



def _dump_json(state: NodeState) -> str:
    """JSON with one top-level key per line and one device per line.

    The tools patch it with sed: ``^"busy": N`` and ``^{"id": N, ... "tls_switch": V``.
    """
    data = state.model_dump(mode="json")
    devices = data.pop("devices")
    lines = ["{"]
    for key, value in data.items():
        lines.append(f"{json.dumps(key)}: {json.dumps(value)},")
    lines.append('"devices": [')
    for i, dev in enumerate(devices):
        lines.append(json.dumps(dev) + ("," if i < len(devices) - 1 else ""))
    lines.append("]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def load_state(node_dir: str | os.PathLike[str]) -> NodeState:
    """Read ``node_dir/state.json`` (including what the tools wrote back)."""
    path = Path(node_dir) / "state.json"
    return NodeState.model_validate_json(path.read_text(encoding="utf-8"))




def _index_entries(state: NodeState) -> list[str]:
    """Paths (relative to DIR) of the index entries this node owns."""
    entries: list[str] = []
    for d in state.devices:
        if d.ip:
            _check_ip(d.ip)
            entries.append(f"addr/{d.ip}/{state.name}@{d.id}")
        if state.soc == "a3" and d.vnic_ip:
            _check_ip(d.vnic_ip)
            entries.append(f"vnic/{state.super_pod_id or 0}/{d.vnic_ip}/{state.name}@{d.id}")
    return entries


def _check_ip(ip: str) -> None:
    ipaddress.IPv4Address(ip)  # raises ValueError; also keeps index paths safe


def _check_node_name(name: str) -> None:
    if not name or "/" in name or "@" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"invalid simulated node name {name!r}")


def _sync_tree(base: Path, files: dict[str, str], keep: set[str]) -> None:
    """Make ``base`` hold exactly ``files`` (plus names in ``keep``); writes are atomic."""
    _mkdir(base)
    for rel, text in files.items():
        path = base / rel
        if path.parent != base:
            _mkdir(path.parent)
        mode = RW_MODE if rel.startswith("dev") else RO_MODE
        if path.exists() and path.stat().st_size == len(text.encode()) and path.read_text() == text:
            continue
        _write(path, text, mode)
    wanted = set(files) | keep
    for dirpath, _dirnames, filenames in os.walk(base):
        for fn in filenames:
            rel = os.path.relpath(os.path.join(dirpath, fn), base)
            if rel not in wanted and not fn.startswith("."):  # dot files: in-flight writes
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, fn))


def _update_index(root: Path, ndir: Path, state: NodeState) -> None:
    record = ndir / "render" / "index"
    old: list[str] = []
    if record.exists():
        old = [ln for ln in record.read_text().splitlines() if ln]
    new = _index_entries(state)
    for rel in set(old) - set(new):
        path = root / rel
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only if empty
    for rel in new:
        path = root / rel
        if not path.exists():
            _mkdir(path.parent, 0o755)
            path.touch()
    _write(record, "\n".join(new) + "\n" if new else "", RO_MODE)


def save_state(node_dir: str | os.PathLike[str], state: NodeState) -> None:
    """Write ``state.json`` atomically, re-render ``etc/hccn.conf`` and ``render/``.

    If ``node_dir`` is ``DIR/nodes/<name>``, the shared ping index under ``DIR`` is
    updated for this node too.  Callers that read-modify-write should hold
    :func:`node_lock`.
    """
    ndir = Path(node_dir)
    _check_node_name(state.name)
    if ndir.parent.name == "nodes" and ndir.name != state.name:
        raise ValueError(f"state of node {state.name!r} saved into {ndir}")
    _mkdir(ndir)
    _mkdir(ndir / "etc")
    _write(ndir / "state.json", _dump_json(state), RW_MODE)
    conf = ndir / "etc" / "hccn.conf"
    if conf.is_dir():  # a container started while it was missing: docker made a folder there
        shutil.rmtree(conf)
    if state.hccn_conf:
        _write(conf, render_hccn_conf(state), RW_MODE)
    else:
        conf.unlink(missing_ok=True)
    pings = ndir / "pings"
    _mkdir(pings)
    for name in [f"dev{d.id}.lock" for d in state.devices] + ["log"]:  # kept: the log grows
        if not (pings / name).exists():
            (pings / name).touch()
            os.chmod(pings / name, RW_MODE)
    render = ndir / "render"
    _sync_tree(render, render_node(state), keep={"busy", "index"})
    _write(render / "busy", f"{state.busy}\n" if state.busy > 0 else "", RW_MODE)
    if ndir.parent.name == "nodes":
        _update_index(ndir.parent.parent, ndir, state)



def write_cluster(root: str | os.PathLike[str], states: dict[str, NodeState]) -> None:
    """Create ``DIR/nodes/<node>/`` for every node, the ping index and ``DIR/bin``.

    Rebuilds the index from scratch (``DIR/addr``, ``DIR/vnic``); other files in DIR
    (sim.json, keys/, sshd files in node dirs) are left alone.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(root, os.stat(root).st_mode | 0o755)  # the sim user must traverse DIR
    for name in states:
        _check_node_name(name)
    for sub in ("addr", "vnic"):
        shutil.rmtree(root / sub, ignore_errors=True)
        _mkdir(root / sub, 0o755)
    _mkdir(root / "nodes", 0o755)
    for name, state in states.items():
        if state.name != name:
            raise ValueError(f"state for {name!r} is named {state.name!r}")
        ndir = root / "nodes" / name
        with contextlib.suppress(FileNotFoundError):
            (ndir / "render" / "index").unlink()
        save_state(ndir, state)
    install_tools(root)
