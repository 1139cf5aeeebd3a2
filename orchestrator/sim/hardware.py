"""A simulated node's hardware truth: devices, IPs, TLS, links, versions (``NodeState``).

What running programs hold (HBM claimed by processes) is not here: that is runtime occupancy,
``runtime/occupancy.py``. ``build_states`` makes a deterministic healthy cluster; faults
(``faults.py``) change it; ``state.py`` stores it and ``render.py`` turns it into tool output.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
    nic: str | None = None  # the inventory node's nic (GLOO/TP socket ifname the runtime checks)
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
    # seconds every -ping / -hccs_ping takes while it holds its device (`deploy sim up
    # --ping-latency`): 0 = CPU only; a real ping waits on its packets
    ping_latency_s: float = Field(default=0.0, ge=0, le=60)
    ping_loss: list[str] = Field(default_factory=list)  # peer nodes pings to/from fail
    hccn_conf: bool = True  # False (fault no-hccn-conf): the node has no /etc/hccn.conf
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
