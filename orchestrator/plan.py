"""The planner: a pure function from a validated inventory to every process `up` will start.

No I/O happens here. Every cross-field rule of the spec is checked while allocating devices and
ports, so a plan that comes back is one vLLM-Ascend will accept; problems come back together as an
`InventoryError` naming the field path (and, through the inventory's source, file:line).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import InventoryError, Problem, excerpt
from .inventory import Group, Inventory, load_inventory
from .nodepaths import container_name, rank_table_path, remote_dir

PROXY_DIR = "/vllm-workspace/vllm-ascend/examples/disaggregated_prefill_v1"
PROXY_SCRIPTS = {
    "MooncakeLayerwiseConnector": f"{PROXY_DIR}/load_balance_proxy_layerwise_server_example.py",
}
DEFAULT_PROXY_SCRIPT = f"{PROXY_DIR}/load_balance_proxy_server_example.py"
MOONCAKE = {"MooncakeConnectorV1", "MooncakeHybridConnector", "MooncakeLayerwiseConnector"}
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}
PER_RANK_ENV = ("ASCEND_RT_VISIBLE_DEVICES", "HCCL_IF_IP", "GLOO_SOCKET_IFNAME",
                "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME")
# Flags the planner derives per rank; setting them in `args` would silently fight the plan.
PLANNER_FLAGS = {
    "host": "always 0.0.0.0", "port": "groups[].port",
    "data-parallel-size": "groups[].dp", "data-parallel-size-local": "groups[].dp_local",
    "data-parallel-start-rank": "derived from the node's position",
    "data-parallel-rank": "derived from the node's position",
    "data-parallel-address": "the group's first node's ip",
    "data-parallel-rpc-port": "groups[].dp_rpc_port", "tensor-parallel-size": "groups[].tp",
    "served-model-name": "model.served_name", "headless": "derived from the launch mode",
    "nnodes": "len(groups[].nodes)", "node-rank": "derived from the node's position",
    "master-addr": "the group's first node's ip", "master-port": "groups[].dp_rpc_port",
    "kv-transfer-config": "kv_transfer and groups[].kv_port / engine_id",
}
BUILTIN_ENV: dict[str, str] = {}
# launch: env (the large-EP guide's run_dp_template.sh, v0.9.1-era images): DP from these variables.
ENV_DP_VARS = ("VLLM_DP_SIZE", "VLLM_DP_MASTER_IP", "VLLM_DP_MASTER_PORT", "VLLM_DP_RANK_LOCAL",
               "VLLM_DP_RANK", "VLLM_DP_SIZE_LOCAL")
EXTERNAL_DP_LB = "VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED"
MOONCAKE_TE_BASE = 20000  # AscendDirectTransport picks random ports in [20000, 20000 + devices*1000)


@dataclass
class Rank:
    """One `vllm serve` process."""
    group: str
    role: str
    node: str
    host: str
    ip: str
    dp_rank: int
    local_rank: int
    devices: list[int]
    port: int | None
    headless: bool
    argv: list[str]
    env: dict[str, str]
    node_rank: int | None = None
    kv_ports: tuple[int, int] | None = None  # [first, last] of this process's Mooncake listeners
    unset: list[str] = field(default_factory=list)  # env names set to null: unset on the node

    def to_json(self) -> dict:
        out = {
            "group": self.group, "role": self.role, "node": self.node, "host": self.host,
            "ip": self.ip, "dp_rank": self.dp_rank, "local_rank": self.local_rank,
            "devices": self.devices, "port": self.port, "headless": self.headless,
            "argv": self.argv, "env": self.env,
        }
        if self.node_rank is not None:
            out["node_rank"] = self.node_rank
        if self.kv_ports is not None:
            out["kv_ports"] = list(self.kv_ports)
        if self.unset:
            out["unset"] = self.unset
        return out


@dataclass
class ProxyPlan:
    node: str
    host: str
    port: int
    argv: list[str]

    def to_json(self) -> dict:
        return {"node": self.node, "host": self.host, "port": self.port, "argv": self.argv}


class StepKind(str, Enum):
    """What a bring-up step does; the value is the step's name in `deploy plan --json`."""
    CHECK_NETWORK = "check-network"
    RANKTABLE = "ranktable"
    CONTAINERS = "containers"
    SETUP = "setup"
    LAUNCH = "launch"
    READINESS = "readiness"
    PROXY = "proxy"
    WARMUP = "warmup"
    SMOKE = "smoke"


@dataclass(frozen=True)
class Step:
    """One step of the bring-up, on `nodes` (all at once), after every earlier step's barrier.

    Launch steps carry their `group`, `role` ("master": the group's first node, every local rank
    of it; "others": the rest of the group's nodes at once, started right after the master's
    processes, never after its health) and `wave`: launch steps of different groups with the same
    wave may run together; wave w + 1 starts once every launch of wave w has started (the
    layerwise connector's decoders before its prefillers; one wave otherwise). `smoke` carries
    `via`: "proxy" or "rank" (the co-located API rank)."""
    kind: StepKind
    nodes: tuple[str, ...]
    group: str | None = None
    role: str | None = None   # launch: "master" | "others"
    wave: int | None = None   # launch only
    via: str | None = None    # smoke: "proxy" | "rank"

    @property
    def name(self) -> str:
        return self.kind.value

    def describe(self, plan: Plan) -> str:
        """One line for people (the plan table and progress); nothing reads it back."""
        inv = plan.inventory
        k = self.kind
        if k is StepKind.CHECK_NETWORK:
            return "NPU links, TLS, device IPs, planned-pair pings"
        if k is StepKind.RANKTABLE:
            return f"P/D rank table from live device IPs -> {rank_table_path(inv)}"
        if k is StepKind.CONTAINERS:
            return f"{container_name(inv)} from {inv.container.image}"
        if k is StepKind.SETUP:
            parts = []
            if inv.container.setup:
                parts.append(f"{len(inv.container.setup)} container.setup command(s)")
            if plan.socket_env_guard:
                parts.append("socket-env guard: sitecustomize.py unless the image has one")
            return ", ".join(parts)
        if k is StepKind.LAUNCH:
            waves = len({s.wave for s in plan.steps if s.kind is StepKind.LAUNCH})
            wave = f", wave {self.wave}" if waves > 1 else ""
            if self.role == "master":
                return "master" + wave
            g = next(g for g in inv.groups if g.name == self.group)
            return ("headless" if g.launch_mode not in ("external", "env") else "other nodes") + wave
        if k is StepKind.READINESS:
            return "every serving rank answers /health with 200"
        if k is StepKind.WARMUP:
            return f"{inv.readiness.warmup} prefill request(s) through each prefill rank"
        if k is StepKind.PROXY:
            assert plan.proxy is not None
            return f"{plan.proxy.host}:{plan.proxy.port}"
        return "one completion end to end"

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "nodes": list(self.nodes)}
        if self.group is not None:
            out["group"] = self.group
        if self.role is not None:
            out["role"] = self.role
        if self.wave is not None:
            out["wave"] = self.wave
        if self.via is not None:
            out["via"] = self.via
        return out


# The standard Ascend driver mounts of the deployment guides' `docker run` (src = dst).
DRIVER_MOUNTS = (
    "/usr/local/dcmi",
    "/usr/local/Ascend/driver/tools/hccn_tool",
    "/usr/local/bin/npu-smi",
    "/usr/local/Ascend/driver/lib64/",
    "/usr/local/Ascend/driver/version.info",
    "/etc/ascend_install.info",
    "/etc/hccn.conf",
)
CONTROL_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
KEEPALIVE = ("sleep", "infinity")
SOCKET_ENV = ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME", "HCCL_IF_IP")


@dataclass(frozen=True)
class ContainerPlan:
    """The one container of the deployment on a node, as `docker run` argv tokens.

    The parts are kept apart as well, so `up` can compare them with `docker inspect` of an
    existing container (Devices, Binds, Env, Privileged, ShmSize) and say what differs."""
    node: str
    name: str
    image: str
    devices: tuple[str, ...]        # --device paths (NPUs of the node's groups, then control devices)
    binds: tuple[str, ...]          # -v specs, driver mounts, state folder, inventory mounts
    env: tuple[tuple[str, str], ...]  # -e K=V (container.env)
    shm_size: str
    privileged: bool
    setup: tuple[tuple[str, ...], ...]  # container.setup argv lists (run with docker exec NAME ...)
    socket_env: tuple[tuple[str, str], ...] | None  # what the guard restores here; None = off

    @property
    def shm_bytes(self) -> int:
        size = shm_bytes(self.shm_size)
        assert size is not None  # checked by the planner
        return size

    @property
    def argv(self) -> list[str]:
        argv = ["docker", "run", "-d", "--name", self.name, "--net=host", f"--shm-size={self.shm_size}"]
        if self.privileged:
            argv.append("--privileged")
        for dev in self.devices:
            argv += ["--device", dev]
        for bind in self.binds:
            argv += ["-v", bind]
        for key, value in self.env:
            argv += ["-e", f"{key}={value}"]
        return argv + [self.image, *KEEPALIVE]

    def to_json(self) -> dict:
        return {"node": self.node, "name": self.name, "image": self.image, "argv": self.argv}


@dataclass
class Plan:
    inventory: Inventory
    ranks: list[Rank]
    proxy: ProxyPlan | None
    steps: list[Step]
    warnings: list[Problem] = field(default_factory=list)
    containers: list[ContainerPlan] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inventory.name

    @property
    def nodes(self) -> list[str]:
        """Nodes the plan uses, in inventory order."""
        used = {r.node for r in self.ranks}
        return [n for n in self.inventory.nodes if n in used]

    def ranks_on(self, node: str) -> list[Rank]:
        return [r for r in self.ranks if r.node == node]

    def devices_used(self, node: str) -> list[int]:
        return sorted({d for r in self.ranks_on(node) for d in r.devices})

    @property
    def socket_env_guard(self) -> bool:
        """container.socket_env_guard, else on when any group spans nodes."""
        return socket_env_guard(self.inventory)

    def container_on(self, node: str) -> ContainerPlan | None:
        return next((c for c in self.containers if c.node == node), None)

    def launch_ranks(self, step: Step) -> list[Rank]:
        """The processes a launch step starts: its group's ranks on its nodes."""
        assert step.kind is StepKind.LAUNCH
        return [r for r in self.ranks if r.group == step.group and r.node in step.nodes]

    def to_json(self) -> dict:
        return {
            "name": self.inventory.name,
            "soc": self.inventory.soc,
            "ranks": [r.to_json() for r in self.ranks],
            "proxy": self.proxy.to_json() if self.proxy else None,
            "steps": [{**s.to_json(), "detail": s.describe(self)} for s in self.steps],
            "containers": [c.to_json() for c in self.containers],
        }


def load_and_plan(path: str) -> Plan:
    """What every command starts with: read, validate, plan (raises InventoryError)."""
    return make_plan(load_inventory(path))


# ------------------------------------------------------------------------------ helpers


def flag_name(key: str) -> str:
    return key.lstrip("-").replace("_", "-")


def merge_args(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; `false`/`null` removes a flag set lower down."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            name = flag_name(key)
            if value is None or value is False:
                out.pop(name, None)
            else:
                out[name] = value
    return out


def render_value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render_args(args: dict[str, Any]) -> list[str]:
    """`--name value` per flag (`--name` alone for true). A value that starts with `-` is
    joined as `--name=value`: as its own word argparse would read `--port=9999` as a flag (after
    a flag that takes no value, e.g. `enforce-eager: "--port=9999"`, it would override the
    planner's --port); joined, it can only ever be this flag's value."""
    argv: list[str] = []
    for name, value in args.items():
        if value is True:
            argv.append(f"--{name}")
            continue
        text = render_value(value)
        argv += [f"--{name}={text}"] if text.startswith("-") else [f"--{name}", text]
    return argv


def merge_env(*layers: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = str(value)
    return out


def unset_names(*layers: dict[str, Any]) -> list[str]:
    """Names whose last word across the layers is null: the rank unsets them on the node."""
    state: dict[str, bool] = {}
    for layer in layers:
        for key, value in layer.items():
            state.pop(key, None)
            state[key] = value is None
    return [k for k, is_null in state.items() if is_null]


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


SIZE_FLAGS = ("pipeline-parallel-size", "prefill-context-parallel-size")
MAX_SIZE_FLAG = 1024


def int_arg(args: dict[str, Any], name: str) -> int:
    """A size flag's value; `check_args` has refused anything but an integer in 1..1024."""
    value = args.get(name, 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


# ------------------------------------------------------------------------------ planning


@dataclass
class _GroupLayout:
    """Per group: where each node's ranks go, before argv rendering."""
    index: int
    group: Group
    args: dict[str, Any]
    env: dict[str, str]
    dp_local: int
    per_rank: int  # devices per DP rank (tp * pp * pcp)
    devices: dict[str, list[int]] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)


class _Planner:
    def __init__(self, inv: Inventory):
        self.inv = inv
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: tuple, message: str, hint: str = "") -> None:
        problem = Problem(path, message, hint)
        if problem not in self.problems:  # a shared layer (top-level args) is checked per group
            self.problems.append(problem)

    def warn(self, path: tuple, message: str, hint: str = "") -> None:
        self.warnings.append(Problem(path, message, hint, warning=True))

    # -- checks that need no allocation
    def check_references(self) -> None:
        inv = self.inv
        names = list(inv.nodes)
        seen_groups: dict[str, int] = {}
        for gi, g in enumerate(inv.groups):
            if g.name in seen_groups:
                self.error(("groups", gi, "name"), f"group name '{g.name}' is used twice",
                           f"rename it; groups[{seen_groups[g.name]}] already has it")
            seen_groups.setdefault(g.name, gi)
            for ni, n in enumerate(g.nodes):
                if n not in inv.nodes:
                    self.error(("groups", gi, "nodes", ni), f"node '{n}' is not defined in nodes",
                               _did_you_mean(n, names) + f"define it under nodes: or use one of {', '.join(names)}")
                elif g.nodes.index(n) != ni:
                    self.error(("groups", gi, "nodes", ni), f"node '{n}' is listed twice in the group",
                               "list each node once")
            if isinstance(g.devices, dict):
                for n in g.devices:
                    if n not in g.nodes:
                        self.error(("groups", gi, "devices", n),
                                   f"devices given for '{n}', which is not one of the group's nodes",
                                   f"use one of {', '.join(g.nodes)}")
        for name, node in inv.nodes.items():
            if node.devices is not None:
                for di, d in enumerate(node.devices):
                    if not 0 <= d < inv.devices_per_node:
                        self.error(("nodes", name, "devices", di),
                                   f"device {d} does not exist on {inv.soc}",
                                   f"use 0..{inv.devices_per_node - 1}")
        if inv.proxy is not None and inv.proxy.node not in inv.nodes:
            self.error(("proxy", "node"), f"proxy node '{inv.proxy.node}' is not defined in nodes",
                       _did_you_mean(inv.proxy.node, names) + f"use one of {', '.join(names)}")

    def check_roles(self) -> None:
        inv = self.inv
        kv = inv.kv_transfer
        roles = [g.role for g in inv.groups]
        if kv is not None:
            for missing in ("prefill", "decode"):
                if missing not in roles:
                    self.error(("kv_transfer",), f"kv_transfer is set but there is no {missing} group",
                               f"add a group with role: {missing}, or remove kv_transfer for a co-located deployment")
            for gi, g in enumerate(inv.groups):
                if g.role == "serve":
                    self.error(("groups", gi, "role"), "role serve is co-located and cannot be used with kv_transfer",
                               "use prefill or decode, or remove kv_transfer")
                elif g.kv_port is None:
                    self.error(("groups", gi, "kv_port"), "kv_port is required when kv_transfer is set",
                               "give every prefill/decode group its own kv_port (>= 36000 on a3, 28000 on a2)")
            if inv.proxy is None:
                self.error(("proxy",), "proxy is required when kv_transfer is set",
                           "add proxy: {node: <a prefill node>, port: 1999}")
        else:
            for gi, g in enumerate(inv.groups):
                if g.role in ("prefill", "decode"):
                    self.error(("groups", gi, "role"), f"role {g.role} needs kv_transfer",
                               "add kv_transfer: {connector: MooncakeConnectorV1}, or use role: serve")
            if inv.proxy is not None:
                self.error(("proxy",), "proxy is only used with kv_transfer (prefill/decode)",
                           "remove proxy, or add kv_transfer")
        for role in ("prefill", "decode"):
            groups = [(gi, g) for gi, g in enumerate(inv.groups) if g.role == role]
            if groups:
                g0i, g0 = groups[0]
                for gi, g in groups[1:]:
                    if (g.dp, g.tp) != (g0.dp, g0.tp):
                        self.error(("groups", gi), f"{role} groups must share dp and tp: '{g.name}' has "
                                   f"dp {g.dp} tp {g.tp}, '{g0.name}' has dp {g0.dp} tp {g0.tp}",
                                   "vLLM-Ascend rejects a mismatch at start-up (kv_connector_extra_config); "
                                   "make them equal")
        pre = [g for g in inv.groups if g.role == "prefill"]
        dec = [(gi, g) for gi, g in enumerate(inv.groups) if g.role == "decode"]
        if pre and dec and dec[0][1].tp > pre[0].tp:
            self.error(("groups", dec[0][0], "tp"),
                       f"decode tp {dec[0][1].tp} is greater than prefill tp {pre[0].tp}",
                       "Mooncake requires prefill tp >= decode tp")
        engine_ids: dict[str, int] = {}
        for gi, g in enumerate(inv.groups):
            eid = engine_id(gi, g)
            if eid in engine_ids:
                self.error(("groups", gi, "engine_id"), f"engine_id '{eid}' is also used by group "
                           f"'{inv.groups[engine_ids[eid]].name}'", "give every group its own engine_id")
            engine_ids.setdefault(eid, gi)

    # -- layout: sizes and devices
    def layout(self) -> list[_GroupLayout]:
        inv = self.inv
        layouts: list[_GroupLayout] = []
        for gi, g in enumerate(inv.groups):
            role = getattr(inv.roles, g.role)
            args = merge_args(inv.args, role.args, g.args)
            env = merge_env(BUILTIN_ENV, inv.env, role.env, g.env)
            self.check_args(gi, g, args, env)
            per_rank = g.tp * int_arg(args, "pipeline-parallel-size") * int_arg(args, "prefill-context-parallel-size")
            n = len(g.nodes)
            if g.launch_mode == "nnodes":
                dp_local = 1
                if g.dp != 1:
                    self.error(("groups", gi, "dp"),
                               f"launch nnodes runs one instance across the nodes, so dp must be 1 (got {g.dp})",
                               "use launch: internal or external for data parallelism")
                if g.dp_local is not None:
                    self.error(("groups", gi, "dp_local"), "dp_local is not used by launch nnodes", "remove dp_local")
            elif g.dp_local is not None:
                dp_local = g.dp_local
                if g.dp != g.dp_local * n:
                    self.error(("groups", gi, "dp_local"),
                               f"dp ({g.dp}) must equal dp_local ({g.dp_local}) x the number of nodes ({n})",
                               f"set dp: {g.dp_local * n}, or dp_local: {g.dp // n if g.dp % n == 0 else '?'}")
            else:
                dp_local = g.dp // n if g.dp % n == 0 else 1
                if g.dp % n:
                    self.error(("groups", gi, "dp"), f"dp ({g.dp}) is not divisible by the number of nodes ({n})",
                               f"use a multiple of {n}, or set dp_local")
            layouts.append(_GroupLayout(gi, g, args, env, dp_local, per_rank,
                                        unset=unset_names(BUILTIN_ENV, inv.env, role.env, g.env)))
        if not self.problems:
            self.allocate(layouts)
        return layouts

    def check_args(self, gi: int, g: Group, args: dict[str, Any], env: dict[str, str]) -> None:
        layers = ((("args",), self.inv.args), (("roles", g.role, "args"), getattr(self.inv.roles, g.role).args),
                  (("groups", gi, "args"), g.args))
        for layer_path, layer in layers:
            for key in layer:
                name = flag_name(key)
                if name in PLANNER_FLAGS:
                    self.error(layer_path + (key,), f"--{name} is set by the planner ({PLANNER_FLAGS[name]})",
                               f"remove '{key}' from args")
        self.check_env_launch(gi, g)

        def where(flag: str) -> tuple:
            """The layer that set the effective value, so the warning points at the right line."""
            found: tuple = ("groups", gi, "args")
            for path, layer in layers:
                for key in layer:
                    if flag_name(key) == flag:
                        found = path + (key,)
            return found

        for flag in SIZE_FLAGS:  # they size every rank's world: anything but 1..1024 is a mistake
            value = args.get(flag, 1)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE_FLAG:
                self.error(where(flag), f"--{flag} must be an integer from 1 to {MAX_SIZE_FLAG} "
                           f"(got {excerpt(value)})", f"set {flag}: 2, or remove it (default 1)")
        for key in PER_RANK_ENV + (ENV_DP_VARS if g.launch_mode == "env" else ()):
            if key in env:
                self.warn(("groups", gi, "env"), f"{key} is set per rank by the planner; the inventory value is ignored",
                          f"remove {key} from env")
        if g.role == "decode" and args.get("enforce-eager"):
            self.warn(where("enforce-eager"), "enforce-eager on a decode group (graph mode is ~6x faster for decode)",
                      "remove enforce-eager for decode")
        gmu = args.get("gpu-memory-utilization")
        if isinstance(gmu, (int, float)) and not isinstance(gmu, bool) and gmu > 0.95:
            self.warn(where("gpu-memory-utilization"), f"gpu-memory-utilization {gmu} is above 0.95 (group '{g.name}')",
                      "leave headroom for HCCL buffers: 0.9 to 0.95")

    def check_env_launch(self, gi: int, g: Group) -> None:
        """VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED without the VLLM_DP_* set silently runs DP size 1 on
        the v0.9.1 image (its ParallelConfig patch reads DP only from them): only launch env sets it."""
        if g.launch_mode == "env":
            return
        layers = ((("container", "env"), self.inv.container.env), (("env",), self.inv.env),
                  (("roles", g.role, "env"), getattr(self.inv.roles, g.role).env), (("groups", gi, "env"), g.env))
        for path, layer in layers:
            if layer.get(EXTERNAL_DP_LB) is not None:
                self.error(path + (EXTERNAL_DP_LB,),
                           f"{EXTERNAL_DP_LB} is set for group '{g.name}' (launch {g.launch_mode}) without the "
                           "VLLM_DP_* variables: the image then silently runs DP size 1",
                           f"set launch: env on group '{g.name}' (the planner exports it with VLLM_DP_*), "
                           f"or remove {EXTERNAL_DP_LB}")

    def allocate(self, layouts: list[_GroupLayout]) -> None:
        """Explicit device lists first, then the next free devices of each node in group order."""
        inv = self.inv
        owner: dict[tuple[str, int], str] = {}

        def take(lay: _GroupLayout, node: str, devs: list[int], path: tuple) -> None:
            allowed = inv.node_devices(node)
            for d in devs:
                if not 0 <= d < inv.devices_per_node:
                    self.error(path, f"device {d} does not exist on {inv.soc}", f"use 0..{inv.devices_per_node - 1}")
                elif d not in allowed:
                    self.error(path, f"device {d} is not in nodes.{node}.devices {allowed}",
                               f"use devices from {allowed} or extend nodes.{node}.devices")
                elif (node, d) in owner:
                    self.error(path, f"device {d} of node '{node}' is also used by group '{owner[(node, d)]}'",
                               "give each group its own devices on a shared node")
                else:
                    owner[(node, d)] = lay.group.name
            lay.devices[node] = list(devs)

        def need(lay: _GroupLayout, node: str) -> int:
            if lay.group.launch_mode == "nnodes":
                return len([d for d in inv.node_devices(node) if (node, d) not in owner])
            return lay.dp_local * lay.per_rank

        for lay in layouts:
            g = lay.group
            if g.devices is None:
                continue
            for node in g.nodes:
                explicit = g.devices.get(node) if isinstance(g.devices, dict) else g.devices
                if explicit is None:
                    continue
                path = ("groups", lay.index, "devices") + ((node,) if isinstance(g.devices, dict) else ())
                if g.launch_mode != "nnodes" and len(explicit) != need(lay, node):
                    self.error(path, f"{len(explicit)} devices listed for node '{node}', but dp_local x tp"
                               f"{' x pp x pcp' if lay.per_rank != g.tp else ''} = {need(lay, node)}",
                               f"list exactly {need(lay, node)} devices")
                take(lay, node, explicit, path)
        for lay in layouts:
            g = lay.group
            for node in g.nodes:
                if node in lay.devices:
                    continue
                count = need(lay, node)
                free = [d for d in inv.node_devices(node) if (node, d) not in owner]
                path = ("groups", lay.index, "nodes", g.nodes.index(node))
                if count > inv.devices_per_node:
                    self.error(("groups", lay.index), f"group '{g.name}' needs {count} devices per node "
                               f"(dp_local {lay.dp_local} x {lay.per_rank}), more than {inv.soc} has ({inv.devices_per_node})",
                               "lower tp or dp_local, or spread the group over more nodes")
                    lay.devices[node] = []
                elif count > len(free):
                    self.error(path, f"group '{g.name}' needs {count} devices on node '{node}' but only "
                               f"{len(free)} are free ({free})", "use fewer devices, another node, or nodes.<n>.devices")
                    lay.devices[node] = []
                else:
                    take(lay, node, free[:count], path)
            if g.launch_mode == "nnodes" and not self.problems:
                total = sum(len(v) for v in lay.devices.values())
                if total != lay.per_rank:
                    self.error(("groups", lay.index, "tp"),
                               f"world size tp x pp x pcp = {lay.per_rank} does not equal the {total} devices "
                               f"of the group's {len(g.nodes)} nodes", "launch nnodes gives the group every device of its nodes")

    # -- ranks
    def ranks(self, layouts: list[_GroupLayout]) -> list[Rank]:
        inv = self.inv
        pre = next((g for g in inv.groups if g.role == "prefill"), None)
        dec = next((g for g in inv.groups if g.role == "decode"), None)
        ranks: list[Rank] = []
        layouts_by_group = {lay.group.name: lay for lay in layouts}
        for lay in layouts:
            g = lay.group
            master_ip = inv.nodes[g.nodes[0]].cluster_ip
            kv_json = None
            if inv.kv_transfer is not None and g.role in KV_ROLES:
                kv_json = kv_transfer_config(inv, lay.index, g, pre, dec)
            base = ["vllm", "serve", inv.model.path, "--host", "0.0.0.0"]
            tail = ["--tensor-parallel-size", str(g.tp), "--served-model-name", inv.model.served]
            tail += render_args(lay.args)
            if kv_json is not None:
                tail += ["--kv-transfer-config", kv_json]
            mooncake = inv.kv_transfer is not None and inv.kv_transfer.connector in MOONCAKE
            kv_base = g.kv_port if mooncake else None
            for pos, node_name in enumerate(g.nodes):
                node = inv.nodes[node_name]
                devs = lay.devices.get(node_name, [])
                common: dict[str, Any] = dict(group=g.name, role=g.role, node=node_name, host=node.host, ip=node.cluster_ip)
                if g.launch_mode == "external":
                    for i in range(lay.dp_local):
                        r = pos * lay.dp_local + i
                        mine = devs[i * lay.per_rank:(i + 1) * lay.per_rank]
                        port = g.http_port + i
                        argv = base + ["--port", str(port), "--data-parallel-size", str(g.dp),
                                       "--data-parallel-rank", str(r), "--data-parallel-address", master_ip,
                                       "--data-parallel-rpc-port", str(g.dp_rpc_port)] + tail
                        kv = _kv_span(kv_base, r * lay.per_rank, lay.per_rank)
                        ranks.append(Rank(**common, dp_rank=r, local_rank=i, devices=mine, port=port, headless=False,
                                          argv=argv, env=self.rank_env(lay, node_name, mine), kv_ports=kv))
                elif g.launch_mode == "env":
                    # One `vllm serve` per DP rank, DP from VLLM_DP_* (no --data-parallel-* flags).
                    # Visible: all the group's devices on the node; vLLM's DPEngineCoreProc narrows
                    # it to local_rank*tp .. (local_rank+1)*tp-1 (the guide: "all devices visible").
                    for i in range(lay.dp_local):
                        r = pos * lay.dp_local + i
                        mine = devs[i * lay.per_rank:(i + 1) * lay.per_rank]
                        port = g.http_port + i
                        env = self.rank_env(lay, node_name, devs)
                        env.update(env_dp_vars(g, lay.dp_local, master_ip, r, i))
                        kv = _kv_span(kv_base, r * lay.per_rank, lay.per_rank)
                        ranks.append(Rank(**common, dp_rank=r, local_rank=i, devices=mine, port=port, headless=False,
                                          argv=base + ["--port", str(port)] + tail, env=env, kv_ports=kv))
                elif g.launch_mode == "internal":
                    start = pos * lay.dp_local
                    head = pos == 0
                    argv = list(base)
                    argv += ["--port", str(g.http_port)] if head else ["--headless"]
                    argv += ["--data-parallel-size", str(g.dp), "--data-parallel-size-local", str(lay.dp_local)]
                    if not head:
                        argv += ["--data-parallel-start-rank", str(start)]
                    argv += ["--data-parallel-address", master_ip, "--data-parallel-rpc-port", str(g.dp_rpc_port)] + tail
                    kv = _kv_span(kv_base, start * lay.per_rank, lay.dp_local * lay.per_rank)
                    ranks.append(Rank(**common, dp_rank=start, local_rank=0, devices=devs,
                                      port=g.http_port if head else None, headless=not head, argv=argv,
                                      env=self.rank_env(lay, node_name, devs), kv_ports=kv))
                else:  # nnodes
                    head = pos == 0
                    argv = list(base) + (["--port", str(g.http_port)] if head else ["--headless"])
                    argv += ["--nnodes", str(len(g.nodes)), "--node-rank", str(pos), "--master-addr", master_ip,
                             "--master-port", str(g.dp_rpc_port)] + tail
                    share = lay.per_rank // len(g.nodes)
                    kv = _kv_span(kv_base, pos * share, share)
                    ranks.append(Rank(**common, dp_rank=0, local_rank=0, devices=devs,
                                      port=g.http_port if head else None, headless=not head, argv=argv,
                                      env=self.rank_env(lay, node_name, devs), node_rank=pos, kv_ports=kv))
        for rk in ranks:
            rk.unset = [n for n in layouts_by_group[rk.group].unset if n not in rk.env]
        return ranks

    def rank_env(self, lay: _GroupLayout, node_name: str, devices: list[int]) -> dict[str, str]:
        node = self.inv.nodes[node_name]
        env = dict(lay.env)
        env.update({
            "ASCEND_RT_VISIBLE_DEVICES": ",".join(map(str, devices)),
            "HCCL_IF_IP": node.cluster_ip,
            "GLOO_SOCKET_IFNAME": node.nic,
            "TP_SOCKET_IFNAME": node.nic,
            "HCCL_SOCKET_IFNAME": node.nic,
        })
        if self.inv.kv_transfer is not None and self.inv.kv_transfer.connector == "LLMDataDistCMgrConnector":
            env["DISAGGREGATED_PREFILL_RANK_TABLE_PATH"] = rank_table_path(self.inv)
        return env

    # -- ports
    def check_ports(self, ranks: list[Rank], proxy: ProxyPlan | None) -> None:
        inv = self.inv
        uses: dict[str, list[tuple[int, int, str, tuple]]] = {}

        def use(node: str, lo: int, hi: int, what: str, path: tuple) -> None:
            if hi > 65535:
                self.error(path, f"{what} runs past 65535 (ends at {hi})", "pick a lower port")
            uses.setdefault(inv.nodes[node].host, []).append((lo, hi, what, path))

        gidx = {g.name: i for i, g in enumerate(inv.groups)}
        kv_last: dict[str, int] = {}  # group -> last kv port any of its ranks listens on
        for r in ranks:
            gi = gidx[r.group]
            if r.port is not None:
                use(r.node, r.port, r.port, f"HTTP port {r.port} of group '{r.group}' rank {r.dp_rank} on {r.node}",
                    ("groups", gi, "port"))
            if r.kv_ports is not None:
                lo, hi = r.kv_ports
                kv_last[r.group] = max(hi, kv_last.get(r.group, hi))
                use(r.node, lo, hi, f"kv ports {lo}-{hi} of group '{r.group}' on {r.node}", ("groups", gi, "kv_port"))
        for gi, g in enumerate(inv.groups):
            what = "master port" if g.launch_mode == "nnodes" else "DP RPC port"
            use(g.nodes[0], g.dp_rpc_port, g.dp_rpc_port, f"{what} {g.dp_rpc_port} of group '{g.name}' on {g.nodes[0]}",
                ("groups", gi, "dp_rpc_port"))
            if g.kv_port is not None and inv.kv_transfer is not None and inv.kv_transfer.connector in MOONCAKE:
                te_hi = MOONCAKE_TE_BASE + inv.devices_per_node * 1000 - 1
                hi = kv_last.get(g.name, g.kv_port)
                if g.kv_port <= te_hi and hi >= MOONCAKE_TE_BASE:
                    self.warn(("groups", gi, "kv_port"),
                              f"kv_port {g.kv_port} is inside Mooncake's random transfer-engine range "
                              f"{MOONCAKE_TE_BASE}-{te_hi} (intermittent 'Address already in use')",
                              f"use kv_port >= {te_hi + 1}")
        if proxy is not None:
            use(proxy.node, proxy.port, proxy.port, f"proxy port {proxy.port} on {proxy.node}", ("proxy", "port"))
        reported: set[tuple] = set()
        for host, items in uses.items():
            items.sort()
            for i, (_lo, hi, what, path) in enumerate(items):
                for lo2, _hi2, what2, path2 in items[i + 1:]:
                    if lo2 > hi:
                        break
                    first, second = sorted([(path, what), (path2, what2)])
                    if (first[0], second[0]) in reported:
                        continue
                    reported.add((first[0], second[0]))
                    self.error(second[0], f"{second[1]} collides with {first[1]} (host {host})",
                               "move one of them to a free range")

    # -- proxy and steps
    def proxy(self, ranks: list[Rank]) -> ProxyPlan | None:
        inv = self.inv
        if inv.kv_transfer is None or inv.proxy is None or inv.proxy.node not in inv.nodes:
            return None
        p = inv.proxy
        host = inv.nodes[p.node].cluster_ip
        script = p.script or PROXY_SCRIPTS.get(inv.kv_transfer.connector, DEFAULT_PROXY_SCRIPT)
        serving = [r for r in ranks if r.port is not None]
        pre = [r for r in serving if r.role == "prefill"]
        dec = [r for r in serving if r.role == "decode"]
        argv = ["python", script, "--host", host, "--port", str(p.port),
                "--prefiller-hosts", *[r.ip for r in pre], "--prefiller-ports", *[str(r.port) for r in pre],
                "--decoder-hosts", *[r.ip for r in dec], "--decoder-ports", *[str(r.port) for r in dec]]
        argv += render_args(merge_args(p.args))
        return ProxyPlan(p.node, host, p.port, argv)

    def steps(self, ranks: list[Rank], proxy: ProxyPlan | None) -> list[Step]:
        """The bring-up order `up` follows (issue 10): network gate, rank table, containers,
        setup, per group master then the other nodes, readiness, proxy, smoke."""
        inv = self.inv
        used = tuple(n for n in inv.nodes if any(r.node == n for r in ranks))
        steps = [Step(StepKind.CHECK_NETWORK, used)]
        if inv.kv_transfer is not None and inv.kv_transfer.connector == "LLMDataDistCMgrConnector":
            steps.append(Step(StepKind.RANKTABLE, used))
        steps.append(Step(StepKind.CONTAINERS, used))
        if inv.container.setup or socket_env_guard(inv):
            steps.append(Step(StepKind.SETUP, used))
        layerwise = inv.kv_transfer is not None and inv.kv_transfer.connector == "MooncakeLayerwiseConnector"

        def wave(g: Group) -> int:
            return (0 if g.role == "decode" else 1) if layerwise else 0

        for g in sorted(inv.groups, key=wave):  # stable: inventory order within a wave
            steps.append(Step(StepKind.LAUNCH, (g.nodes[0],), group=g.name, role="master", wave=wave(g)))
            if len(g.nodes) > 1:
                steps.append(Step(StepKind.LAUNCH, tuple(g.nodes[1:]), group=g.name, role="others", wave=wave(g)))
        http = tuple(n for n in used if any(r.node == n and r.port is not None for r in ranks))
        steps.append(Step(StepKind.READINESS, http))
        if proxy is not None:
            steps.append(Step(StepKind.PROXY, (proxy.node,)))
        if inv.readiness.warmup:
            pre = tuple(n for n in used if any(r.node == n and r.role == "prefill" and r.port is not None
                                               for r in ranks))
            if pre:
                steps.append(Step(StepKind.WARMUP, pre))
        if inv.readiness.smoke:
            if proxy is not None:
                steps.append(Step(StepKind.SMOKE, (proxy.node,), via="proxy"))
            else:
                target = next((r.node for r in ranks if r.port is not None), used[0])
                steps.append(Step(StepKind.SMOKE, (target,), via="rank"))
        return steps

    # -- containers
    def check_container(self) -> None:
        inv = self.inv
        c = inv.container
        # These become docker argv tokens: a leading '-' would be read as an option.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", c.image):
            self.error(("container", "image"), f"image {c.image!r} is not an image reference",
                       "use registry/repository:tag (letters, digits, . _ / : @ -)")
        if c.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", c.name):
            self.error(("container", "name"), f"container name {c.name!r} is not a docker container name",
                       "use letters, digits, _ . - (starting with a letter or digit)")
        for key in c.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                self.error(("container", "env", key), f"{key!r} is not an environment variable name",
                           "use letters, digits and _, not starting with a digit")
        if shm_bytes(inv.container.shm_size) is None:
            self.error(("container", "shm_size"), f"shm_size {inv.container.shm_size!r} is not a size",
                       "use a number with an optional unit b, k, m or g, e.g. 1g or 512g")
        if inv.kv_transfer is None:
            for gi, g in enumerate(inv.groups):
                if g.kv_extra:
                    self.error(("groups", gi, "kv_extra"), "kv_extra is only used with kv_transfer",
                               "remove it, or add kv_transfer")
        for role in ("prefill", "decode", "serve"):
            if getattr(inv.roles, role).kv_extra and (role == "serve" or inv.kv_transfer is None):
                self.error(("roles", role, "kv_extra"), f"roles.{role}.kv_extra is never used"
                           + (" (serve groups have no kv_transfer)" if role == "serve" else " without kv_transfer"),
                           "remove it" + ("" if role == "serve" else ", or add kv_transfer"))
        state = _mount_dst(remote_dir(self.inv))
        for i, m in enumerate(self.inv.container.mounts):
            dst = _mount_dst(m)
            if dst == state or state.startswith(dst + "/") or dst == "/":
                self.error(("container", "mounts", i), f"{m!r} would hide the deployment's state folder {state}",
                           "mount elsewhere: deploy keeps its scripts, logs and PIDs there")

    def containers(self, ranks: list[Rank]) -> list[ContainerPlan]:
        inv = self.inv
        c = inv.container
        name = container_name(inv)
        state = remote_dir(inv)
        # An inventory mount onto a standard destination takes that mount's place (docker refuses
        # two mounts on one destination); the rest follow in inventory order.
        own = {_mount_dst(m): m for m in c.mounts}
        std = [own.pop(_mount_dst(p), f"{p}:{p}") for p in (*DRIVER_MOUNTS, state)]
        binds = tuple(std + list(own.values()))
        env = tuple((k, render_value(v)) for k, v in c.env.items())
        guard = socket_env_guard(inv)
        out = []
        for node in inv.nodes:
            mine = [r for r in ranks if r.node == node]
            if not mine:
                continue
            # Every device of the node, as the guides' `docker run` has it, not just the ones the
            # ranks use: inside a container that mounts a subset, the runtime renumbers the devices
            # from 0, and ASCEND_RT_VISIBLE_DEVICES / the rank table's device_id (physical ids)
            # would name the wrong ones (vllm-ascend#2618). Visibility is ASCEND_RT_VISIBLE_DEVICES' job.
            devices = range(inv.devices_per_node)
            socket_env = tuple((k, mine[0].env[k]) for k in SOCKET_ENV) if guard else None
            out.append(ContainerPlan(
                node=node, name=name, image=c.image,
                devices=tuple(f"/dev/davinci{d}" for d in devices) + CONTROL_DEVICES,
                binds=binds, env=env, shm_size=c.shm_size, privileged=c.privileged,
                setup=tuple(tuple(a) for a in c.setup), socket_env=socket_env))
        return out


def _mount_dst(spec: str) -> str:
    """The container side of a mount (or a bare path), without a trailing slash."""
    parts = spec.split(":")
    dst = parts[1] if len(parts) > 1 else parts[0]
    return dst.rstrip("/") or "/"


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4, "p": 1024 ** 5}


def shm_bytes(size: str) -> int | None:
    """docker's --shm-size in bytes, as docker reads it (RAMInBytes: `512g`, `1.5GiB`, `64mb`;
    units are powers of 1024), None if it is not a size.

    `docker inspect` reports HostConfig.ShmSize in bytes: compare with this."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?) ?([kmgtp]?)i?b?", size.lower())
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)]) if m else None


def socket_env_guard(inv: Inventory) -> bool:
    g = inv.container.socket_env_guard
    return g if g is not None else any(len(gr.nodes) > 1 for gr in inv.groups)



def _kv_span(base: int | None, first: int, count: int) -> tuple[int, int] | None:
    """A rank's kv_port range (Mooncake): `count` ports from `base + first`; None without Mooncake."""
    return (base + first, base + first + count - 1) if base is not None else None


def env_dp_vars(g: Group, dp_local: int, master_ip: str, rank: int, local: int) -> dict[str, str]:
    """launch env: the variables of the large-EP guide's run_dp_template.sh for one DP rank."""
    return {
        "VLLM_DP_SIZE": str(g.dp), "VLLM_DP_MASTER_IP": master_ip, "VLLM_DP_MASTER_PORT": str(g.dp_rpc_port),
        "VLLM_DP_RANK_LOCAL": str(local), "VLLM_DP_RANK": str(rank), "VLLM_DP_SIZE_LOCAL": str(dp_local),
        EXTERNAL_DP_LB: "1", "VLLM_WORKER_MULTIPROC_METHOD": "fork",
    }


def engine_id(index: int, g: Group) -> str:
    return g.engine_id if g.engine_id is not None else str(index)


def kv_transfer_config(inv: Inventory, index: int, g: Group, pre: Group | None, dec: Group | None) -> str:
    kv = inv.kv_transfer
    assert kv is not None
    extra: dict[str, Any] = {}
    if pre is not None:
        extra["prefill"] = {"dp_size": pre.dp, "tp_size": pre.tp}
    if dec is not None:
        extra["decode"] = {"dp_size": dec.dp, "tp_size": dec.tp}
    config = {
        "kv_connector": kv.connector,
        "kv_role": KV_ROLES[g.role],
        "kv_port": str(g.kv_port),
        "engine_id": engine_id(index, g),
        "kv_connector_extra_config": deep_merge(deep_merge(deep_merge(extra, kv.extra),
                                                           getattr(inv.roles, g.role).kv_extra), g.kv_extra),
    }
    config = deep_merge(config, kv.config)
    return json.dumps(config, separators=(",", ":"))


def _did_you_mean(name: str, options: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


def make_plan(inv: Inventory) -> Plan:
    """Inventory -> Plan, or InventoryError with every problem found."""
    p = _Planner(inv)
    p.check_references()
    p.check_roles()
    if p.problems:
        raise InventoryError(p.problems, inv.source)
    layouts = p.layout()
    if p.problems:
        raise InventoryError(p.problems, inv.source)
    ranks = p.ranks(layouts)
    proxy = p.proxy(ranks)
    p.check_ports(ranks, proxy)
    p.check_container()
    if p.problems:
        raise InventoryError(p.problems, inv.source)
    return Plan(inv, ranks, proxy, p.steps(ranks, proxy), p.warnings, p.containers(ranks))
