"""Tool renderers: a node's hardware truth -> the exact texts the fake hccn_tool and npu-smi print.

``render_node(state)`` returns every file under ``DIR/nodes/<n>/render/`` (the sh tools source
``dev<N>.sh`` and ``smi/<key>.sh``; the compiled fast path reads the ``.fp`` records). Formats
follow ascend-tools.md (HDK 25.2.0 era), see docs/simulator-tools.md. The ``npu-smi info`` table
itself is drawn by ``runtime/smi.py`` (stdlib), so that the runtime can redraw it with live HBM
claims.
"""

from __future__ import annotations

import shlex

from .hardware import DeviceState, NodeState
from .runtime import smi

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
    t = ["{}.{:06d}".format(*divmod(us * 1000, 1000000)) for us in d.ping_us]
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
        "wait_us": str(round(state.ping_latency_s * 1_000_000)),
    }


def _seconds(s: float) -> str:
    """`sleep`'s argument for the sh tool: 0, or seconds with up to 6 decimals."""
    us = round(s * 1_000_000)
    return "0" if us == 0 else f"{us // 1_000_000}.{us % 1_000_000:06d}"


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
        f"WAIT={_seconds(state.ping_latency_s)}",
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

def _info_table(state: NodeState) -> str:
    return smi.info_table(state.model_dump(mode="json"))


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
