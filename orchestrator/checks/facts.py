"""One node's NPU network facts, parsed from the sectioned output of `network_collect.sh`."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import parsers as P


@dataclass
class Section:
    text: str
    rc: int | None  # None: the section never finished (script cut short)
    busy: int = 0   # busy answers retried before this result


def parse_sections(stdout: str) -> dict[str, Section]:
    """Split `@@name [device]` ... `@@rc N` blocks; output before a `@@busy` was a busy answer."""
    out: dict[str, Section] = {}
    name: str | None = None
    buf: list[str] = []
    busy = 0
    for line in stdout.splitlines():
        if line.startswith("@@"):
            word = line[2:]
            if word == "busy":
                buf, busy = [], busy + 1
                continue
            if word.startswith("rc ") and name is not None:
                rc = int(word[3:]) if word[3:].strip().lstrip("-").isdigit() else None
                out[name] = Section("\n".join(buf), rc, busy)
                name = None
                continue
            if name is not None:  # a section that never printed its rc
                out[name] = Section("\n".join(buf), None, busy)
            name, buf, busy = word, [], 0
            continue
        if name is not None:
            buf.append(line)
    if name is not None:
        out[name] = Section("\n".join(buf), None, busy)
    return out


@dataclass
class DeviceFacts:
    device: int
    sections: dict[str, Section] = field(default_factory=dict)
    link: str | None = None
    net_health: str | None = None
    netdetect: str | None = None
    gateway: str | None = None
    ip: str | None = None
    netmask: str | None = None
    tls: int | None = None
    lldp: str | None = None
    vnic_link: str | None = None
    vnic_ip: str | None = None
    vnic_mask: str | None = None
    sdid: int | None = None
    super_pod_id: str | None = None
    server_index: str | None = None

    def section(self, name: str) -> Section:
        return self.sections.get(name, Section("", None))


@dataclass
class NodeFacts:
    node: str
    sections: dict[str, Section]
    npu_total: int | None = None
    chip_count: int | None = None
    phys: list[int] = field(default_factory=list)
    chip_name: str | None = None
    driver: str | None = None
    firmware: str | None = None
    cann: str | None = None
    npu: P.NpuInfo = field(default_factory=P.NpuInfo)
    conf: dict[str, str] | None = None
    devices: dict[int, DeviceFacts] = field(default_factory=dict)

    @property
    def soc(self) -> str | None:
        if self.chip_count is None:
            return None
        return "a3" if self.chip_count >= 2 else "a2"

    def chip_of(self, device: int) -> tuple[int, int]:
        """(NPU id, chip id) of a phy device id: A3 has two dies per NPU."""
        per = 2 if self.soc == "a3" else 1
        return device // per, device % per


def node_facts(node: str, stdout: str, devices: list[int]) -> NodeFacts:
    secs = parse_sections(stdout)
    f = NodeFacts(node, secs)
    get = lambda name: secs.get(name, Section("", None))  # noqa: E731
    f.npu_total, f.chip_count = P.npu_count(get("npu-l").text)
    chips = P.chip_map(get("npu-m").text)
    f.phys = sorted(c.phy for c in chips)
    f.chip_name = chips[0].name if chips else None
    f.npu = P.npu_info(get("npu-info").text)
    f.driver = f.npu.version
    f.firmware = P.kv_field(get("board").text, "Firmware Version")
    cann = get("cann")
    f.cann = P.version_info(cann.text) if cann.rc == 0 else None
    conf = get("hccn-conf")
    f.conf = P.hccn_conf(conf.text) if conf.rc == 0 else None
    per_device: dict[int, dict[str, Section]] = {d: {} for d in devices}
    for key, sec in secs.items():  # "link 3" -> device 3's "link"
        name, _, dev_id = key.partition(" ")
        if dev_id.isdigit() and int(dev_id) in per_device:
            per_device[int(dev_id)][name] = sec
    for d in devices:
        dev = DeviceFacts(d, per_device[d])
        dev.link = P.link_status(dev.section("link").text)
        dev.net_health = P.net_health(dev.section("net_health").text)
        dev.netdetect = P.netdetect(dev.section("netdetect").text)
        dev.gateway = P.gateway(dev.section("gateway").text)
        dev.ip, dev.netmask = P.ip_config(dev.section("ip").text)
        tls = dev.section("tls")
        dev.tls = P.tls_switch(tls.text)
        if dev.tls is None and tls.rc == 14:
            dev.tls = 0  # no certificate: TLS cannot be on
        dev.lldp = P.lldp_ifname(dev.section("lldp").text)
        if "vnic" in dev.sections:
            dev.vnic_link, dev.vnic_ip, dev.vnic_mask = P.vnic(dev.section("vnic").text)
        if "spod" in dev.sections and dev.section("spod").rc == 0:
            text = dev.section("spod").text
            sdid = P.kv_field(text, "SDID")
            dev.sdid = int(sdid) if sdid and sdid.isdigit() else None
            dev.super_pod_id = P.kv_field(text, "Super Pod ID")
            dev.server_index = P.kv_field(text, "Server Index")
        f.devices[d] = dev
    return f
