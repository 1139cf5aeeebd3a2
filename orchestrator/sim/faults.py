"""The one registry of simulator faults (``deploy sim fault``) and the tool faults' effects.

Every fault has a kind:

- ``tool``: changes the node's hardware truth (state.json), so hccn_tool / npu-smi report it;
  applied here by :func:`apply_fault`.
- ``ssh``: changes the node's SSH server (lifecycle.py applies these).
- ``runtime``: changes how the simulated vLLM-Ascend runtime behaves on the node (the ``faults``
  list in DIR/nodes/<n>/runtime/config.json, read by the fake vllm; runtime/knobs.py).

A spec is ``name`` or ``name:arg`` (:func:`parse_fault_spec`). docs/simulator*.md say what each
fault changes; ``deploy sim fault --help`` lists them all from :data:`FAULTS`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .state import (
    HEALTH_STATUSES,
    NET_HEALTH_STATUSES,
    DeviceState,
    NodeState,
    Process,
    load_state,
    node_lock,
    save_state,
)

__all__ = ["FAULTS", "TOOL_FAULTS", "SSH_FAULTS", "RUNTIME_FAULTS", "parse_fault_spec", "apply_fault"]


@dataclass(frozen=True)
class Fault:
    kind: Literal["tool", "ssh", "runtime"]
    arg: Literal["none", "required", "optional"]
    help: str


def _f(kind, arg, help_):  # type: ignore[no-untyped-def]
    return Fault(kind, arg, help_)


#: name -> Fault, in the order `deploy sim fault --help` lists them.
FAULTS: dict[str, Fault] = {
    "link-down": _f("tool", "none", "RoCE link DOWN (net health becomes Fault); pings to/from the device fail"),
    "net-health": _f("tool", "required", "net-health:<status>: -net_health -g reports <status> (e.g. Unreachable, Init)"),
    "tls-on": _f("tool", "none", "TLS switch 1 (state, -tls -g and hccn.conf tls_enable_N)"),
    "no-ip": _f("tool", "none", "no live RoCE IP: -ip -g rc 13, pings to it fail; hccn.conf keeps address_N"),
    "hccn-conf-drift": _f("tool", "none", "hccn.conf address_N differs from the live IP (-ip -g)"),
    "no-hccn-conf": _f("tool", "none", "the node has no /etc/hccn.conf: check-network fails hccn_conf; a container "
                       "started anyway gets an empty folder there (docker creates missing bind sources), so HCCL "
                       "finds no device IPs ('device ip' is not set correctly)"),
    "ping-loss": _f("tool", "required", "ping-loss:<peer>: RoCE and HCCS pings between the node and <peer> fail both ways"),
    "dup-ip": _f("tool", "required", "dup-ip:<peer>: device gets the RoCE IP of <peer>'s same-index device"),
    "busy": _f("tool", "optional", "busy[:n]: the next n (default 3) hccn_tool calls on the node answer busy (rc 11)"),
    "health": _f("tool", "required", "health:<Warning|Alarm|Critical|UNKNOWN|OK>: npu-smi Health of the device"),
    "driver": _f("tool", "required", "driver:<version>: the node's driver (npu-smi Version / Software Version) differs"),
    "firmware": _f("tool", "required", "firmware:<version>: the node's NPU firmware (npu-smi board info) differs"),
    "cann": _f("tool", "required", "cann:<version>: the node's host CANN toolkit version differs"),
    "hbm-held": _f("tool", "none", "a VLLM::EngineCore process holds 60000 MB HBM on the device (npu-smi info)"),
    "no-netdetect": _f("tool", "none", "netdetect unset: -netdetect -g rc 1, net health Detect ip set"),
    "no-gateway": _f("tool", "none", "gateway unset: -gateway -g rc 2"),
    "no-lldp": _f("tool", "none", "no LLDP neighbour: -lldp -g prints nothing"),
    "no-optical": _f("tool", "none", "optical module absent; link DOWN"),
    "no-cert": _f("tool", "none", "no TLS certificates: -tls -g rc 14"),
    "vnic-down": _f("tool", "none", "A3: vNIC link DOWN; hccs_ping to/from the device fails"),
    "unreachable": _f("ssh", "none", "the node's SSH server is stopped and its open connections dropped (connection refused)"),
    "auth-fail": _f("ssh", "none", "the node no longer accepts the simulator's client key (permission denied)"),
    "host-key-changed": _f("ssh", "none", "the node gets a new host key; DIR/keys/known_hosts keeps the old one"),
    "clear-ssh": _f("ssh", "none", "undo the node's SSH faults (original keys, server running)"),
    "crash-at-start": _f("runtime", "none", "vllm serve on the node exits 1 during start-up, before binding its port"),
    "crash-after": _f("runtime", "required", "crash-after:<s>: vllm serve exits <s> seconds after it started"),
    "never-ready": _f("runtime", "none", "vllm serve loads forever: its port never accepts, /health never answers"),
    "master-unreachable": _f("runtime", "none", "the DP group master (front end) this node hosts cannot be reached from the "
                             "group's other nodes (a firewall on its RPC/master port): their engines wait for it, it "
                             "waits for them"),
    "slow-start": _f("runtime", "required", "slow-start:<s>: vllm serve's start-up takes <s> seconds more"),
    "engine-death": _f("runtime", "none", "vllm serve's engine dies after ready: /health 503, requests fail"),
    "clear-runtime": _f("runtime", "none", "undo the node's runtime faults (running processes are kept)"),
    "clear": _f("tool", "none", "undo every fault of the node (hardware truth as at `sim up`, peers' ping-loss to it, "
                "SSH as clear-ssh, runtime as clear-runtime); running processes and their HBM are kept"),
}
_CLEARS = {"clear", "clear-ssh", "clear-runtime"}
_SPECS: dict[str, tuple[str, str]] = {n: (f.arg, f.help) for n, f in FAULTS.items()
                                      if f.kind == "tool" and n not in _CLEARS}

#: Tool-level fault names and a one-line description of each.
TOOL_FAULTS: dict[str, str] = {name: help_ for name, (_arg, help_) in _SPECS.items()}
SSH_FAULTS: frozenset[str] = frozenset(n for n, f in FAULTS.items() if f.kind == "ssh" and n not in _CLEARS)
RUNTIME_FAULTS: frozenset[str] = frozenset(n for n, f in FAULTS.items() if f.kind == "runtime" and n not in _CLEARS)


def kind_of(name: str) -> str:
    """``tool`` / ``ssh`` / ``runtime`` of a fault name (a spec's part before ``:``)."""
    return FAULTS[name.partition(":")[0].strip()].kind


def help_listing() -> str:
    """Every fault with its kind and one-line meaning (for --help and usage errors)."""
    return "\n".join(f"  {n:17} {f.kind:8} {f.help}" for n, f in FAULTS.items())


_NODE_LEVEL = {"ping-loss", "busy", "driver", "firmware", "cann", "no-hccn-conf"}
_VERSION_FIELDS = {"driver": ("driver_version", "npu_smi_version"), "firmware": ("firmware_version",),
                   "cann": ("cann_version",)}
HBM_HELD_MB = 60000


def parse_fault_spec(text: str) -> tuple[str, str | None]:
    """``"busy:5"`` -> ``("busy", "5")``; ``"link-down"`` -> ``("link-down", None)``.

    Raises ``ValueError`` for an unknown name or a missing/unexpected argument.
    SSH faults are accepted (``("unreachable", None)``) so the CLI can dispatch them.
    """
    text = text.strip()
    name, sep, arg = text.partition(":")
    name = name.strip()
    arg_value: str | None = arg.strip() if sep else None
    if name not in FAULTS:
        known = ", ".join(sorted(FAULTS))
        raise ValueError(f"unknown fault {name!r}; known faults: {known}")
    kind = FAULTS[name].arg
    if kind == "none" and arg_value:
        raise ValueError(f"fault {name!r} takes no argument (got {arg_value!r})")
    if kind == "required" and not arg_value:
        raise ValueError(f"fault {name!r} needs an argument: {FAULTS[name].help}")
    if name in ("crash-after", "slow-start"):
        try:
            if not 0 <= float(str(arg_value)) <= 86400:
                raise ValueError
        except ValueError:
            raise ValueError(f"{name}:<s> needs seconds (0..86400), got {arg_value!r}") from None
    if kind == "none" and arg_value is not None:
        raise ValueError(f"fault {name!r} takes no argument (got {arg_value!r})")
    if name == "busy" and arg_value is not None:
        if not arg_value.isdigit() or int(arg_value) < 1:
            raise ValueError(f"busy:<n> needs a positive integer, got {arg_value!r}")
    if name == "net-health":
        arg_value = _canonical(arg_value, NET_HEALTH_STATUSES, "net health status")
    if name == "health":
        arg_value = _canonical(arg_value, HEALTH_STATUSES, "health status")
    return name, arg_value


def _canonical(value: str | None, allowed: tuple[str, ...], what: str) -> str:
    assert value is not None
    for a in allowed:
        if a.lower() == value.lower():
            return a
    raise ValueError(f"unknown {what} {value!r}; expected one of: {', '.join(allowed)}")


def _node_dir(root: Path, node: str) -> Path:
    ndir = root / "nodes" / node
    if "/" in node or node in ("", ".", "..") or not (ndir / "state.json").is_file():
        raise ValueError(f"no simulated node {node!r} under {root}")
    return ndir


def _targets(state: NodeState, device: int | None) -> list[DeviceState]:
    if device is None:
        return list(state.devices)
    ids = [d.id for d in state.devices]
    if device not in ids:
        raise ValueError(
            f"device {device} out of range for node {state.name!r} ({state.soc}: devices 0..{max(ids)})"
        )
    return [state.device(device)]


def _drift_address(ip: str) -> str:
    a, b, _c, d = ip.split(".")
    alt = f"{a}.{b}.254.{d}"
    if alt == ip:
        alt = f"{a}.{b}.253.{d}"
    ipaddress.IPv4Address(alt)
    return alt


def apply_fault(
    root: str | os.PathLike[str],
    node: str,
    fault: str,
    device: int | None = None,
) -> list[str]:
    """Apply the tool fault ``fault`` (a spec, e.g. ``"net-health:Unreachable"``) to ``node``.

    ``device`` is the hccn device (phy) id; ``None`` means every device of the node
    (device-level faults).  Node-level faults (``busy``, ``ping-loss``) take no device.
    Loads the node state, changes it, saves it (re-rendering the tools' files) and,
    for ``ping-loss``, also the peer's.  Returns the names of the nodes changed.
    Raises ``ValueError`` for an unknown fault, an SSH fault, a bad argument, an unknown
    node or peer, or a device out of range.
    """
    root = Path(root)
    name, arg = parse_fault_spec(fault)
    if name in SSH_FAULTS or name in _CLEARS or FAULTS[name].kind != "tool":
        raise ValueError(f"fault {name!r} is an {FAULTS[name].kind.upper()}-level fault, not a tool fault"
                         if name not in _CLEARS else f"fault {name!r} is handled by the simulator's lifecycle")
    if name in _NODE_LEVEL and device is not None:
        raise ValueError(f"fault {name!r} applies to the whole node; do not give a device")
    if device is not None and (not isinstance(device, int) or isinstance(device, bool)):
        raise ValueError(f"device must be an integer, got {device!r}")
    ndir = _node_dir(root, node)
    label = fault.strip() if device is None else f"{fault.strip()}@{device}"

    if name == "ping-loss":
        assert arg is not None
        if arg == node:
            raise ValueError("ping-loss needs another node as peer")
        pdir = _node_dir(root, arg)
        for other, d in ((arg, ndir), (node, pdir)):
            with node_lock(d):
                st = load_state(d)
                if other not in st.ping_loss:
                    st.ping_loss.append(other)
                st.faults.append(f"ping-loss:{other}")
                save_state(d, st)
        return [node, arg]

    peer_state: NodeState | None = None
    if name == "dup-ip":
        assert arg is not None
        if arg == node:
            raise ValueError("dup-ip needs another node as peer")
        peer_state = load_state(_node_dir(root, arg))

    with node_lock(ndir):
        st = load_state(ndir)
        if name == "busy":
            st.busy = int(arg) if arg else 3
        elif name == "no-hccn-conf":
            st.hccn_conf = False
        elif name in _VERSION_FIELDS:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", str(arg)):
                raise ValueError(f"{name} version must be letters, digits, '.', '_' or '-' (got {arg!r})")
            for attr in _VERSION_FIELDS[name]:
                setattr(st, attr, str(arg))
        else:
            targets = _targets(st, device)
            if name == "vnic-down" and st.soc != "a3":
                raise ValueError(f"vnic-down needs an A3 node; {node!r} is {st.soc}")
            for dev in targets:
                _apply_device(st, dev, name, arg, peer_state)
        st.faults.append(label)
        save_state(ndir, st)
    return [node]


def _apply_device(st: NodeState, d: DeviceState, name: str, arg: str | None, peer: NodeState | None) -> None:
    if name == "link-down":
        d.link = "DOWN"
        if d.net_health == "Success":
            d.net_health = "Fault"  # as observed after `-link -s down` (MindCluster docs)
    elif name == "net-health":
        assert arg is not None
        d.net_health = arg
    elif name == "tls-on":
        d.tls_switch = 1
    elif name == "no-ip":
        if d.conf_address is None:
            d.conf_address = d.ip  # hccn.conf still holds the configured address
        d.ip = None
        d.netmask = None
    elif name == "hccn-conf-drift":
        base = d.ip or d.conf_address or f"10.{d.id}.0.11"
        d.conf_address = _drift_address(base)
    elif name == "dup-ip":
        assert peer is not None
        try:
            pd = peer.device(d.id)
        except KeyError:
            raise ValueError(f"peer {peer.name!r} has no device {d.id}") from None
        if pd.ip is None:
            raise ValueError(f"peer {peer.name!r} device {d.id} has no RoCE IP to duplicate")
        d.ip = pd.ip
        d.netmask = pd.netmask
        d.conf_address = None
    elif name == "health":
        assert arg is not None
        d.health = arg
    elif name == "hbm-held":
        if not any(p.name == "VLLM::EngineCore" for p in d.processes):
            pid = 200000 + st.index * 100 + d.id
            d.processes.append(Process(pid=pid, name="VLLM::EngineCore", memory_mb=HBM_HELD_MB))
            d.hbm_used_mb = min(d.hbm_total_mb, d.hbm_used_mb + HBM_HELD_MB)
    elif name == "no-netdetect":
        d.netdetect = None
        d.net_health = "Detect ip set"
    elif name == "no-gateway":
        d.gateway = None
    elif name == "no-lldp":
        d.lldp_ifname = None
    elif name == "no-optical":
        d.optical_present = False
        d.link = "DOWN"
        if d.net_health == "Success":
            d.net_health = "Fault"
    elif name == "no-cert":
        d.tls_certs = False
    elif name == "vnic-down":
        d.vnic_link = "DOWN"
    else:  # pragma: no cover - guarded by parse_fault_spec
        raise ValueError(f"unknown fault {name!r}")
