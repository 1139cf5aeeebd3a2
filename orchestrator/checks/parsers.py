"""Parsers for `hccn_tool` and `npu-smi` output (the formats of HDK 25.2.0; docs/simulator-tools.md).

Tolerant where real releases differ (§8): case of UP/DOWN, `Socket fail(ed)`, `netdetect
addr(ess)`, `packet(s) loss`, CRLF and trailing blanks, empty stdout with rc != 0. Never fixed
column offsets: table widths change between releases.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_IPV4 = r"(\d{1,3}(?:\.\d{1,3}){3})"


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]


def first_line(text: str) -> str:
    """The line to quote in a report: the first non-empty one."""
    return next((line.strip() for line in _lines(text) if line.strip()), "")


def link_status(text: str) -> str | None:
    m = re.search(r"^\s*link status:\s*(\w+)", text, re.M | re.I)
    return m.group(1).upper() if m else None


def net_health(text: str) -> str | None:
    m = re.search(r"^\s*net health status:\s*(.+?)\s*$", text, re.M | re.I)
    return m.group(1) if m else None


def netdetect(text: str) -> str | None:
    m = re.search(r"^\s*netdetect addr(?:ess)?:\s*(\S+)", text, re.M | re.I)
    return m.group(1) if m else None


def gateway(text: str) -> str | None:
    m = re.search(r"^\s*default gateway:\s*([^,\s]+)", text, re.M | re.I)
    return m.group(1) if m else None


def ip_config(text: str) -> tuple[str | None, str | None]:
    """`-ip -g`: (ipaddr, netmask); no spaces after the colons on real output."""
    ip = re.search(r"^\s*ipaddr:\s*" + _IPV4, text, re.M)
    mask = re.search(r"^\s*netmask:\s*" + _IPV4, text, re.M)
    return (ip.group(1) if ip else None, mask.group(1) if mask else None)


def vnic(text: str) -> tuple[str | None, str | None, str | None]:
    """`-vnic -g`: (link, ipaddr, netmask)."""
    link = re.search(r"^\s*vnic link status:\s*(\w+)", text, re.M | re.I)
    ip = re.search(r"^\s*vnic ipaddr:\s*" + _IPV4, text, re.M)
    mask = re.search(r"^\s*vnic netmask:\s*" + _IPV4, text, re.M)
    return (link.group(1).upper() if link else None, ip.group(1) if ip else None, mask.group(1) if mask else None)


def lldp_ifname(text: str) -> str | None:
    m = re.search(r"^\s*Ifname:\s*(\S.*?)\s*$", text, re.M)
    return m.group(1) if m else None


def tls_switch(text: str) -> int | None:
    m = re.search(r"tls switch\[(\d)\]", text)
    return int(m.group(1)) if m else None


def busy(text: str, rc: int) -> bool:
    return rc == 11 or "hccn_tool is busy" in text or "device is occupied" in text


@dataclass
class PingResult:
    ok: bool
    sent: int | None
    received: int | None
    loss: str | None
    detail: str


def ping(text: str, rc: int) -> PingResult:
    """RoCE `-ping` and `-hccs_ping`: pass = rc 0, N sent = N received, 0% loss, no timeouts."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received, ([\d.]+)% packets? loss", text)
    sent, received, loss = (int(m.group(1)), int(m.group(2)), m.group(3)) if m else (None, None, None)
    bad = re.search(r"recv time out|Destination Host Unreachable|Message too long|send fail|"
                    r"not start to send|check recv msg fail|Command execute failed|Cmd execute failed", text)
    l1 = re.findall(r"L1 plane check result = (0x[0-9a-fA-F]+)", text)
    ok = rc == 0 and sent is not None and sent == received and sent > 0 and not bad and all(int(v, 16) == 0 for v in l1)
    if m:
        detail = m.group(0)
    else:
        detail = first_line(text) or f"rc {rc}, no output"
    if not ok and bad and m:
        detail = f"{m.group(0)} ({bad.group(0)})"
    return PingResult(ok, sent, received, loss, detail)


def hccn_conf(text: str) -> dict[str, str]:
    """`/etc/hccn.conf`: key_<phyid>=value lines, order not guaranteed."""
    out = {}
    for line in _lines(text):
        line = line.strip()
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------ npu-smi


def npu_count(text: str) -> tuple[int | None, int | None]:
    """`npu-smi info -l`: (Total Count, Chip Count of the first NPU)."""
    total = re.search(r"Total Count\s*:\s*(\d+)", text)
    chips = re.search(r"Chip Count\s*:\s*(\d+)", text)
    return (int(total.group(1)) if total else None, int(chips.group(1)) if chips else None)


@dataclass
class ChipMap:
    npu: int
    chip: int
    logic: int
    phy: int
    name: str


def chip_map(text: str) -> list[ChipMap]:
    """`npu-smi info -m`: A2 has 4 columns (phy = logic), A3 5 with Chip Phy-ID; Mcu rows skipped."""
    rows = []
    five = "Phy-ID" in text
    for line in _lines(text):
        cols = re.split(r"\s{2,}|\t", line.strip())
        cols = [c for c in cols if c]
        if not cols or not cols[0].isdigit():
            continue
        if five and len(cols) >= 5:
            npu, chip, logic, phy, name = cols[:5]
        elif not five and len(cols) >= 4:
            npu, chip, logic, name = cols[:4]
            phy = logic
        else:
            continue
        if name == "Mcu" or logic == "-" or phy == "-":
            continue
        rows.append(ChipMap(int(npu), int(chip), int(logic), int(phy), name))
    return rows


@dataclass
class NpuProcess:
    npu: int
    chip: int
    pid: int
    name: str
    memory_mb: int


@dataclass
class NpuInfo:
    version: str | None = None
    chips: dict[tuple[int, int], dict] = field(default_factory=dict)  # (npu, chip) -> health, hbm, phy
    processes: list[NpuProcess] = field(default_factory=list)


_ROW1 = re.compile(r"^\|\s*(\d+)\s+(\S.*?)\s*\|\s*(OK|Warning|Alarm|Critical|UNKNOWN)\s*\|", re.I)
_ROW2 = re.compile(r"^\|\s*(\d+)(?:\s+(\d+))?\s*\|\s*([0-9A-Fa-f:.]+)\s*\|.*?(\d+)\s*/\s*(\d+)\s*\|\s*$")
_PROC = re.compile(r"^\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s*\|\s*(\S.*?)\s*\|\s*(\d+)\s*\|")


def npu_info(text: str) -> NpuInfo:
    """`npu-smi info`: per chip health and HBM used/total; the process table."""
    info = NpuInfo()
    m = re.search(r"npu-smi\s+\S+\s+Version:\s*(\S+)", text)
    info.version = m.group(1) if m else None
    pending: tuple[int, str] | None = None
    chip_of_npu: dict[int, int] = {}
    in_proc = False
    for line in _lines(text):
        if "Process id" in line:
            in_proc = True
            continue
        if in_proc:
            p = _PROC.match(line)
            if p:
                info.processes.append(NpuProcess(int(p.group(1)), int(p.group(2)), int(p.group(3)),
                                                 p.group(4), int(p.group(5))))
            continue
        r1 = _ROW1.match(line)
        if r1:
            pending = (int(r1.group(1)), r1.group(3))
            continue
        r2 = _ROW2.match(line)
        if r2 and pending is not None:
            npu, health = pending
            chip = int(r2.group(1))
            phy = int(r2.group(2)) if r2.group(2) is not None else None
            used, total = int(r2.group(4)), int(r2.group(5))
            info.chips[(npu, chip)] = {"health": health, "hbm_used": used, "hbm_total": total, "phy": phy}
            chip_of_npu[npu] = chip
            pending = None
    return info


def kv_field(text: str, name: str) -> str | None:
    """`npu-smi info -t board|health|spod-info` lines: `<Name>   : value`."""
    m = re.search(r"^\s*" + re.escape(name) + r"\s*:\s*(.+?)\s*$", text, re.M)
    return m.group(1) if m else None


def version_info(text: str) -> str | None:
    """Driver `version.info` (`Version=25.2.0`) or CANN `ascend_toolkit_install.info` (`version=...`)."""
    m = re.search(r"^\s*version\s*=\s*(\S+)", text, re.M | re.I)
    return m.group(1) if m else None
