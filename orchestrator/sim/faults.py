"""Faults that change what the simulated Ascend tools report (``deploy sim fault``).

A fault spec is ``name`` or ``name:arg`` (see :func:`parse_fault_spec`).  Tool faults
change ``DIR/nodes/<node>/state.json`` through :func:`apply_fault` (which re-renders
the tool outputs); SSH-level faults (:data:`SSH_FAULTS`) belong to the SSH server code.
See docs/simulator-tools.md for what each fault changes.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

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

__all__ = ["TOOL_FAULTS", "SSH_FAULTS", "parse_fault_spec", "apply_fault"]

SSH_FAULTS: frozenset[str] = frozenset({"unreachable", "auth-fail", "host-key-changed"})

# name -> (argument: "none" | "required" | "optional", help)
_SPECS: dict[str, tuple[str, str]] = {
    "link-down": ("none", "RoCE link DOWN (net health becomes Fault); pings to/from the device fail"),
    "net-health": ("required", "net-health:<status>: -net_health -g reports <status> (e.g. Unreachable, Init)"),
    "tls-on": ("none", "TLS switch 1 (state, -tls -g and hccn.conf tls_enable_N)"),
    "no-ip": ("none", "no live RoCE IP: -ip -g rc 13, pings to it fail; hccn.conf keeps address_N"),
    "hccn-conf-drift": ("none", "hccn.conf address_N differs from the live IP (-ip -g)"),
    "ping-loss": ("required", "ping-loss:<peer>: RoCE and HCCS pings between the node and <peer> fail both ways"),
    "dup-ip": ("required", "dup-ip:<peer>: device gets the RoCE IP of <peer>'s same-index device"),
    "busy": ("optional", "busy[:n]: the next n (default 3) hccn_tool calls on the node answer busy (rc 11)"),
    "health": ("required", "health:<Warning|Alarm|Critical|UNKNOWN|OK>: npu-smi Health of the device"),
    "driver": ("required", "driver:<version>: the node's driver (npu-smi Version / Software Version) differs"),
    "firmware": ("required", "firmware:<version>: the node's NPU firmware (npu-smi board info) differs"),
    "cann": ("required", "cann:<version>: the node's host CANN toolkit version differs"),
    "hbm-held": ("none", "a VLLM::EngineCore process holds 60000 MB HBM on the device (npu-smi info)"),
    # extras, for the other knobs of the reference (§8)
    "no-netdetect": ("none", "netdetect unset: -netdetect -g rc 1, net health Detect ip set"),
    "no-gateway": ("none", "gateway unset: -gateway -g rc 2"),
    "no-lldp": ("none", "no LLDP neighbour: -lldp -g prints nothing"),
    "no-optical": ("none", "optical module absent; link DOWN"),
    "no-cert": ("none", "no TLS certificates: -tls -g rc 14"),
    "vnic-down": ("none", "A3: vNIC link DOWN; hccs_ping to/from the device fails"),
}

#: Tool-level fault names and a one-line description of each.
TOOL_FAULTS: dict[str, str] = {name: help_ for name, (_arg, help_) in _SPECS.items()}

_NODE_LEVEL = {"ping-loss", "busy", "driver", "firmware", "cann"}
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
    if name in SSH_FAULTS:
        if arg_value:
            raise ValueError(f"fault {name!r} takes no argument")
        return name, None
    if name not in _SPECS:
        known = ", ".join(sorted(set(_SPECS) | SSH_FAULTS))
        raise ValueError(f"unknown fault {name!r}; known faults: {known}")
    kind = _SPECS[name][0]
    if kind == "required" and not arg_value:
        raise ValueError(f"fault {name!r} needs an argument: {_SPECS[name][1]}")
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
    if name in SSH_FAULTS:
        raise ValueError(f"fault {name!r} is an SSH-level fault, handled by the simulated SSH server")
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
        for this, other, d in ((node, arg, ndir), (arg, node, pdir)):
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
        elif name in _VERSION_FIELDS:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", str(arg)):
                raise ValueError(f"{name} version must be letters, digits, '.', '_' or '-' (got {arg!r})")
            for attr in _VERSION_FIELDS[name]:
                setattr(st, attr, str(arg))
        else:
            targets = _targets(st, device)
            if name == "vnic-down" and st.soc != "a3":
                raise ValueError(f"vnic-down needs an A3 node; {node!r} is {st.soc}")
            for d in targets:
                _apply_device(st, d, name, arg, peer_state)
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
