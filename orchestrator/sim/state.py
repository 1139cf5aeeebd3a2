"""Per-node state of the simulated cluster (``deploy sim``) and its rendering.

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
import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, Field

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

# ``-net_health -g`` strings (g_net_health_status in tool_ops.c, indexed by the DCMI enum),
# plus ``Socket failed`` seen in a MindCluster fixture.
NET_HEALTH_STATUSES: tuple[str, ...] = (
    "Success",
    "Socket fail",
    "Receive timeout",
    "Unreachable",
    "Time exceeded",
    "Fault",
    "Init",
    "Thread error",
    "Detect ip set",
    "Unknown",
    "Socket failed",
)
# npu-smi Health column (npu_common.c).
HEALTH_STATUSES: tuple[str, ...] = ("OK", "Warning", "Alarm", "Critical", "UNKNOWN")

DIR_MODE = 0o777  # the sim user may differ from the creator: tools write in these dirs
RW_MODE = 0o666  # files the tools rewrite (state.json, hccn.conf, dev<N>.sh, busy)
RO_MODE = 0o644
EXEC_MODE = 0o755

BIN_SRC = Path(__file__).resolve().parent / "bin"
FASTPATH_SRC = Path(__file__).resolve().parent / "fastpath.c"
TOOLS = ("hccn_tool", "npu-smi")


class Process(BaseModel):
    """A process holding HBM on a device (``npu-smi info`` process section)."""

    pid: int
    name: str = ""
    memory_mb: int


class DeviceState(BaseModel):
    """One hccn device: an NPU on A2, one die of an NPU on A3."""

    id: int  # physical id: hccn_tool -i, /dev/davinciN, npu-smi "Chip Phy-ID"
    npu: int  # card id: npu-smi -i
    chip: int  # chip (die) id within the card: npu-smi -c (always 0 on A2)
    logic_id: int
    # RoCE NIC (hccn_tool -ip/-netdetect/-gateway); None = not configured
    ip: str | None
    netmask: str | None
    netdetect: str | None
    gateway: str | None
    send_arp_status: int = 1
    # hccn.conf address_N when it differs from the live ip (fault hccn-conf-drift, no-ip)
    conf_address: str | None = None
    link: Literal["UP", "DOWN"] = "UP"
    net_health: str = "Success"
    lldp_ifname: str | None  # None = no LLDP neighbour
    lldp_system_name: str = "roce-leaf-01"
    tls_switch: int = 0
    tls_certs: bool = True
    optical_present: bool = True
    # npu-smi
    health: str = "OK"
    hbm_used_mb: int
    hbm_total_mb: int = 65536
    power_w: float | None  # None prints "-" (die 1 on A3)
    temp_c: int
    aicore_pct: int = 0
    bus_id: str
    processes: list[Process] = Field(default_factory=list)
    # A3 only
    vnic_ip: str | None = None
    vnic_netmask: str | None = None
    vnic_link: Literal["UP", "DOWN"] = "UP"
    sdid: int | None = None
    # deterministic latencies for ping output
    ping_us: tuple[int, int, int] = (114, 67, 63)  # RoCE ping, microseconds
    hccs_ns: int = 12345  # first hccs_ping packet, nanoseconds


class NodeState(BaseModel):
    """The truth of one simulated node."""

    name: str
    address: str
    index: int
    soc: Literal["a2", "a3"]
    chip_name: str  # "910B3" (A2) / "Ascend910" (A3)
    driver_version: str = "25.2.0"
    firmware_version: str = "7.7.0.6.236"
    npu_smi_version: str = "25.2.0"
    cann_version: str = "8.3.RC1"  # host toolkit: $ASCEND_TOOLKIT_HOME/<arch>/ascend_toolkit_install.info
    product_name: str = "IT21HMDB02-B2"
    serial_prefix: str = "1023767"
    super_pod_id: int | None = None  # A3
    super_pod_size: int | None = None  # A3
    server_index: int | None = None  # A3
    busy: int = 0  # the next `busy` hccn_tool invocations answer "busy"
    ping_loss: list[str] = Field(default_factory=list)  # peer nodes pings to/from fail
    faults: list[str] = Field(default_factory=list)  # applied fault specs, for display
    devices: list[DeviceState]

    @property
    def npu_count(self) -> int:
        return 8

    @property
    def chips_per_npu(self) -> int:
        return 2 if self.soc == "a3" else 1

    def device(self, dev: int) -> DeviceState:
        for d in self.devices:
            if d.id == dev:
                return d
        raise KeyError(dev)


# ---------------------------------------------------------------------------------------
# building a healthy cluster

_A2_BUS = ["C1", "C2", "81", "82", "01", "02", "41", "42"]
_A3_BUS = ["9D", "9F", "99", "9B", "95", "97", "91", "93", "8D", "8F", "89", "8B", "85", "87", "81", "83"]


def _roce_ip(plane: int, index: int) -> str:
    host = index + 11  # .0.1 is the gateway; leave some room
    return f"10.{plane}.{host // 256}.{host % 256}"


def build_states(
    nodes: list[tuple[str, str]],
    soc: str,
    *,
    super_pod_size: int = 384,
) -> dict[str, NodeState]:
    """A deterministic, healthy cluster: one :class:`NodeState` per (name, address), in order.

    ``soc`` is ``"a2"`` (devices 0..7, one chip per NPU) or ``"a3"`` (devices 0..15,
    device = npu*2 + die).  RoCE addresses are ``10.<device>.x.y/16`` (one subnet per
    device plane, gateway and netdetect ``10.<device>.0.1``), unique across the cluster.
    On A3 a super pod holds ``super_pod_size // 8`` servers (at most 48, the hccs_ping
    limit); node i gets Super Pod ID ``i // per_pod`` and Server Index ``i % per_pod``,
    vNIC ``192.<server index>.<2+die>.<199-device>/24`` and
    SDID ``server_index<<22 | npu<<18 | die<<16 | device``.
    """
    soc = soc.lower()
    if soc not in ("a2", "a3"):
        raise ValueError(f"unknown soc {soc!r}: expected 'a2' or 'a3'")
    names = [n for n, _ in nodes]
    if len(set(names)) != len(names):
        raise ValueError("duplicate node names")
    per_pod = min(48, max(1, super_pod_size // 8))
    if soc == "a2" and len(nodes) > 65000:
        raise ValueError("too many nodes")
    out: dict[str, NodeState] = {}
    for index, (name, address) in enumerate(nodes):
        devices: list[DeviceState] = []
        chips = 2 if soc == "a3" else 1
        server_index = index % per_pod if soc == "a3" else None
        for dev in range(8 * chips):
            npu, chip = divmod(dev, chips)
            seed = index * 31 + dev * 7
            plane_ip = _roce_ip(dev, index)
            gw = f"10.{dev}.0.1"
            d = DeviceState(
                id=dev,
                npu=npu,
                chip=chip,
                logic_id=dev,
                ip=plane_ip,
                netmask="255.255.0.0",
                netdetect=gw,
                gateway=gw,
                lldp_ifname=f"400GE1/{1 + (index * (4 * chips) + dev // 2) // 48}/"
                f"{1 + (index * (4 * chips) + dev // 2) % 48}:{dev % 2 + 1}",
                hbm_used_mb=(3380 + seed % 40) if chip == 0 else (3180 + seed % 30),
                power_w=None if chip == 1 else round((90.0 if soc == "a2" else 170.0) + (seed % 97) / 10, 1),
                temp_c=32 + seed % 9,
                bus_id=f"0000:{(_A3_BUS if soc == 'a3' else _A2_BUS)[dev]}:00.0",
                ping_us=(100 + seed % 30, 60 + seed % 11, 58 + (seed + 3) % 11),
                hccs_ns=11500 + (seed * 37) % 1500,
            )
            if soc == "a3":
                assert server_index is not None
                d.vnic_ip = f"192.{server_index}.{2 + chip}.{199 - dev}"
                d.vnic_netmask = "255.255.255.0"
                d.sdid = (server_index << 22) | (npu << 18) | (chip << 16) | dev
            devices.append(d)
        out[name] = NodeState(
            name=name,
            address=address,
            index=index,
            soc=soc,  # type: ignore[arg-type]
            chip_name="Ascend910" if soc == "a3" else "910B3",
            product_name="IT22SMDB01-A3" if soc == "a3" else "IT21HMDB02-B3",
            super_pod_id=index // per_pod if soc == "a3" else None,
            super_pod_size=super_pod_size if soc == "a3" else None,
            server_index=server_index,
            devices=devices,
        )
    return out


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


@contextlib.contextmanager
def node_lock(node_dir: str | os.PathLike[str], timeout: float = 10.0) -> Iterator[None]:
    """The per-node lock shared with the fake tools (``mkdir NODE/.lock``).

    Wrap a load_state / modify / save_state sequence in it.  A lock older than
    ``timeout`` seconds is considered stale and taken over (the tools do the same).
    """
    lock = Path(node_dir) / ".lock"
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.mkdir(lock)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.rmdir(lock)
                deadline = time.monotonic() + timeout
            time.sleep(0.005)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(lock)


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


# ---------------------------------------------------------------------------------------
# rendering: hccn.conf


def render_hccn_conf(state: NodeState) -> str:
    """``/etc/hccn.conf``: address/netmask/netdetect/gateway/send_arp_status/tls_enable per device."""
    lines: list[str] = []
    for d in state.devices:
        address = d.conf_address if d.conf_address is not None else d.ip
        if address is not None:
            lines.append(f"address_{d.id}={address}")
        if d.netmask is not None:
            lines.append(f"netmask_{d.id}={d.netmask}")
        if d.netdetect is not None:
            lines.append(f"netdetect_{d.id}={d.netdetect}")
        if d.gateway is not None:
            lines.append(f"gateway_{d.id}={d.gateway}")
        lines.append(f"send_arp_status_{d.id}={d.send_arp_status}")
        lines.append(f"tls_enable_{d.id}={d.tls_switch}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# rendering: hccn_tool outputs

NOT_SUPPORTED = "The command is not supported on this product."
CMD_FAILED = "Command execute failed!"

_CERTS = (
    ("pub cert", "/C=CN/ST=GD/O=HUAWEI/OU=2012/CN=2_1thCA", "Wed Feb 19 03:19:21 2020 GMT", "Sat Feb 16 03:19:21 2030 GMT"),
    ("ca1 cert", "/C=CN/O=Huawei/CN=Huawei Equipment Root CA", "Thu Oct 10 02:06:26 2019 GMT", "Mon Oct  5 02:06:26 2039 GMT"),
    ("ca2 cert", "/C=CN/O=Huawei/CN=Huawei Equipment CA", "Thu Oct 10 02:13:45 2019 GMT", "Sun Oct  6 02:13:45 2034 GMT"),
)


def _lldp_text(state: NodeState, d: DeviceState) -> str:
    assert d.lldp_ifname is not None
    mac_tail = (state.index * 16 + d.id) & 0xFFFF
    return "\n".join(
        [
            "Chassis ID TLV",
            f"\tMAC: 70:7b:e8:{(state.index >> 8) & 0xFF:02x}:{mac_tail >> 8:02x}:{mac_tail & 0xFF:02x}",
            "Port ID TLV",
            f"\tIfname: {d.lldp_ifname}",
            "Time to Live TLV",
            "\t121",
            "Port Description TLV",
            f"\t{d.lldp_ifname}",
            "System Name TLV",
            f"\t{d.lldp_system_name}",
            "System Description TLV",
            "\tVersatile Routing Platform Software",
            "VRP (R) software, Version 8.220 (CE9860 V200R022C00SPC500)",
            "Copyright (C) 2012-2023 Huawei Technologies Co., Ltd.",
            "HUAWEI CE9860-4C-EI",
            "System Capabilities TLV",
            "\tSystem capabilities:  Bridge, Router",
            "\tEnabled capabilities: Bridge, Router",
            "Management Address TLV",
            f"\tIPv4: 26.{d.id}.{state.index // 256}.{state.index % 256}",
            "\tIfindex: 11",
            "Port VLAN ID TLV",
            "\tPVID: 1",
            "Maximum Frame Size TLV",
            "\t9216",
            "End of LLDPDU TLV",
        ]
    )


def _tls_text(d: DeviceState) -> str:
    lines = [
        f"dev_id:{d.id}, tls switch[{d.tls_switch}](0:disable, 1:enable), "
        "tls preconfigured[1](0:non-preset, 1:preset), tls alarm time threshold[60]days"
    ]
    for kind, issuer, start, end in _CERTS:
        lines += [
            f"dev_id:{d.id}, [{kind}] info:",
            f"         issuer[{issuer}]",
            f"         start_time[{start}]",
            f"         end_time[{end}]",
            "         tls expiration status[0](0:normal, 1:near expiration, 2:has expired)",
        ]
    return "\n".join(lines)


def _optical_text(state: NodeState, d: DeviceState) -> str:
    def row(key: str, value: str) -> str:
        return f"{key:<21}: {value}"

    if not d.optical_present:
        return "\n".join(["optical info:", row("present", "not present")])
    s = state.index * 16 + d.id
    lines = [
        "optical info:",
        row("present", "present"),
        row("temperature", f"{44 + s % 8} C"),
        row("vendor name", "Hisense"),
        row("Vcc", f"{3262.90 + (s % 13) / 10:.2f} mV"),
    ]
    for lane in range(4):
        lines.append(row(f"Tx Power{lane}", f"{4.4035 - lane * 0.0711 + (s % 17) / 1000:.4f} mW"))
    for lane in range(4):
        lines.append(row(f"Rx Power{lane}", f"{1.0189 + lane * 0.0523 - (s % 19) / 1000:.4f} mW"))
    for lane in range(4):
        lines.append(row(f"Tx Bias{lane}", f"{7.1860 + lane * 0.0130:.4f} mA"))
    lines += [row("Tx Los Flag", "0x0"), row("Rx Los Flag", "0x0")]
    return "\n".join(lines)


def _out(key: str, stdout: str = "", stderr: str = "", rc: int = 0) -> list[str]:
    lines = [f"O_{key}={shlex.quote(stdout)}"]
    if stderr:
        lines.append(f"E_{key}={shlex.quote(stderr)}")
    if rc:
        lines.append(f"R_{key}={rc}")
    return lines


# (command, stdout, stderr, rc): one answer of a tool, as the sh scripts print it (each
# non-empty text followed by a newline)
Answer = tuple[str, str, str, int]


def _device_answers(state: NodeState, d: DeviceState) -> list[Answer]:
    """``hccn_tool -i N -<cmd> -g`` for every get command, in dev<N>.sh order."""
    a3 = state.soc == "a3"
    out: list[Answer] = [
        ("link", f"link status: {d.link}", "", 0),
        ("net_health", f"net health status: {d.net_health}", "", 0),
    ]
    if d.netdetect:
        out.append(("netdetect", f"netdetect address: {d.netdetect}", "", 0))
    else:
        out.append(("netdetect", "", CMD_FAILED, 1))
    if d.gateway:
        out.append(("gateway", f"default gateway:{d.gateway}, Iface:eth{d.id}", "", 0))
    else:
        out.append(("gateway", "", "Get gateway failed, because no gateway was preset there!", 2))
    if d.ip:
        out.append(("ip", f"ipaddr:{d.ip}\nnetmask:{d.netmask or '255.255.255.0'}", "", 0))
    else:
        out.append(("ip", "", "Get ipconf failed, because no ip was preset there!", 13))
    if a3 and d.vnic_ip:
        vnic = f"vnic link status: {d.vnic_link}\nvnic ipaddr: {d.vnic_ip}\nvnic netmask: {d.vnic_netmask}"
        out.append(("vnic", vnic, "", 0))
    else:
        out.append(("vnic", NOT_SUPPORTED, "", 13))
    out.append(("lldp", _lldp_text(state, d) if d.lldp_ifname else "", "", 0))
    if d.tls_certs:
        out.append(("tls", _tls_text(d), "", 0))
    else:
        out.append(("tls", "", "No certificate found, please set certs firstly!", 14))
    out.append(("optical", _optical_text(state, d), "", 0))
    return out


def _device_scalars(state: NodeState, d: DeviceState) -> dict[str, str]:
    """What the ping paths need besides the answers (the shell variables of dev<N>.sh)."""
    t = ["%d.%06d" % divmod(us * 1000, 1000000) for us in d.ping_us]
    return {
        "node": state.name,
        "soc": state.soc,
        "pod": str(state.super_pod_id if state.super_pod_id is not None else 0),
        "dev": str(d.id),
        "ip": d.ip or "",
        "link": d.link,
        "vlink": d.vnic_link if state.soc == "a3" else "DOWN",
        "t0": t[0],
        "t1": t[1],
        "t2": t[2],
        "hns": str(d.hccs_ns),
    }


def _render_device(state: NodeState, d: DeviceState) -> str:
    sc = _device_scalars(state, d)
    v: list[str] = [
        "# generated by orchestrator.sim.state.save_state; sourced by hccn_tool",
        f"NODE={shlex.quote(sc['node'])}",
        f"SOC={sc['soc']}",
        f"POD={sc['pod']}",
        f"DEV={sc['dev']}",
        f"IP={shlex.quote(sc['ip'])}",
        f"LINK={sc['link']}",
        f"VLINK={sc['vlink']}",
        f"T0={sc['t0']} T1={sc['t1']} T2={sc['t2']}",
        f"HNS={sc['hns']}",
    ]
    for key, stdout, stderr, rc in _device_answers(state, d):
        v += _out(key, stdout, stderr, rc)
    return "\n".join(v) + "\n"


# ---------------------------------------------------------------------------------------
# rendering: the compiled fast path's files (fastpath.c)

FASTPATH_MAGIC = "fastpath 1\n"


def _fp_text(scalars: dict[str, str], answers: list[Answer], prefix: str = "") -> str:
    """A ``.fp`` file: ``fastpath 1``, then ``<key> <rc> <len out> <len err>\\n<out>\\n<err>\\n``
    per record, lengths in bytes.  Answers hold the exact bytes the sh script prints
    (``prefix`` + command as key); scalars are raw values with rc 0.
    """

    def line(text: str) -> str:
        return text + "\n" if text else ""

    records = [(k, v, "", 0) for k, v in scalars.items()]
    records += [(prefix + k, line(o), line(e), rc) for k, o, e, rc in answers]
    parts = [FASTPATH_MAGIC]
    for key, out, err, rc in records:
        assert key and " " not in key and "\n" not in key
        parts.append(f"{key} {rc} {len(out.encode())} {len(err.encode())}\n{out}\n{err}\n")
    return "".join(parts)


# ---------------------------------------------------------------------------------------
# rendering: npu-smi outputs

_W = 96  # frame interior width of the 25.2.0 tables
_SEP_TOP = "+" + "-" * _W + "+"
_SEP_COLS = "+" + "-" * 27 + "+" + "-" * 15 + "+" + "-" * 52 + "+"
_SEP_NPU = "+" + "=" * 27 + "+" + "=" * 15 + "+" + "=" * 52 + "+"


def _info_table(state: NodeState) -> str:
    a3 = state.soc == "a3"
    v = state.npu_smi_version
    lines = [
        _SEP_TOP,
        f"| {'npu-smi ' + v:<33}{'Version: ' + state.driver_version:<62}|",
        _SEP_COLS,
        "| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|",
        "| Chip  Phy-ID              | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |"
        if a3
        else "| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |",
        _SEP_NPU,
    ]
    for npu in range(state.npu_count):
        devs = [d for d in state.devices if d.npu == npu]
        for j, d in enumerate(devs):
            power = "-" if d.power_w is None else f"{d.power_w:.1f}"
            chip_col = f"{d.chip:<6}{d.id}" if a3 else f"{d.chip}"
            lines.append(f"| {npu:<6}{state.chip_name:<20}| {d.health:<14}| {power:<12}{d.temp_c:<18}{'0':<5}/ {'0':<14}|")
            lines.append(
                f"| {chip_col:<26}| {d.bus_id:<14}| {d.aicore_pct:<12}{'0':<5}/ {'0':<11}"
                f"{d.hbm_used_mb:<5}/ {d.hbm_total_mb:<14}|"
            )
            lines.append(_SEP_TOP if j < len(devs) - 1 else _SEP_NPU)
    lines += [
        _SEP_COLS,
        "| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |",
        _SEP_NPU,
    ]
    for npu in range(state.npu_count):
        rows = [
            f"| {npu:<8}{d.chip:<18}| {p.pid:<14}| {p.name:<25}| {p.memory_mb:<24}|"
            for d in state.devices
            if d.npu == npu
            for p in d.processes
        ]
        if not rows:
            rows = [f"| {'No running processes found in NPU ' + str(npu):<95}|"]
        lines += rows
        lines.append(_SEP_NPU)
    return "\n".join(lines)


def _kv(key: str, value: object) -> str:
    return f"\t{key:<30} : {value}"


def _info_list(state: NodeState) -> str:
    lines = [_kv("Total Count", state.npu_count)]
    for npu in range(state.npu_count):
        lines += ["", _kv("NPU ID", npu), _kv("Chip Count", state.chips_per_npu)]
    return "\n".join(lines)


def _info_map(state: NodeState) -> str:
    def row(*cols: object) -> str:
        return "\t" + "".join(f"{str(c):<31}" for c in cols[:-1]) + str(cols[-1])

    a3 = state.soc == "a3"
    name = state.chip_name if a3 else f"Ascend {state.chip_name}"
    if a3:
        lines = [row("NPU ID", "Chip ID", "Chip Logic ID", "Chip Phy-ID", "Chip Name")]
    else:
        lines = [row("NPU ID", "Chip ID", "Chip Logic ID", "Chip Name")]
    for npu in range(state.npu_count):
        for d in (d for d in state.devices if d.npu == npu):
            lines.append(row(npu, d.chip, d.logic_id, d.id, name) if a3 else row(npu, d.chip, d.logic_id, name))
        mcu = state.chips_per_npu
        lines.append(row(npu, mcu, "-", "-", "Mcu") if a3 else row(npu, mcu, "-", "Mcu"))
    return "\n".join(lines)


def _board(state: NodeState, npu: int, chip: int | None) -> str:
    devs = [d for d in state.devices if d.npu == npu]
    pci_dev = "0xD803" if state.soc == "a3" else "0xD802"
    if chip is None:
        return "\n".join(
            [
                _kv("NPU ID", npu),
                _kv("Product Name", state.product_name),
                _kv("Serial Number", f"{state.serial_prefix}{state.index:03d}{npu:02d}"),
                _kv("Software Version", state.driver_version),
                _kv("Firmware Version", state.firmware_version),
                _kv("Compatibility", "OK"),
                _kv("Board ID", "0x65"),
                _kv("PCIe Bus Info", devs[0].bus_id),
                _kv("PCI Vendor ID", "0x19E5"),
                _kv("PCI Device ID", pci_dev),
                _kv("Chip Count", state.chips_per_npu),
            ]
        )
    d = devs[chip]
    return "\n".join(
        [
            _kv("NPU ID", npu),
            _kv("Chip ID", chip),
            _kv("Chip Type", "Ascend"),
            _kv("Chip Name", "910_93" if state.soc == "a3" else state.chip_name),
            _kv("Chip Version", "V1"),
            _kv("Board ID", "0x65"),
            _kv("PCIe Bus Info", d.bus_id),
            _kv("Firmware Version", state.firmware_version),
        ]
    )


_HEALTH_CODES = {
    "OK": ("NA", "NA"),
    "Warning": ("0x80E18402", "node type=DDR, sensor type=Memory, event state=single-bit ECC error"),
    "Alarm": ("0x80E38008", "node type=AICORE, sensor type=General Purpose, event state=overheating"),
    "Critical": ("0x80E01801", "node type=HBM, sensor type=Memory, event state=multi-bit ECC error"),
    "UNKNOWN": ("NA", "NA"),
}
_HEALTH_RANK = {"OK": 0, "UNKNOWN": 1, "Warning": 2, "Alarm": 3, "Critical": 4}


def _health(status: str) -> str:
    code, info = _HEALTH_CODES.get(status, ("NA", "NA"))
    return "\n".join([_kv("Health Status", status), _kv("Error Code", code), _kv("Error Information", info)])


def _spod(state: NodeState, d: DeviceState) -> str:
    return "\n".join(
        [
            _kv("SDID", d.sdid),
            _kv("Super Pod Size", state.super_pod_size),
            _kv("Super Pod ID", state.super_pod_id),
            _kv("Server Index", state.server_index),
        ]
    )


SPOD_UNSUPPORTED = "This device does not support querying spod-info."


def _smi_file(stdout: str, stderr: str = "", rc: int = 0) -> str:
    lines = [f"O={shlex.quote(stdout)}"]
    if stderr:
        lines.append(f"E={shlex.quote(stderr)}")
    if rc:
        lines.append(f"R={rc}")
    return "\n".join(lines) + "\n"


def _smi_answers(state: NodeState) -> list[Answer]:
    """Every npu-smi answer, keyed as the sh script looks it up (smi/<key>.sh)."""
    out: list[Answer] = [
        ("info", _info_table(state), "", 0),
        ("list", _info_list(state), "", 0),
        ("map", _info_map(state), "", 0),
    ]
    for npu in range(state.npu_count):
        devs = [d for d in state.devices if d.npu == npu]
        out.append((f"board_{npu}", _board(state, npu, None), "", 0))
        worst = max((d.health for d in devs), key=lambda h: _HEALTH_RANK.get(h, 1))
        out.append((f"health_{npu}", _health(worst), "", 0))
        for d in devs:
            out.append((f"board_{npu}_{d.chip}", _board(state, npu, d.chip), "", 0))
            out.append((f"health_{npu}_{d.chip}", _health(d.health), "", 0))
            if state.soc == "a3":
                out.append((f"spod_{npu}_{d.chip}", _spod(state, d), "", 0))
            else:
                out.append((f"spod_{npu}_{d.chip}", SPOD_UNSUPPORTED, "", 1))
        if state.soc == "a2":
            out.append((f"spod_{npu}", SPOD_UNSUPPORTED, "", 1))
    return out


def _render_smi(state: NodeState) -> dict[str, str]:
    answers = _smi_answers(state)
    files = {f"smi/{k}.sh": _smi_file(o, e, rc) for k, o, e, rc in answers}
    files["smi/all.fp"] = _fp_text({}, answers)
    return files


# ---------------------------------------------------------------------------------------
# rendering: the whole node


def render_node(state: NodeState) -> dict[str, str]:
    """Every file under ``render/`` except ``busy`` and the index (relative path -> text)."""
    files: dict[str, str] = {}
    for d in state.devices:
        files[f"dev{d.id}.sh"] = _render_device(state, d)
        files[f"dev{d.id}.fp"] = _fp_text(_device_scalars(state, d), _device_answers(state, d), "-")
        if d.link == "UP":
            files[f"up{d.id}"] = ""
        if state.soc == "a3" and d.vnic_ip and d.vnic_link == "UP":
            files[f"vup{d.id}"] = ""
    for peer in state.ping_loss:
        files[f"noping/{peer}"] = ""
    files.update(_render_smi(state))
    files["toolkit/aarch64-linux/ascend_toolkit_install.info"] = (
        f"package_name=Ascend-cann-toolkit\nversion={state.cann_version}\narch=aarch64\nos=linux\n")
    return files


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
    _write(ndir / "etc" / "hccn.conf", render_hccn_conf(state), RW_MODE)
    render = ndir / "render"
    _sync_tree(render, render_node(state), keep={"busy", "index"})
    _write(render / "busy", f"{state.busy}\n" if state.busy > 0 else "", RW_MODE)
    if ndir.parent.name == "nodes":
        _update_index(ndir.parent.parent, ndir, state)


def _install(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, EXEC_MODE)
    os.replace(tmp, dst)


_fastpath_built: dict[str, Path] = {}  # source hash -> a binary built by this process


def _build_fastpath(bindir: Path) -> Path | None:
    """``DIR/bin/.fastpath-<source hash>``, compiled from fastpath.c unless already there.

    None when there is no ``cc``, no source, or the compile fails.  Static linking saves
    about 0.1 ms of exec time per call; if the libc has no static archive, link dynamically.
    """
    cc = shutil.which("cc")
    if cc is None or not FASTPATH_SRC.is_file():
        return None
    digest = hashlib.sha256(FASTPATH_SRC.read_bytes()).hexdigest()[:16]
    binary = bindir / f".fastpath-{digest}"
    if binary.is_file():
        return binary
    tmp = bindir / f".fastpath-{digest}.{os.getpid()}.tmp"
    built = _fastpath_built.get(digest)
    try:
        if built is not None and built.is_file():
            shutil.copyfile(built, tmp)
        else:
            for link in (["-static"], []):
                cmd = [cc, "-std=c99", "-O2", *link, "-o", str(tmp), str(FASTPATH_SRC)]
                if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0:
                    break
            else:
                return None
        os.chmod(tmp, EXEC_MODE)
        os.replace(tmp, binary)
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fastpath_built[digest] = binary
    for old in bindir.glob(".fastpath-*"):  # builds of older sources
        if old != binary and not old.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                old.unlink()
    return binary


def install_tools(root: str | os.PathLike[str]) -> Path:
    """Install the fake tools into ``DIR/bin`` (mode 0755).

    The sh scripts are the reference implementation.  If a C compiler (``cc``) is available
    and ``DEPLOY_SIM_NO_FASTPATH`` is unset (or ``0``), ``fastpath.c`` is compiled once into
    ``DIR/bin`` and installed as ``hccn_tool`` and ``npu-smi``, with the scripts next to it
    as ``hccn_tool.sh`` and ``npu-smi.sh``: it answers the hot read-only calls itself and
    runs the script for everything else.  Otherwise the scripts are installed under the tool
    names, as they always were.
    """
    bindir = Path(root) / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    os.chmod(bindir, 0o755)
    no_fastpath = os.environ.get("DEPLOY_SIM_NO_FASTPATH", "") not in ("", "0")
    binary = None if no_fastpath else _build_fastpath(bindir)
    for tool in TOOLS:
        if binary is not None:
            _install(BIN_SRC / tool, bindir / f"{tool}.sh")  # first: the binary execs it
            _install(binary, bindir / tool)
        else:
            _install(BIN_SRC / tool, bindir / tool)
            with contextlib.suppress(FileNotFoundError):
                (bindir / f"{tool}.sh").unlink()
    return bindir


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
