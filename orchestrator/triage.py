"""Live triage: known failure signatures of a vLLM-Ascend bring-up, as one data table.

Why: on a real cluster the bring-up fails often and in known ways, each with a recognisable log
line (vllm-ascend's issue threads and multi-node failure reports, the HCCL
error codes (EI0001..EI0020). An operator should read "which node, which device, why, what
to change" while `deploy up` is still waiting, not after an hour of reading rank logs. `up` and
`status` feed each rank's log tail to `match()` and print the findings with the rank's node (and
device, from the plan, when the line does not name one).

Design:
- ONE table (`SIGNATURES`), ordered most specific first; `match()` walks it in order, so a
  finding about the root cause (TLS mismatch) comes before the generic consequence (engine core
  initialisation failed). Fallback signatures (`fallback=True`) only speak when nothing more
  specific did; `supersedes` drops a more generic finding the same failure also printed.
- Patterns match within one line (no DOTALL): a log tail is scanned with `finditer`, the most
  recent occurrence wins (a looping error is reported as it is now).
- Values (device, PID, port, IP, sizes) come from named groups; `cause` and `fix` are templates
  over them, so the finding says "kv_port 20002" rather than "a port". A few signatures refine
  the text from the values (`refine`): the kv_port inside the transfer engine's random range,
  the HCCL_BUFFSIZE to set, which TLS list is the odd one out.
- Bounded: at most the last MiB of a tail and 8 KiB of a line are scanned (about 1.5 ms per
  64 KiB tail on this machine), so a hostile or runaway log cannot stall `up`.
- Pure: no I/O, no clock. docs/troubleshooting.md is generated from the table
  (`python -m orchestrator.triage > docs/troubleshooting.md`) and a test checks it is current.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .plan import MOONCAKE_TE_BASE

Severity = Literal["fatal", "error", "warning"]
# what a finding is about, so the caller knows what to name and what to restart:
#   device: the rank's NPU(s) (the caller adds the rank's devices when the line names none)
#   rank:   this process (its flags, env, ports)
#   node:   the host (files, NIC, leftover processes)
#   group:  the DP group as a whole (start skew, a dead master): restart the whole group
Scope = Literal["device", "rank", "node", "group"]

LINE_MAX = 300  # a finding quotes at most this much of the matched line
SCAN_MAX = 1 << 20  # match() reads at most the last MiB of a tail ...
SCAN_LINE_MAX = 8192  # ... and the first 8 KiB of a line: bounded work whatever a node sends
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Signature:
    """One known failure: how to recognise it and what to tell the operator.

    `patterns` are tried in order (the first is the most telling line); named groups `device`,
    `pid`, `port`, `ip` become Finding fields, any other named group goes to `Finding.values`.
    `cause`/`fix` are `str.format` templates over those values. `names_device` says whether the
    line itself carries the device id (else the caller attaches the rank's devices). `example`
    is a real line (from the references) shown in docs/troubleshooting.md; `source` says where
    it was seen.
    """
    id: str
    title: str
    patterns: tuple[re.Pattern[str], ...]
    cause: str
    fix: str
    severity: Severity
    scope: Scope
    example: str
    source: str
    names_device: bool = False
    fallback: bool = False
    supersedes: tuple[str, ...] = ()
    refine: Callable[[dict[str, str], Context], dict[str, str]] | None = None


@dataclass(frozen=True)
class Context:
    """What the caller knows that the log line does not (optional; defaults are conservative)."""
    npus_per_node: int | None = None  # sizes the Mooncake transfer engine's random port range


@dataclass
class Finding:
    """A matched signature: what `up`/`status` print (with the rank's node) and put in --json."""
    id: str
    title: str
    severity: Severity
    scope: Scope
    cause: str
    fix: str
    line: str
    device: int | None = None
    pid: int | None = None
    port: int | None = None
    ip: str | None = None
    values: dict[str, str] = field(default_factory=dict)

    def headline(self, node: str, devices: Sequence[int] = ()) -> str:
        """One console line: where (the rank's node; the device the line names, else the rank's
        devices when the finding is about devices), what, why, and the fix. A device named by the
        line may sit on another node of the group (TLS lists): its IP is then given with it."""
        if self.device is not None:
            where = f"{node} (device {self.device}" + (f" of {self.ip}" if self.ip and self.scope == "device" else "") + ")"
        elif devices and self.scope == "device":
            where = f"{node} (device{'s' if len(devices) > 1 else ''} {','.join(str(d) for d in devices)})"
        else:
            where = node
        return f"{where}: {self.title}. {self.cause} Fix: {self.fix}"

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "severity": self.severity, "scope": self.scope,
                "cause": self.cause, "fix": self.fix, "line": self.line, "device": self.device,
                "pid": self.pid, "port": self.port, "ip": self.ip, "values": dict(self.values)}


def _re(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


class _Blank(dict[str, str]):
    """format_map helper: a value the line did not give reads as <name>."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


_OPTIONAL = re.compile(r"\[\[(.*?)\]\]")
_FIELD = re.compile(r"\{(\w+)\}")


def _fill(template: str, values: dict[str, str] | None) -> str:
    """Format a cause/fix template. A `[[...]]` part is kept only when the line gave all its values
    (so a finding never reads "connect to <ip>"); `values=None` renders the docs (placeholders kept)."""
    def part(m: re.Match[str]) -> str:
        if values is None or all(k in values for k in _FIELD.findall(m.group(1))):
            return m.group(1)
        return ""
    return _OPTIONAL.sub(part, template).format_map(_Blank(values or {}))


# --- refinements: text that depends on the extracted values -------------------------------------

def _te_range(ctx: Context) -> tuple[int, int, str]:
    if ctx.npus_per_node:
        hi = MOONCAKE_TE_BASE + ctx.npus_per_node * 1000
        return MOONCAKE_TE_BASE, hi, f"{ctx.npus_per_node} NPUs per node"
    return MOONCAKE_TE_BASE, MOONCAKE_TE_BASE + 16 * 1000, "up to 16 NPUs per node"


def _refine_port_range(v: dict[str, str], ctx: Context) -> dict[str, str]:
    """A ZMQ port inside AscendDirectTransport's random range collides by chance (vllm-ascend #8938)."""
    port = v.get("port")
    lo, hi, what = _te_range(ctx)
    if port is not None and lo <= int(port) < hi:
        return {"range_note": (f" Port {port} lies inside the Mooncake transfer engine's random port range "
                               f"{lo}..{hi - 1} ({what}), so it collides by chance."),
                "range_fix": (f" Move kv_port out of that range: kv_port >= {hi} (PR #6455: >= 28000 with "
                              "8 NPUs, >= 36000 with 16), disjoint between groups.")}
    return {"range_note": "", "range_fix": ""}


def _refine_buffsize(v: dict[str, str], ctx: Context) -> dict[str, str]:
    """Suggest the needed size rounded up to 64 MB (HCCL_BUFFSIZE is in MB)."""
    need = v.get("needed_mb")
    if need is None:
        return {"suggest": "raise it (the guides use P 256..1024, D 600..1800)"}
    mb = -(-int(need) // 64) * 64
    return {"suggest_mb": str(mb), "suggest": f"HCCL_BUFFSIZE={mb} (the {need} MB needed, rounded up to 64)"}


_TLS_ITEM = re.compile(r"([0-9A-Fa-f:.]+)/(\d+)")


def _refine_tls(v: dict[str, str], ctx: Context) -> dict[str, str]:
    """Name the odd ones out: the shorter of the enabled/disabled lists holds the devices to change."""
    on = _TLS_ITEM.findall(v.get("enabled", ""))
    off = _TLS_ITEM.findall(v.get("disabled", ""))
    odd, state = (on, "enabled") if on and (len(on) <= len(off) or not off) else (off, "disabled")
    if not odd:
        return {}
    out = {"odd_state": state, "odd": ", ".join(f"{ip} device {d}" for ip, d in odd)}
    out["ip"], out["device"] = odd[0]
    return out


def _refine_kv_config(v: dict[str, str], ctx: Context) -> dict[str, str]:
    key = "dp_size" if v.get("what") == "data" else "tp_size"
    return {"key": key}


_PORT_TOOL = "[[`ss -ltnp 'sport = :{port}'`, ]]"

# --- the table --------------------------------------------------------------------------------

SIGNATURES: tuple[Signature, ...] = (
    Signature(
        id="hccl-tls-mismatch",
        title="HCCL TLS switch differs between devices (EI0016)",
        patterns=_re(r'EI0016.*Value (?P<state>\w+) for config "tls" is invalid'
                     r'.*rankList for enabled tls:\[(?P<enabled>[^\]]*)\]'
                     r'(?:; rankList for disabled tls:\[(?P<disabled>[^\]]*)\])?',
                     r'Value (?P<state>\w+) for config "tls" is invalid'),
        cause=("The devices of this communicator do not agree on the TLS switch (hccn_tool -tls)"
               "[[: the odd ones out ({odd_state}) are {odd}]]; HCCL refuses to build the communicator on every rank."),
        fix=("Make the switch equal everywhere, usually off: `hccn_tool -i <dev> -tls -s enable 0` on every "
             "device of every node (check with `deploy check-network`), then restart the whole group."),
        severity="fatal", scope="device", names_device=True, refine=_refine_tls,
        example=('EI0016: [PID: 1292363] 2025-04-08-18:07:20.444.436 Value Disable for config "tls" is invalid. '
                 'Expected Value:"All ranks are consistent. Current status : rankList for enabled '
                 'tls:[10.78.106.107/0]; rankList for disabled tls:[10.78.106.108/0, 10.78.106.108/1]; '
                 'rankList for query failure tls:".'),
        source="HCCL error registry EI0016 (HDK >= 25.2.0); vllm-ascend #10224, PR #5638"),
    Signature(
        id="hccl-buffsize-small",
        title="HCCL_BUFFSIZE too small for MoE dispatch/combine",
        patterns=_re(r"HCCL_BUFFSIZE is too SMALL.*NEEDED_HCCL_BUFFSIZE.*?=\s*(?P<needed_mb>\d+)\s*MB"
                     r"(?:,\s*HCCL_BUFFSIZE=(?P<current_mb>\d+)\s*MB)?",
                     r"HCCL_BUFFSIZE is too SMALL",
                     r"The DDR address of the MTE instruction is out of range"),
        cause=("The MoE dispatch/combine kernels need a larger HCCL communication buffer than "
               "HCCL_BUFFSIZE[[={current_mb} MB]] gives[[ ({needed_mb} MB needed)]]."),
        fix="Set HCCL_BUFFSIZE (in MB) in the group's env: {suggest}; then restart the group.",
        severity="fatal", scope="group", refine=_refine_buffsize,
        example=("EZ9999: Inner Error! HCCL_BUFFSIZE is too SMALL, maxBs = 256, h = 7168, epWorldSize = 32, "
                 "localMoeExpertNum = 8, tokenNeedSizeDispatch = 7296, tokenNeedSizeCombine = 14336, k = 8, "
                 "NEEDED_HCCL_BUFFSIZE(((maxBs * tokenNeedSizeDispatch) + (maxBs * tokenNeedSizeCombine * k) + 3MB) "
                 "* 2) = 609MB, HCCL_BUFFSIZE=200MB."),
        source="vllm-ascend PR #5287, #2674 (older: 'The DDR address of the MTE instruction is out of range')"),
    Signature(
        id="kv-extra-config-mismatch",
        title="kv_connector_extra_config sizes differ from the instance",
        patterns=_re(r"KV transfer '(?P<role>prefill|decode)' config has a conflicting "
                     r"(?P<what>data|tensor) parallel size\. Expected (?P<expected>\d+), but got (?P<got>\d+)"),
        cause=("kv_connector_extra_config.{role}.{key} says {got}, but this {role} instance runs with "
               "{expected}; vllm-ascend refuses to start."),
        fix=("Set kv_connector_extra_config.{role}.{key} to {expected} for every instance (the sizes of the "
             "{role} groups), or change the {role} group's parallel size to {got}."),
        severity="fatal", scope="rank", refine=_refine_kv_config,
        example=("ValueError: KV transfer 'decode' config has a conflicting data parallel size. "
                 "Expected 16, but got 32."),
        source="vllm-ascend check_kv_extra_config (vllm_ascend/utils.py)"),
    Signature(
        id="kv-tp-order",
        title="Mooncake: prefill TP smaller than decode TP",
        patterns=_re(r"prefill_tp_size: (?P<prefill_tp>\d+) must be greater than or equal to the "
                     r"decode_tp_size: (?P<decode_tp>\d+)"),
        cause="The Mooncake connector needs prefill tp_size >= decode tp_size (got {prefill_tp} < {decode_tp}).",
        fix=("Give the prefill groups a tensor-parallel size >= {decode_tp} (and kv_connector_extra_config."
             "prefill.tp_size to match), or lower the decode TP."),
        severity="fatal", scope="rank",
        example="ValueError: prefill_tp_size: 1 must be greater than or equal to the decode_tp_size: 2",
        source="vllm-ascend mooncake_connector.py"),
    Signature(
        id="hccn-conf-missing",
        title="Device IPs not visible to HCCL (hccn.conf not mounted)",
        patterns=_re(r"HCCL\((?P<pid>\d+),[^)\n]*\)[^\n]*\[RanktablCheck\] 'device ip' is not set correctly",
                     r"\[RanktablCheck\] 'device ip' is not set correctly"),
        cause=("HCCL inside the container cannot read the device IPs (usually /etc/hccn.conf is not mounted, or "
               "lacks this device's address_<id>); the rank starts but KV transfer breaks and it answers garbage."),
        fix=("Mount /etc/hccn.conf (and hccn_tool) into the container: `-v /etc/hccn.conf:/etc/hccn.conf`, "
             "check `cat /etc/hccn.conf` lists address_<id> for every device, then restart the group."),
        severity="error", scope="node",
        example=("[ERROR] HCCL(2818,python3):2025-07-01-10:00:00.123.456 [topoinfo_ranktableParser_pub.cc:1224]"
                 "[2818][RanktablCheck] 'device ip' is not set correctly, must be set when multi Server or HCCL "
                 "INTRA ROCE ENABLE enabled"),
        source="vllm-ascend #7711"),
    Signature(
        id="ranktable-server-id",
        title="Rank table has no entry for this host/device",
        patterns=_re(r"Can't read the target server_id (?P<ip>[0-9A-Fa-f:.]+) and device_rank "
                     r"(?P<device_rank>\d+) from rank table"),
        cause=("The rank table has no entry with server_id {ip} and device rank {device_rank}: server_id must be "
               "the IP vLLM sees for this host (VLLM_HOST_IP or the default route's source) and device ids the ones "
               "in ASCEND_RT_VISIBLE_DEVICES."),
        fix=("Regenerate the table from live facts (`deploy ranktable`), set VLLM_HOST_IP to the IP used as "
             "server_id, and mount every card the table lists (physical vs logical ids, #2618)."),
        severity="fatal", scope="node",
        example="Can't read the target server_id 141.61.39.105 and device_rank 3 from rank table",
        source="vllm-ascend llmdatadist_c_mgr_connector.py (v0.11)"),
    Signature(
        id="ranktable-missing",
        title="LLMDataDist rank table not given or not in the container",
        patterns=_re(r"Please set path of rank_table to env variable DISAGGREGATED_PREFILL_RANK_TABLE_PATH",
                     r"No such file or directory: '(?P<path>[^']*rank_?table[^']*)'"),
        cause=("The LLMDataDist connector found no rank table[[ at {path}]]: DISAGGREGATED_PREFILL_RANK_TABLE_PATH "
               "is unset or names a file the container does not see."),
        fix=("Write the table (`deploy ranktable`), mount its folder into the container and set "
             "DISAGGREGATED_PREFILL_RANK_TABLE_PATH to the path inside the container."),
        severity="fatal", scope="node",
        example=("AssertionError: Please set path of rank_table to env variable "
                 "DISAGGREGATED_PREFILL_RANK_TABLE_PATH"),
        source="vllm-ascend llmdatadist_c_mgr_connector.py, envs.py (v0.11)"),
    Signature(
        id="ranktable-invalid",
        title="Rank table rejected (EI0004)",
        patterns=_re(r"Failed to parse the ranktable file (?P<path>\S+?)\.? Reason: (?P<reason>[^\n]*)"),
        cause="HCCL/LLMDataDist could not use the rank table {path}: {reason}",
        fix="Regenerate the table from live facts (`deploy ranktable`) and restart the group.",
        severity="fatal", scope="group",
        example=("EI0004: Failed to parse the ranktable file /var/tmp/deploy/x/ranktable.json. Reason: server_count "
                 "[3] is not equal to the number of servers in the table [2]"),
        source="HCCL registry EI0004"),
    Signature(
        id="ranktable-devid-mismatch",
        title="Rank table device id differs from the local device id",
        patterns=_re(r"ranktable config devId\[(?P<device>\d+)\], but local devId\[(?P<local>\d+)\]"),
        cause=("The rank table names device {device} but this process runs on local device {local}: the "
               "container mounts a subset of cards, so physical and logical ids differ."),
        fix="Mount all cards the table lists into the container, or regenerate the table (`deploy ranktable`).",
        severity="fatal", scope="device", names_device=True,
        example="ranktable config devId[1], but local devId[3]",
        source="vllm-ascend #2618, PR #2080"),
    Signature(
        id="hccl-port-busy",
        title="HCCL listen port already taken (EI0019/EI0020)",
        patterns=_re(r"\[HcclSocket\]\[Listen\].*listen on ip\[(?P<ip>[^\]]*)\] and specific port\[(?P<port>\d+)\]"
                     r".*port is being used",
                     r"The IP address (?P<ip>[0-9A-Fa-f:.]+) and port (?P<port>\d+) have already been bound",
                     r"EI00(?:19|20)\b.*Failed to enable listening"),
        cause=("HCCL could not listen[[ on {ip}:{port}]]: another process (a leftover rank, or a P and a D instance on "
               "the same NPUs/host) holds the port."),
        fix=("Find and stop the holder (" + _PORT_TOOL + "`npu-smi info`); for several processes per NPU set "
             "HCCL_NPU_SOCKET_PORT_RANGE, or move the host ports with HCCL_IF_BASE_PORT (CI uses 55000)."),
        severity="fatal", scope="node",
        example=("[ERROR] HCCL(3051,python3):2025-11-04-09:12:33.101.202 [HcclSocket][Listen] socket listen on "
                 "ip[192.168.1.100] and specific port[16666] fail, the port is being used by other process"),
        source="vllm-ascend #4725, PR #12318; HCCL registry EI0019/EI0020"),
    Signature(
        id="kv-side-channel-in-use",
        title="Mooncake side-channel (kv_port) already in use",
        patterns=_re(r"KVCacheSendingThread encountered exception.*listening_path=tcp://(?P<ip>[^:\s,]+):(?P<port>\d+)",
                     r"KVCacheSendingThread exception: Address already in use \(addr='tcp://(?P<ip>[^:']+):(?P<port>\d+)'\)"),
        cause=("The Mooncake KV sending thread could not bind tcp://{ip}:{port}: another instance's kv_port range "
               "overlaps, or the port was taken by the transfer engine.{range_note} The rank turns ready but "
               "cannot send KV."),
        fix=("Give each group a disjoint kv_port range and stagger starts.{range_fix}"),
        severity="error", scope="rank", refine=_refine_port_range, supersedes=("zmq-address-in-use",),
        example=("Mooncake KVCacheSendingThread exception: Address already in use "
                 "(addr='tcp://141.61.39.105:20002')"),
        source="vllm-ascend #8938, PR #6455"),
    Signature(
        id="zmq-address-in-use",
        title="ZMQ port already in use (DP RPC port or kv side channel)",
        patterns=_re(r"ZMQError: Address already in use \(addr='tcp://(?P<ip>[^:']+):(?P<port>\d+)'\)"),
        cause=("A ZMQ socket could not bind tcp://{ip}:{port}: another process holds it (a leftover rank, two "
               "groups sharing a DP RPC port or overlapping kv_port ranges).{range_note}"),
        fix=("Stop the holder (" + _PORT_TOOL + "`npu-smi info`) and give every group its own dp_rpc_port and a disjoint "
             "kv_port range.{range_fix}"),
        severity="fatal", scope="rank", refine=_refine_port_range,
        example="zmq.error.ZMQError: Address already in use (addr='tcp://141.61.39.105:20002')",
        source="vllm-ascend #8938, #16237/#15358 (get_open_port race)"),
    Signature(
        id="zmq-cannot-assign",
        title="DP address is not an address of this host",
        patterns=_re(r"ZMQError: Cannot assign requested address \(addr='tcp://(?P<ip>[^:']+):(?P<port>\d+)'\)"),
        cause="The group's front end cannot listen on {ip}: it is not an address of this node.",
        fix="Set the group's data-parallel address (dp master) to the IP of its first node's NIC.",
        severity="fatal", scope="group",
        example="zmq.error.ZMQError: Cannot assign requested address (addr='tcp://10.0.0.9:13389')",
        source="pyzmq EADDRNOTAVAIL; fake vllm (docs/simulator-runtime.md)"),
    Signature(
        id="http-port-in-use",
        title="API server port already in use",
        patterns=_re(r"error while attempting to bind on address \('(?P<ip>[^']*)', (?P<port>\d+)\)"
                     r".*address already in use",
                     r"OSError: \[Errno 98\] (?:error while attempting to bind on address.*: )?Address already in use"),
        cause="The API server could not bind its HTTP port[[ {port}]]: another process (often a previous vLLM) holds it.",
        fix="Find the holder (" + _PORT_TOOL + "`npu-smi info`) and stop it (`deploy teardown`), or move the group's port.",
        severity="fatal", scope="node",
        example="OSError: [Errno 98] Address already in use",
        source="vllm api_server.py setup_server; uvicorn"),
    Signature(
        id="hbm-held",
        title="NPU memory held by another process",
        patterns=_re(r"Free memory on device \((?P<free_gib>[\d.]+)/(?P<total_gib>[\d.]+) GiB\) on startup is less "
                     r"than desired GPU memory utilization \((?P<util>[\d.]+), (?P<want_gib>[\d.]+) GiB\)"),
        cause=("Only {free_gib} of {total_gib} GiB is free on the device, {want_gib} GiB wanted "
               "(gpu-memory-utilization {util}): a leftover process (often an orphaned VLLM::EngineCore) holds HBM."),
        fix=("Find the holder with `npu-smi info` (process table), kill its whole process group or restart the "
             "container (`deploy teardown`), check HBM is free, then start again."),
        severity="fatal", scope="device",
        example=("ValueError: Free memory on device (8.0/64.0 GiB) on startup is less than desired GPU memory "
                 "utilization (0.9, 57.6 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
                 "processes."),
        source="vllm-ascend #9888, #14628; vllm #32116"),
    Signature(
        id="gloo-loopback",
        title="Gloo bound to the loopback address",
        patterns=_re(r"Gloo connectFullMesh failed.*remote=\[(?P<ip>127\.[\d.]+)\](?::(?P<port>\d+))?",
                     r"Unable to resolve hostname to a \(local\) address\. Using the loopback address as fallback"),
        cause=("torch's gloo group bound to 127.0.0.1 (the hostname resolves to a loopback address and "
               "GLOO_SOCKET_IFNAME is not set in the engine process), so ranks on other nodes cannot connect."),
        fix=("Export GLOO_SOCKET_IFNAME, TP_SOCKET_IFNAME and HCCL_SOCKET_IFNAME (the NIC of HCCL_IF_IP) and "
             "HCCL_IF_IP on every rank, so they reach the engine cores; then restart the group."),
        severity="fatal", scope="group",
        example=("RuntimeError: Gloo connectFullMesh failed with [/pytorch/third_party/gloo/gloo/transport/tcp/"
                 "pair.cc:152] timed out connecting: SO_ERROR: Connection refused, remote=[127.0.0.1]:29500"),
        source="vllm-ascend #898, vllm #7074"),
    Signature(
        id="gloo-nic-missing",
        title="GLOO_SOCKET_IFNAME names no NIC of this node",
        patterns=_re(r"Unable to find address for: (?P<nic>\S+)"),
        cause="GLOO_SOCKET_IFNAME={nic} is not an interface of this node.",
        fix="Set GLOO_SOCKET_IFNAME (and TP_/HCCL_SOCKET_IFNAME) to the node's NIC (`ip -br addr`).",
        severity="fatal", scope="node",
        example=("RuntimeError: [enforce fail at ../third_party/gloo/gloo/transport/tcp/device.cc:83] "
                 "ifa != nullptr. Unable to find address for: eth9"),
        source="torch/gloo device.cc"),
    Signature(
        id="hccl-env-invalid",
        title="HCCL environment variable invalid (EI0001)",
        patterns=_re(r"(?m)Value (?P<value>\S+) for environment variable (?P<var>[A-Z_]+) is invalid\."
                     r"(?: Expected value ?: (?P<expected>[^\n]*?))?\.?\s*$"),
        cause="HCCL rejects {var}={value}[[ (expected: {expected})]].",
        fix=("Fix {var} in the rank's env (group or node env in the inventory); HCCL_IF_IP must be an IP of "
             "this node's host NIC."),
        severity="fatal", scope="rank",
        example="Value 1000 for environment variable HCCL_RDMA_SL is invalid. Expected value : range[0, 7].",
        source="HCCL registry EI0001"),
    Signature(
        id="hccl-rootinfo-timeout",
        title="HCCL root-info exchange timed out (EI0015)",
        patterns=_re(r"connect server\[(?P<ip>[0-9A-Fa-f:.]+) ?: ?(?P<port>\d+)\] failed",
                     r"EI0015.*topo exchange agent get socket timeout! timeout\[(?P<timeout_s>\d+)\]",
                     r"Failed to collect cluster information of the communicator based on rootInfo detection"),
        cause=("The ranks could not exchange HCCL root info over the host network: a wrong host NIC "
               "(HCCL_IF_IP / HCCL_SOCKET_IFNAME), a firewall on ports 60000+, or ranks started too far apart."),
        fix=("Set HCCL_IF_IP to this node's IP and HCCL_SOCKET_IFNAME to its NIC on every rank, open "
             "HCCL_IF_BASE_PORT..+31, start all ranks of the group together (raise HCCL_CONNECT_TIMEOUT if needed)."),
        severity="fatal", scope="group",
        example=("EI0015: [PID: 4242] 2025-05-01-12:00:00.000.000 Failed to collect cluster information of the "
                 "communicator based on rootInfo detection. Reason: topo exchange agent get socket timeout! "
                 "timeout[120]"),
        source="HCCL registry EI0015"),
    Signature(
        id="hccl-socket-timeout",
        title="HCCL device link setup timed out (EI0006)",
        patterns=_re(r"\|\s*(?P<ip>[0-9A-Fa-f:.]+)\((?P<rank>\d+)\)\s*\|\s*(?P<port>\d+)\s*\|.*\|\s*time out\s*\|"
                     r"\s*(?P<tls>ENABLE|DISABLE)\s*\|",
                     r"EI0006.*?(?:\[PID: (?P<pid>\d+)\])",
                     r"Get_Socket(?:_Timeout)?\(EI0006\)",  # also Communication_Error_Get_Socket(EI0006)
                     r"wait socket establish timeout, role\[\d+\] rank\[(?P<rank>\d+)\] timeout\[(?P<timeout_s>\d+) ?s\]",
                     r"Getting socket times out\.",
                     r"adjust the timeout interval by using the HCCL_CONNECT_TIMEOUT environment variable"),
        cause=("Device-to-device links did not come up within HCCL_CONNECT_TIMEOUT[[ (link to {ip}:{port} timed "
               "out, TLS {tls} on this side)]]: ranks of the group started too "
               "far apart, a rank died, a link is down or on another subnet, or TLS differs between devices."),
        fix=("Start every rank of the group together, run `deploy check-network` (link, TLS, ping), raise "
             "HCCL_CONNECT_TIMEOUT (120..7200 s; CI uses 1200), then restart the whole group."),
        severity="fatal", scope="group",
        example=("EI0006: [PID: 1292363] 2025-04-08-18:07:20.444.436 Getting socket times out. Reason: Remote Rank "
                 "did not send the data in time. Please check the reason for the rank being stuck"),
        source="vllm-ascend #486, #5461, #9447, PR #10949"),
    Signature(
        id="mooncake-connect-timeout",
        title="Mooncake transfer connect timeout (103902)",
        patterns=_re(r"Connect timeout to: ?(?P<ip>[0-9A-Fa-f:.]+):(?P<port>\d+)",
                     r"Transfer slice failed with status: 103902"),
        cause="The Mooncake transfer engine timed out connecting to the peer[[ {ip}:{port}]] (network, TLS or load).",
        fix=("Check the device network and TLS (`deploy check-network`) and raise ASCEND_CONNECT_TIMEOUT "
             "(the V4-Pro guide uses 10000)."),
        severity="error", scope="device",
        example=("Connect timeout to: 141.61.39.106:20033, you can increase the timeout duration to reduce the "
                 "failure rate by configuring the ASCEND_CONNECT_TIMEOUT environment variable"),
        source="vllm-ascend #7401"),
    Signature(
        id="mooncake-connect-failed",
        title="Mooncake cannot connect to the peer (103900)",
        patterns=_re(r"Failed to connect to target: ?(?P<ip>[0-9A-Fa-f:.]+):(?P<port>\d+), status: (?P<status>\d+)",
                     r"Mooncake transfer failed for request (?P<request>\S+?),? ret: -1"),
        cause=("KV transfer[[ to {ip}:{port}]] failed[[ (status {status})]]: CANN older than 8.3.RC1, an image without "
               "\"use_ascend_direct\": true, P and D on one host without HCCL_INTRA_ROCE_ENABLE=1, or device "
               "IPs missing (hccn.conf)."),
        fix=("Check the peer is up and reachable (`deploy check-network`), mount /etc/hccn.conf, set "
             "HCCL_INTRA_ROCE_ENABLE=1 when P and D share a host, use CANN >= 8.3.RC1."),
        severity="error", scope="device",
        example=("E1106 10:20:30.123456 12345 ascend_direct_transport.cpp:377] Failed to connect to target: "
                 "141.61.39.106:20033, status: 103900"),
        source="vllm-ascend #4866, #5635"),
    Signature(
        id="engine-ready-timeout",
        title="Engine cores did not become ready in time",
        patterns=_re(r"Timed out waiting for engine core processes to start.*?Waited (?P<waited_s>\d+)s",
                     r"Timed out waiting for engine core processes to start",
                     r"Timed out waiting for engines to send initial message on input socket"),
        cause=("The front end gave up[[ after {waited_s} s]] (VLLM_ENGINE_READY_TIMEOUT_S): weights loading or graph "
               "compile was slow, or a rank of the DP group never joined (not started, wrong data-parallel address "
               "or RPC port, firewall). Its engine cores may still be running and holding HBM."),
        fix=("Make sure every rank of the group started, raise VLLM_ENGINE_READY_TIMEOUT_S (default 600; CI 1800), "
             "then restart the whole group (kill the old engine cores first)."),
        severity="fatal", scope="group",
        example=("TimeoutError: Timed out waiting for engine core processes to start. This is often caused by slow "
                 "weight loading for large models. Waited 600s (configured by VLLM_ENGINE_READY_TIMEOUT_S). To "
                 "increase the timeout, set the environment variable: VLLM_ENGINE_READY_TIMEOUT_S=<seconds>"),
        source="vllm core_client.py; vllm PR #35616, vllm-ascend #3977, #2416"),
    Signature(
        id="frontend-handshake-timeout",
        title="Engine core got no handshake from its front end",
        patterns=_re(r"Did not receive response from front-end process within (?P<minutes>\d+) minutes"),
        cause=("The engine core waited {minutes} minutes for the DP group's front end: this rank started long "
               "before rank 0 / the head, or the head is gone."),
        fix="Start all ranks of a group together (the head first or at once), then restart the whole group.",
        severity="fatal", scope="group",
        example="RuntimeError: Did not receive response from front-end process within 5 minutes",
        source="vllm core.py HANDSHAKE_TIMEOUT_MINS; vllm-ascend #9317"),
    Signature(
        id="dist-connect-timeout",
        title="torch.distributed could not reach the master",
        patterns=_re(r"DistNetworkError: The client socket has timed out after (?P<ms>\d+)ms while trying to connect "
                     r"to \((?P<ip>[^,]+), (?P<port>\d+)\)"),
        cause="This rank could not reach the group's master at {ip}:{port} (master not started, wrong address, firewall).",
        fix="Check master-addr/master-port of the group and that node-rank 0 runs; restart the whole group.",
        severity="fatal", scope="group",
        example=("torch.distributed.DistNetworkError: The client socket has timed out after 600000ms while trying "
                 "to connect to (10.0.0.1, 13345)."),
        source="torch TCPStore; fake vllm (docs/simulator-runtime.md)"),
    Signature(
        id="tcpstore-closed",
        title="Head of the DP group is gone (TCPStore connection closed)",
        patterns=_re(r"recvValue failed on SocketImpl\(.*remote=\[(?P<ip>[^\]]+)\]:(?P<port>\d+)\).*"
                     r"Connection was likely closed",
                     r"Connection was likely closed\. Did the remote server shutdown or crash\?"),
        cause=("The DP group's head[[ ({ip}:{port})]] died; headless ranks loop on the TCPStore forever, never exit "
               "and keep their devices, even after the head restarts."),
        fix="Stop and restart every rank of the group on all its nodes (a headless node never recovers alone).",
        severity="fatal", scope="group",
        example=("[W1201 08:30:00.123456789 TCPStore.cpp:125] [c10d] recvValue failed on SocketImpl(fd=41, "
                 "addr=[10.0.0.2]:43041, remote=[10.0.0.1]:13345): Failed to recv, got 0 bytes. Connection was likely "
                 "closed. Did the remote server shutdown or crash?"),
        source="vllm #32136; pytorch #153586"),
    Signature(
        id="rpc-timeout",
        title="RPC timeout on the first steps",
        patterns=_re(r"RPC call to (?P<method>\w+) timed out",
                     r"(?m)\]\s+TimeoutError\s*$"),
        cause=("A worker did not answer the engine within VLLM_RPC_TIMEOUT (default 10000 ms), too short for ACL "
               "graph compile on the first requests of a multi-node model."),
        fix="Set VLLM_RPC_TIMEOUT=3600000 and VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=30000 on every rank, restart the group.",
        severity="fatal", scope="group",
        example="ERROR 08-28 06:06:54 [core.py:502] TimeoutError: RPC call to execute_model timed out.",
        source="vllm-ascend PR #7057 (#7015); vllm #17965"),
    Signature(
        id="driver-too-old",
        title="Driver does not support LLM-DataDist",
        patterns=_re(r"does not support hrtRaAiQpCreate for device"),
        cause="The NPU driver/firmware is too old for LLM-DataDist (hrtRaAiQpCreate missing).",
        fix="Upgrade the Ascend driver and firmware on this node.",
        severity="fatal", scope="node",
        example="this package does not support hrtRaAiQpCreate for device, please change new package",
        source="vllm-ascend #2406"),
    Signature(
        id="visible-devices-invalid",
        title="ASCEND_RT_VISIBLE_DEVICES names a device the container lacks",
        patterns=_re(r"set ASCEND_RT_VISIBLE_DEVICES:\[?(?P<visible>[\d,]+)\]? error, input data rang\[(?P<range>[^)\]]*)",
                     r"set ASCEND_RT_VISIBLE_DEVICES:\[?(?P<visible>[\d,]+)\]? error, it must be configured in ascending order"),
        cause=("ASCEND_RT_VISIBLE_DEVICES={visible} does not fit the container's devices"
               "[[ (logical ids {range})]], or is not ascending."),
        fix="Mount the rank's /dev/davinciN into the container and list logical ids in ascending order.",
        severity="fatal", scope="device",
        example=("[ERROR] RUNTIME(2818,python3):2025-07-01-10:00:00.123.456 [runtime.cc:5632]2818 GetVisibleDevices:"
                 "[INIT][DEFAULT]set ASCEND_RT_VISIBLE_DEVICES:[4] error, input data rang[0-2)"),
        source="gpustack #3352, #2527"),
    Signature(
        id="cann-env-missing",
        title="CANN environment not loaded",
        patterns=_re(r"(?P<lib>lib(?:hccl|ascend_hal|atb)\.so): cannot open shared object file"),
        cause=("{lib} is not found: the CANN set_env.sh was not sourced (non-interactive docker exec does not), "
               "or the driver lib64 is not mounted."),
        fix=("Source /usr/local/Ascend/ascend-toolkit/set_env.sh (and nnal/atb/set_env.sh) in the rank script "
             "(container env_files), and mount /usr/local/Ascend/driver/lib64."),
        severity="fatal", scope="node",
        example="ImportError: libhccl.so: cannot open shared object file: No such file or directory",
        source="vllm-ascend #262, #1440, #152"),
    Signature(
        id="model-path-missing",
        title="Model path not found in the container",
        patterns=_re(r"Repo id must be in the form 'repo_name' or 'namespace/repo_name': '(?P<model>[^']*)'",
                     r"Invalid repository ID or local directory specified: '(?P<model>[^']*)'"),
        cause="The model path {model} does not exist (or has no config.json) inside the container.",
        fix="Mount the weights folder into the container at that path (container mounts), or fix the model path.",
        severity="fatal", scope="node",
        example=("huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
                 "'namespace/repo_name': '/weights/DeepSeek-V3.1'. Use `repo_type` argument if needed."),
        source="vllm-ascend #135"),
    Signature(
        id="engine-dead",
        title="Process alive but its engine died",
        patterns=_re(r"EngineDeadError: EngineCore encountered an issue",
                     r"EngineCore encountered a fatal error",
                     r'"GET /health HTTP/1\.[01]" 503'),
        cause=("The engine core died while the API server process lives on: /health answers 503 and requests "
               "fail (the root cause is earlier in the log)."),
        fix=("Restart the whole group (stop every rank on all its nodes first); if it recurs, read the first "
             "error above the EngineDeadError in the rank log."),
        severity="fatal", scope="group", fallback=True,
        example=("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace "
                 "(above) for the root cause."),
        source="vllm health.py (503 on EngineDeadError); vllm-ascend #11892"),
    Signature(
        id="engine-init-failed",
        title="Engine core initialisation failed",
        patterns=_re(r"Engine core initialization failed\. See root cause above\. Failed core proc\(s\): (?P<procs>\{[^}]*\})"),
        cause="Engine core(s) {procs} failed to start; no known signature matched the root cause above.",
        fix="Read the first error above this line in the rank log (`deploy status` prints the log tail).",
        severity="fatal", scope="rank", fallback=True,
        example=("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): "
                 "{'EngineCore_DP0': 1}"),
        source="vllm v1/engine/utils.py wait_for_engine_startup"),
)

_BY_ID = {s.id: s for s in SIGNATURES}


def signature(sid: str) -> Signature:
    """The table entry of a finding (KeyError for an unknown id)."""
    return _BY_ID[sid]


def _trim(text: str, start: int, end: int) -> str:
    """The whole line around text[start:end], cut to LINE_MAX around the match if longer."""
    ls = text.rfind("\n", 0, start) + 1
    le = text.find("\n", end)
    line = text[ls:le if le >= 0 else len(text)].rstrip("\r")
    if len(line) <= LINE_MAX:
        return line
    s = max(0, min(start - ls - 40, len(line) - LINE_MAX))
    return line[s:s + LINE_MAX]


def _int(v: str | None) -> int | None:
    return int(v) if v is not None and v.isdigit() else None


def _clean(text: str) -> str:
    """The part of a tail worth scanning: the last SCAN_MAX characters from a line start, ANSI colours
    removed, lines cut to SCAN_LINE_MAX (no real signature line is that long; patterns with `.*`
    would otherwise cost quadratic time on a hostile line)."""
    if len(text) > SCAN_MAX:
        text = text[-SCAN_MAX:]
        text = text[text.find("\n") + 1:]
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    lines = text.split("\n")
    if any(len(line) > SCAN_LINE_MAX for line in lines):
        text = "\n".join(line[:SCAN_LINE_MAX] for line in lines)
    return text


def _apply(sig: Signature, text: str, ctx: Context) -> Finding | None:
    """The finding of one signature on a (cleaned) text: its first pattern that occurs, at its last occurrence."""
    m: re.Match[str] | None = None
    for pat in sig.patterns:
        found = list(pat.finditer(text))
        m = found[-1] if found else None  # the last (most recent) occurrence
        if m is not None:
            break
    if m is None:
        return None
    values = {k: v for k, v in m.groupdict().items() if v is not None}
    if sig.refine is not None:
        values.update(sig.refine(values, ctx))
    return Finding(
        id=sig.id, title=sig.title, severity=sig.severity, scope=sig.scope,
        cause=_fill(sig.cause, values), fix=_fill(sig.fix, values), line=_trim(text, m.start(), m.end()),
        device=_int(values.get("device")), pid=_int(values.get("pid")), port=_int(values.get("port")),
        ip=values.get("ip"),
        values={k: v for k, v in values.items()
                if k not in ("device", "pid", "port", "ip") and not k.startswith("range_")})


def match(text: str, limit: int = 5, *, npus_per_node: int | None = None) -> list[Finding]:
    """Findings for a log tail, most specific first, each signature at most once.

    `npus_per_node` (optional) sizes Mooncake's random port range for the kv_port note (without it,
    the 16-NPU range is assumed). Fallback signatures appear only when nothing specific matched.
    """
    if limit <= 0 or not text:
        return []
    text = _clean(text)
    ctx = Context(npus_per_node=npus_per_node)
    found: list[Finding] = []
    for sig in SIGNATURES:
        if sig.fallback and any(not _BY_ID[f.id].fallback for f in found):
            continue
        f = _apply(sig, text, ctx)
        if f is not None:
            found.append(f)
    # the same failure also printed a more generic line (same address): keep the specific finding only
    dropped = {(s, f.ip, f.port) for f in found for s in _BY_ID[f.id].supersedes}
    return [f for f in found if (f.id, f.ip, f.port) not in dropped][:limit]


def render_markdown() -> str:
    """docs/troubleshooting.md: every signature with its cause, fix and a real example line."""
    out = ["# Troubleshooting: failures `deploy` recognises", "",
           "<!-- generated by `python -m orchestrator.triage > docs/troubleshooting.md`; a test checks it -->", "",
           "While `deploy up` waits for the ranks, and in `deploy status`, every rank's log tail is matched",
           "against the signatures below (`orchestrator/triage.py`). A match is printed with the rank's node",
           "and device, its cause and its fix. Values in `<angle brackets>` come from (or are computed from) the",
           "matched line; each entry shows what `deploy` prints for its example line.",
           "Signatures are tried in this order (most specific first); the generic ones at the end speak only",
           "when nothing more specific matched.", "",
           "Scope says what to act on: `device` the rank's NPUs, `rank` this process's flags/env/ports,",
           "`node` the host, `group` the whole DP group (restart all its ranks on all nodes).", "",
           "| id | severity | scope | failure |", "|---|---|---|---|"]
    out += [f"| [`{s.id}`](#{s.id}) | {s.severity} | {s.scope} | {s.title} |" for s in SIGNATURES]
    for s in SIGNATURES:
        out += ["", f"## {s.id}", "", f"**{s.title}** — severity `{s.severity}`, scope `{s.scope}`"
                + (", the line names the device" if s.names_device else "")
                + (", generic (only when nothing more specific matched)" if s.fallback else "") + ".", "",
                f"- Cause: {_fill(s.cause, None)}".replace("<range_note>", "").replace("<range_fix>", ""),
                f"- Fix: {_fill(s.fix, None)}".replace("<range_note>", "").replace("<range_fix>", ""),
                f"- Seen in: {s.source}", "", "Example:", "", "```", s.example, "```"]
        f = _apply(s, s.example, Context())
        assert f is not None, s.id  # the example must match its own signature (tested)
        out += ["", "`deploy` says for this line:", "", f"> {f.cause}", ">", f"> Fix: {f.fix}"]
        if s.refine is _refine_port_range:
            out += ["", f"If the port lies in the Mooncake transfer engine's random range ({MOONCAKE_TE_BASE} to "
                    f"{MOONCAKE_TE_BASE} + 1000 × NPUs per node), the finding says so and suggests kv_port ≥ 28000 "
                    "(8 NPUs) or ≥ 36000 (16 NPUs)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys
    sys.stdout.write(render_markdown())
