"""The judgement: facts -> checks with the observed line, the reason and the fix command.

Pure functions over `NodeFacts`, so every rule is unit-testable from captured tool output.
Thresholds follow the Ascend tools' documented meanings (net health: pass Success, warn Init and
Detect ip set) and vllm-ascend.md §5.1 / §6 (TLS identical everywhere, hccn.conf = live IP).
"""
from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict

from ..nodeset import fold
from .facts import DeviceFacts, NodeFacts
from .model import Check
from .parsers import first_line

NET_HEALTH_WARN = {"Init", "Detect ip set"}
HBM_BUSY_FRACTION = 0.5  # HBM used above this with no process listed: held by a zombie


def _observed(dev: DeviceFacts, section: str) -> str:
    sec = dev.section(section)
    line = first_line(sec.text)
    if sec.rc not in (0, None) and not line:
        return f"rc {sec.rc}, no output"
    if sec.rc not in (0, None):
        return f"{line} (rc {sec.rc})"
    return line or "(no output)"


def _busy_failure(node: str, dev: DeviceFacts, section: str) -> Check | None:
    sec = dev.section(section)
    if sec.rc == 11:
        return Check(node, section, "fail", _observed(dev, section),
                     f"hccn_tool stayed busy after {sec.busy} retries",
                     "another tool is using hccn_tool on this node; re-run when it is done", dev.device)
    if sec.rc is None:
        return Check(node, section, "fail", "(no result)", "the command did not finish on the node",
                     f"run: hccn_tool -i {dev.device} -{section} -g", dev.device)
    return None


def device_checks(node: str, soc: str, dev: DeviceFacts, conf: dict[str, str] | None,
                  busy_is_error: bool, npu_chip: dict | None, procs: list) -> list[Check]:
    d = dev.device
    out: list[Check] = []

    def add(check: str, status: str, observed: str, reason: str = "", fix: str = "") -> None:
        out.append(Check(node, check, status, observed, reason, fix, d))  # type: ignore[arg-type]

    for section in ("link", "net_health", "ip", "tls", "netdetect", "gateway", "lldp"):
        failure = _busy_failure(node, dev, section)
        if failure:
            out.append(failure)
    done = {c.check for c in out}

    if "link" not in done:
        if dev.link == "UP":
            add("link", "ok", _observed(dev, "link"))
        else:
            add("link", "fail", _observed(dev, "link"), "RoCE port is not UP",
                f"check the cable and optics (hccn_tool -i {d} -optical -g) and the switch port "
                f"(hccn_tool -i {d} -lldp -g); then hccn_tool -i {d} -link -g")
    if "net_health" not in done:
        h = dev.net_health
        if h == "Success":
            add("net_health", "ok", _observed(dev, "net_health"))
        elif h in NET_HEALTH_WARN:
            add("net_health", "warn", _observed(dev, "net_health"), f"net health probe is '{h}' (not yet Success)",
                f"set the probe target: hccn_tool -i {d} -netdetect -s address <gateway>; re-check in a minute")
        else:
            add("net_health", "fail", _observed(dev, "net_health"),
                f"net health is '{h}'" + (" although the link is UP: netdetect or gateway is wrong"
                                            if dev.link == "UP" else ""),
                f"check hccn_tool -i {d} -netdetect -g and -gateway -g; fix with hccn_tool -i {d} -netdetect -s "
                f"address <gateway> and hccn_tool -i {d} -gateway -s gateway <gateway>")
    if "ip" not in done:
        if dev.ip and dev.netmask:
            add("ip", "ok", f"ipaddr:{dev.ip} netmask:{dev.netmask}")
        else:
            add("ip", "fail", _observed(dev, "ip"), "the device has no IP (HCCL and Mooncake need one)",
                f"hccn_tool -i {d} -ip -s address <ip> netmask <mask> (and address_{d}/netmask_{d} in /etc/hccn.conf)")
    for check, value, missing, fix in (
            ("netdetect", dev.netdetect, "no net-detect address is set", f"hccn_tool -i {d} -netdetect -s address <gateway>"),
            ("gateway", dev.gateway, "no default gateway is set", f"hccn_tool -i {d} -gateway -s gateway <gateway>")):
        if check in done:
            continue
        if value:
            add(check, "ok", _observed(dev, check))
        else:
            add(check, "warn", _observed(dev, check), missing, fix)
    if "lldp" not in done:
        if dev.lldp:
            add("lldp", "ok", f"Ifname: {dev.lldp}")
        else:
            add("lldp", "warn", _observed(dev, "lldp"), "no switch neighbour (LLDP Ifname) is seen",
                f"check the cable, optics and switch LLDP: hccn_tool -i {d} -optical -g")
    if "tls" not in done:
        add("tls", "ok", _observed(dev, "tls") if dev.tls is not None else "(no switch line)",
            "" if dev.tls is not None else "TLS state unknown")
    # /etc/hccn.conf must carry the live IP: HCCL and Mooncake read device IPs from it.
    if conf is None:
        add("hccn_conf", "fail", "/etc/hccn.conf missing or unreadable", "HCCL/Mooncake read device IPs from it",
            "restore /etc/hccn.conf (hccn_tool -i N -ip -s writes it) and mount it into the container")
    elif dev.ip:
        want = conf.get(f"address_{d}")
        if want == dev.ip:
            add("hccn_conf", "ok", f"address_{d}={want}")
        else:
            add("hccn_conf", "fail", f"address_{d}={want or '(missing)'}, live ipaddr:{dev.ip}",
                "/etc/hccn.conf differs from the live device IP (the service starts and answers garbage)",
                f"set address_{d}={dev.ip} in /etc/hccn.conf, or re-apply with hccn_tool -i {d} -ip -s address "
                f"{dev.ip} netmask {dev.netmask}")
    if soc == "a3":
        if dev.vnic_ip and dev.vnic_link == "UP":
            add("vnic", "ok", f"vnic ipaddr: {dev.vnic_ip}")
        else:
            add("vnic", "fail", _observed(dev, "vnic"), "the HCCS vNIC is down or has no IP",
                f"hccn_tool -i {d} -vnic -g; check the Super Pod HCCS links")
        if dev.sdid is not None:
            add("spod", "ok", f"SDID {dev.sdid}, Super Pod ID {dev.super_pod_id}, Server Index {dev.server_index}")
        else:
            add("spod", "fail", _observed(dev, "spod"), "no SDID from npu-smi spod-info",
                f"npu-smi info -t spod-info -i {d // 2} -c {d % 2}")
    if npu_chip is None:
        add("health", "fail", "(not in npu-smi info)", "the device is not listed by npu-smi info",
            "check the driver: npu-smi info")
    else:
        health = npu_chip["health"]
        status = "ok" if health == "OK" else ("warn" if health == "Warning" else "fail")
        npu = d // 2 if soc == "a3" else d
        add("health", status, f"Health {health}", "" if status == "ok" else f"npu-smi reports {health}",
            "" if status == "ok" else f"npu-smi info -t health -i {npu} -c {d % 2 if soc == 'a3' else 0} "
            "shows the error code; clear the fault or reset the NPU")
        used, total = npu_chip["hbm_used"], npu_chip["hbm_total"]
        bad = "fail" if busy_is_error else "warn"
        if procs:
            names = ", ".join(f"pid {p.pid} {p.name} ({p.memory_mb} MB)" for p in procs)
            add("hbm", bad, f"HBM {used} / {total} MB; {names}", "the device is in use by another process",
                "stop it: kill " + " ".join(str(p.pid) for p in procs) + " (or deploy teardown)")
        elif total and used > total * HBM_BUSY_FRACTION:
            add("hbm", bad, f"HBM {used} / {total} MB, no process listed", "HBM is held (zombie worker?)",
                "find and kill the holder (ps -ef | grep VLLM), or restart the container")
        else:
            add("hbm", "ok", f"HBM {used} / {total} MB")
    return out


def node_checks(node: str, expected_soc: str, facts: NodeFacts, devices: list[int],
                busy_is_error: bool = False) -> list[Check]:
    out: list[Check] = []
    soc = facts.soc
    if soc is None:
        sec = facts.sections.get("npu-l")
        out.append(Check(node, "soc", "fail", first_line(sec.text) if sec else "(no output)",
                         "npu-smi info -l gave no Chip Count: is the driver installed?", "npu-smi info -l"))
        return out
    if soc != expected_soc:
        out.append(Check(node, "soc", "fail", f"Chip Count : {facts.chip_count}",
                         f"the inventory says soc {expected_soc}, the node is {soc}",
                         f"set soc: {soc} in the inventory, or check the node"))
        return out
    out.append(Check(node, "soc", "ok", f"{soc}: {facts.npu_total} NPUs x {facts.chip_count} chips ({facts.chip_name})"))
    missing = [d for d in devices if facts.phys and d not in facts.phys]
    if missing:
        out.append(Check(node, "devices", "fail", f"phy ids present: {facts.phys}",
                         f"planned devices {missing} are not present", "npu-smi info -m; check the driver and cards"))
    for d in devices:
        if d in missing:
            continue
        npu, chip = facts.chip_of(d)
        procs = [p for p in facts.npu.processes if (p.npu, p.chip) == (npu, chip)]
        out += device_checks(node, soc, facts.devices[d], facts.conf, busy_is_error,
                             facts.npu.chips.get((npu, chip)), procs)
    return out


# ---------------------------------------------------------------- across nodes


def _where(items: list[tuple[str, int]]) -> str:
    """`p1 dev 3,5; d0 dev 1` from (node, device) pairs, nodes with the same devices folded."""
    by_node: dict[str, list[int]] = defaultdict(list)
    for node, dev in items:
        by_node[node].append(dev)
    by_devs: dict[tuple, list[str]] = defaultdict(list)
    for node, devs in by_node.items():
        by_devs[tuple(sorted(devs))].append(node)
    return "; ".join(f"{fold(nodes)} dev {','.join(map(str, devs))}" for devs, nodes in by_devs.items())


def cluster_checks(facts: dict[str, NodeFacts], devices: dict[str, list[int]]) -> tuple[list[Check], list[str]]:
    out: list[Check] = []
    summary: list[str] = []
    used = [(n, d, facts[n].devices[d]) for n in facts for d in devices[n] if d in facts[n].devices]

    # TLS identical on every used device of every node (HCCL EI0016 otherwise).
    tls = [(n, d, dev.tls) for n, d, dev in used if dev.tls is not None]
    counts = Counter(v for _, _, v in tls)
    if len(counts) > 1:
        majority = counts.most_common(1)[0][0]
        minority = [(n, d) for n, d, v in tls if v != majority]
        word = {0: "off", 1: "on"}
        summary.append(f"tls {word[1 - majority]}: {_where(minority)}; {word[majority]}: everywhere else")
        for n, d in minority:
            out.append(Check(n, "tls", "fail", f"tls switch[{1 - majority}]",
                             f"TLS is {word[1 - majority]} here but {word[majority]} on every other used device "
                             "(HCCL EI0016 / EI0006 at start-up)",
                             f"hccn_tool -i {d} -tls -s enable {majority}  (or: deploy check-network "
                             f"INVENTORY --fix-tls {word[majority]})", d))
    elif counts:
        summary.append(f"tls {'on' if next(iter(counts)) else 'off'} on all {len(tls)} used devices")

    # Device IPs unique: RoCE across the cluster, vNIC (HCCS) within each Super Pod.
    for kind, attr in (("ip", "ip"), ("vnic", "vnic_ip")):
        owners: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
        for n, d, dev in used:
            value = getattr(dev, attr)
            if value:
                owners[(value, dev.super_pod_id if kind == "vnic" else None)].append((n, d))
        for (addr, pod), where in owners.items():
            if len(where) < 2:
                continue
            scope = f" in Super Pod {pod}" if kind == "vnic" else ""
            fix = ("give one of them another address: hccn_tool -i {d} -ip -s address <unique ip> netmask <mask>"
                   if kind == "ip" else "check the Super Pod's vNIC plan (npu-smi info -t spod-info; hccn_tool -i {d} -vnic -g)")
            for n, d in where:
                others = [w for w in where if w != (n, d)]
                out.append(Check(n, f"{kind}_unique", "fail", addr,
                                 f"{kind} address {addr} is also on {_where(others)}{scope}", fix.format(d=d), d))

    # One subnet per plane (device index) across nodes.
    planes: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for n, d, dev in used:
        if dev.ip and dev.netmask:
            try:
                net = str(ipaddress.IPv4Network(f"{dev.ip}/{dev.netmask}", strict=False))
            except ValueError:
                continue
            planes[d].append((n, net))
    for d, entries in sorted(planes.items()):
        nets = Counter(net for _, net in entries)
        if len(nets) > 1:
            common = nets.most_common(1)[0][0]
            for node, subnet in entries:
                if subnet != common:
                    out.append(Check(node, "subnet", "fail", f"device {d} in {subnet}",
                                     f"plane {d} is {common} on the other nodes",
                                     f"put device {d} in {common}: hccn_tool -i {d} -ip -s address <ip in {common}> "
                                     "netmask <mask>", d))

    # A3: SDID unique within a Super Pod; one Server Index per node.
    sdids: dict[tuple[str | None, int], list[tuple[str, int]]] = defaultdict(list)
    for n, d, dev in used:
        if dev.sdid is not None:
            sdids[(dev.super_pod_id, dev.sdid)].append((n, d))
    for (pod, sdid), where in sdids.items():
        if len(where) > 1:
            for n, d in where:
                out.append(Check(n, "sdid_unique", "fail", f"SDID {sdid} in Super Pod {pod}",
                                 f"SDID {sdid} is shared with {_where([w for w in where if w != (n, d)])} (HCCL EI0014)",
                                 "check the Super Pod configuration (npu-smi info -t spod-info)", d))
    for n in facts:
        idx = {dev.server_index for dev in facts[n].devices.values() if dev.server_index is not None}
        if len(idx) > 1:
            out.append(Check(n, "server_index", "fail", f"Server Index {sorted(idx)}",
                             "NPUs of one node report different Server Indexes", "npu-smi info -t spod-info"))

    # Driver, firmware and CANN the same everywhere: majority once, outliers named.
    for what in ("driver", "firmware", "cann"):
        values = {n: getattr(f, what) for n, f in facts.items() if getattr(f, what)}
        counts = Counter(values.values())
        if not counts:
            continue
        majority = counts.most_common(1)[0][0]
        outliers = {n: v for n, v in values.items() if v != majority}
        if outliers:
            summary.append(f"{what} {majority} on {len(values) - len(outliers)} nodes; differs on "
                           + ", ".join(f"{n} ({v})" for n, v in outliers.items()))
            for n, v in outliers.items():
                out.append(Check(n, what, "fail", f"{what} {v}", f"every other node has {what} {majority}",
                                 f"upgrade/downgrade {n} to {what} {majority}"))
        else:
            summary.append(f"{what} {majority} on all {len(values)} nodes")
    return out, summary
