"""Golden tests: `deploy plan --json` of every example inventory against its seed deployment guide.

The expected values are copied from the seed deployment guides (their commands are ground truth;
each example's header names its guide by title), with the seeds' placeholder IPs replaced by the concrete ones of the example
inventories. They are NOT computed from the inventories or from the planner's output.

External-DP groups are written as the seed's own `python launch_online_dp.py ...` commands and
expanded with that script's mapping (local rank i -> dp_rank = start + i, port = start port + i,
devices i*tp .. (i+1)*tp-1); internal and nnodes groups are written out rank by rank.

Where a seed and the spec disagree the spec wins; every such place is marked "(spec)" here and
explained in the example's header comment.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INVENTORIES = Path(__file__).resolve().parent.parent / "inventories"

# Per-rank flags the planner computes. Every rank is checked for all of them: a flag not in a
# rank's expected table must be absent from its argv.
PARALLEL_FLAGS = (
    "--data-parallel-size",
    "--data-parallel-size-local",
    "--data-parallel-start-rank",
    "--data-parallel-rank",
    "--data-parallel-address",
    "--data-parallel-rpc-port",
    "--tensor-parallel-size",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
    "--headless",  # bare flag: expected True or absent
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

@functools.cache
def plan_of(example: str) -> dict:
    """Run the real CLI in-process: `deploy plan inventories/<example>.yaml --json`."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    path = INVENTORIES / f"{example}.yaml"
    result = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert result.exit_code == 0, (
        f"deploy plan {path} --json exited {result.exit_code}\n{result.output}\n{result.exception!r}"
    )
    return json.loads(result.stdout)


def _positions(argv: list[str], flag: str) -> list[int]:
    return [i for i, tok in enumerate(argv) if tok == flag]


def flag_value(argv: list[str], flag: str) -> str | None:
    """The token after `flag` (rendered as two tokens), or None if the flag is absent."""
    pos = _positions(argv, flag)
    assert len(pos) <= 1, f"{flag} appears {len(pos)} times in {argv}"
    if not pos:
        return None
    i = pos[0]
    assert i + 1 < len(argv) and not argv[i + 1].startswith("--"), f"{flag} has no value in {argv}"
    return argv[i + 1]


def bare_flag(argv: list[str], flag: str) -> bool:
    """True if `flag` is present as a bare flag (no value token after it)."""
    pos = _positions(argv, flag)
    assert len(pos) <= 1, f"{flag} appears {len(pos)} times in {argv}"
    if not pos:
        return False
    i = pos[0]
    assert i + 1 == len(argv) or argv[i + 1].startswith("--"), f"{flag} is not bare in {argv}"
    return True


def flag_values(argv: list[str], flag: str) -> list[str] | None:
    """All tokens after `flag` up to the next `--option` (the proxy's host/port lists)."""
    pos = _positions(argv, flag)
    assert len(pos) <= 1, f"{flag} appears {len(pos)} times in {argv}"
    if not pos:
        return None
    out = []
    for tok in argv[pos[0] + 1:]:
        if tok.startswith("--"):
            break
        out.append(tok)
    return out


def check_flag(argv: list[str], flag: str, expected, where: str) -> None:
    """expected: None = absent, True = bare flag, str = `--flag value`, dict/list = JSON value."""
    if expected is None:
        assert flag not in argv, f"{where}: {flag} must be absent, argv={argv}"
    elif expected is True:
        assert bare_flag(argv, flag), f"{where}: bare {flag} missing, argv={argv}"
    elif isinstance(expected, (dict, list)):
        value = flag_value(argv, flag)
        assert value is not None, f"{where}: {flag} missing, argv={argv}"
        assert json.loads(value) == expected, f"{where}: {flag} {value!r} != {expected!r}"
    else:
        assert flag_value(argv, flag) == expected, (
            f"{where}: {flag} = {flag_value(argv, flag)!r}, expected {expected!r}"
        )


def rank_by_key(plan: dict, group: str, node: str, local_rank: int) -> dict:
    found = [
        r for r in plan["ranks"]
        if (r["group"], r["node"], r["local_rank"]) == (group, node, local_rank)
    ]
    assert len(found) == 1, f"{len(found)} ranks with group={group} node={node} local_rank={local_rank}"
    return found[0]


# --------------------------------------------------------------------------------------------
# expected-value tables
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rank:
    group: str
    node: str
    local_rank: int
    devices: tuple[int, ...]
    port: int | None          # None: headless, serves no HTTP
    dp_rank: int
    headless: bool
    flags: dict               # PARALLEL_FLAGS expected on this rank (missing ones: absent)
    node_rank: int | None = None   # nnodes only

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.group, self.node, self.local_rank)


def launch_online_dp(group: str, node: str, *, dp_size: int, tp_size: int = 1, dp_size_local: int,
                     dp_rank_start: int, dp_address: str, dp_rpc_port: int,
                     vllm_start_port: int) -> list[Rank]:
    """One seed `python launch_online_dp.py ...` command, expanded as that script does."""
    ranks = []
    for i in range(dp_size_local):
        ranks.append(Rank(
            group=group, node=node, local_rank=i,
            devices=tuple(range(i * tp_size, (i + 1) * tp_size)),
            port=vllm_start_port + i, dp_rank=dp_rank_start + i, headless=False,
            flags={
                # run_dp_template.sh: --port $2 --data-parallel-size $3 --data-parallel-rank $4
                # --data-parallel-address $5 --data-parallel-rpc-port $6 --tensor-parallel-size $7
                "--data-parallel-size": str(dp_size),
                "--data-parallel-rank": str(dp_rank_start + i),
                "--data-parallel-address": dp_address,
                "--data-parallel-rpc-port": str(dp_rpc_port),
                "--tensor-parallel-size": str(tp_size),
            },
        ))
    return ranks


ALL_A2 = tuple(range(8))
ALL_A3 = tuple(range(16))


@dataclass(frozen=True)
class KV:
    connector: str
    role: str                 # kv_producer | kv_consumer
    kv_port: str
    engine_id: str
    prefill: dict             # {"dp_size", "tp_size"}
    decode: dict
    extra: dict = field(default_factory=dict)   # other kv_connector_extra_config keys


@dataclass(frozen=True)
class Proxy:
    node: str
    host: str
    port: int
    prefiller_hosts: list
    prefiller_ports: list
    decoder_hosts: list
    decoder_ports: list


@dataclass(frozen=True)
class Example:
    name: str
    soc: str
    model: str
    served_name: str
    nodes: dict               # node -> (host, ip, nic)
    roles: dict               # group -> role
    ranks: list               # [Rank]
    env: dict                 # group -> {VAR: value, or None = must be absent}
    args: dict                # group -> {--flag: value (see check_flag)}
    kv: dict                  # group -> KV; {} for co-located
    proxy: Proxy | None


def ports(start: int, n: int) -> list[str]:
    return [str(p) for p in range(start, start + n)]


# ---- dsv31-a3-single: "DeepSeek-V3/3.1", 单节点部署 -------------------------------------

DSV31_SINGLE_ARGS = {
    "--quantization": "ascend",
    "--seed": "1024",
    "--enable-expert-parallel": True,
    "--async-scheduling": True,
    "--max-num-seqs": "16",
    "--max-model-len": "16384",
    "--max-num-batched-tokens": "4096",
    "--trust-remote-code": True,
    "--no-enable-prefix-caching": True,
    "--gpu-memory-utilization": "0.92",
    "--speculative-config": {"num_speculative_tokens": 3, "method": "mtp"},
    "--compilation-config": {"cudagraph_capture_sizes": [4, 16, 32, 48, 64],
                             "cudagraph_mode": "FULL_DECODE_ONLY"},
}

DSV31_A3_SINGLE = Example(
    name="dsv31-a3-single", soc="a3",
    model="/weights/DeepSeek-V3.1-w8a8-mtp-QuaRot", served_name="deepseek_v3",
    nodes={"n0": ("141.61.0.1", "141.61.0.1", "enp67s0f0np0")},
    roles={"serve": "serve"},
    ranks=[
        # vllm serve ... --port 8015 --data-parallel-size 4 --tensor-parallel-size 4
        Rank("serve", "n0", 0, ALL_A3, 8015, 0, False, {
            "--data-parallel-size": "4",
            "--tensor-parallel-size": "4",
            "--data-parallel-size-local": "4",              # (spec) internal launch
            "--data-parallel-address": "141.61.0.1",        # (spec)
            "--data-parallel-rpc-port": "12321",            # (spec) default dp_rpc_port
        }),
    ],
    env={"serve": {
        "HCCL_OP_EXPANSION_MODE": "AIV",
        "VLLM_ASCEND_BALANCE_SCHEDULING": "1",
        "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    }},
    args={"serve": DSV31_SINGLE_ARGS},
    kv={}, proxy=None,
)

# ---- dsv31-a2-2node-internal: "DeepSeek-V3/3.1", 多节点部署 (节点 0 / 节点 1) ------------

DSV31_A2_2NODE = Example(
    name="dsv31-a2-2node-internal", soc="a2",
    model="/weights/DeepSeek-V3.1-w8a8-mtp-QuaRot", served_name="deepseek_v3",
    nodes={
        "n0": ("141.61.0.1", "141.61.0.1", "enp67s0f0np0"),
        "n1": ("141.61.0.2", "141.61.0.2", "enp67s0f0np0"),
    },
    roles={"serve": "serve"},
    ranks=[
        # 节点 0: --port 8004 --data-parallel-size 4 --data-parallel-size-local 2
        #   --data-parallel-address $node0_ip --data-parallel-rpc-port 13389 --tensor-parallel-size 4
        Rank("serve", "n0", 0, ALL_A2, 8004, 0, False, {
            "--data-parallel-size": "4",
            "--data-parallel-size-local": "2",
            "--data-parallel-address": "141.61.0.1",
            "--data-parallel-rpc-port": "13389",
            "--tensor-parallel-size": "4",
        }),
        # 节点 1: --headless --data-parallel-size 4 --data-parallel-size-local 2
        #   --data-parallel-start-rank 2 --data-parallel-address $node0_ip
        #   --data-parallel-rpc-port 13389 --tensor-parallel-size 4  (its --port 8004: (spec) none)
        Rank("serve", "n1", 0, ALL_A2, None, 2, True, {
            "--headless": True,
            "--data-parallel-size": "4",
            "--data-parallel-size-local": "2",
            "--data-parallel-start-rank": "2",
            "--data-parallel-address": "141.61.0.1",
            "--data-parallel-rpc-port": "13389",
            "--tensor-parallel-size": "4",
        }),
    ],
    env={"serve": {
        "OMP_PROC_BIND": "false",
        "OMP_NUM_THREADS": "1",
        "HCCL_BUFFSIZE": "200",
        "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
        "VLLM_ASCEND_BALANCE_SCHEDULING": "1",
        "HCCL_INTRA_PCIE_ENABLE": "1",
        "HCCL_INTRA_ROCE_ENABLE": "0",
    }},
    args={"serve": DSV31_SINGLE_ARGS},   # the seed's flag list is the same as the single node's
    kv={}, proxy=None,
)

# ---- dsv31-a3-2p1d: "DeepSeek-V3/3.1", Prefill-Decode 解耦 -------------------------------

DSV31_PD_ENV = {
    "VLLM_RPC_TIMEOUT": "3600000",
    "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "30000",
    "HCCL_EXEC_TIMEOUT": "204",
    "HCCL_CONNECT_TIMEOUT": "120",
    "OMP_PROC_BIND": "false",
    "OMP_NUM_THREADS": "10",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "TASK_QUEUE_ENABLE": "1",
    "HCCL_OP_EXPANSION_MODE": "AIV",
    "VLLM_USE_V1": "1",
    "ASCEND_BUFFER_POOL": "4:8",
    "LD_LIBRARY_PATH":
        "/usr/local/Ascend/ascend-toolkit/latest/python/site-packages/mooncake:$LD_LIBRARY_PATH",
}
DSV31_PD_P_ENV = {**DSV31_PD_ENV, "HCCL_BUFFSIZE": "256", "VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}
DSV31_PD_D_ENV = {**DSV31_PD_ENV, "HCCL_BUFFSIZE": "1100", "VLLM_ASCEND_ENABLE_FLASHCOMM1": None}

DSV31_PD_ARGS = {
    "--enable-expert-parallel": True,
    "--seed": "1024",
    "--max-model-len": "65536",
    "--trust-remote-code": True,
    "--quantization": "ascend",
    "--no-enable-prefix-caching": True,
    "--speculative-config": {"num_speculative_tokens": 1, "method": "mtp"},
}
DSV31_PD_P_ARGS = {
    **DSV31_PD_ARGS,
    "--max-num-batched-tokens": "16384",
    "--max-num-seqs": "8",
    "--enforce-eager": True,
    "--gpu-memory-utilization": "0.9",
    "--additional-config": {"recompute_scheduler_enable": True},
    "--async-scheduling": None,
    "--compilation-config": None,
}
DSV31_PD_D_ARGS = {
    **DSV31_PD_ARGS,
    "--max-num-batched-tokens": "256",
    "--max-num-seqs": "28",
    "--gpu-memory-utilization": "0.92",
    "--async-scheduling": True,
    "--compilation-config": {"cudagraph_mode": "FULL_DECODE_ONLY",
                             "cudagraph_capture_sizes": [2, 4, 8, 16, 24, 32, 48, 56]},
    "--additional-config": {"recompute_scheduler_enable": True,
                            "multistream_overlap_shared_expert": True,
                            "finegrained_tp_config": {"lmhead_tensor_parallel_size": 16}},
    "--enforce-eager": None,
}
DSV31_PD_EXTRA = dict(prefill={"dp_size": 2, "tp_size": 8}, decode={"dp_size": 32, "tp_size": 1})

DSV31_A3_2P1D = Example(
    name="dsv31-a3-2p1d", soc="a3",
    model="/weights/DeepSeek-V3.1-w8a8-mtp-QuaRot", served_name="deepseek_v3",
    nodes={
        "p0": ("141.61.0.1", "141.61.0.1", "enp67s0f0np0"),
        "p1": ("141.61.0.2", "141.61.0.2", "enp67s0f0np0"),
        "d0": ("141.61.0.3", "141.61.0.3", "enp67s0f0np0"),
        "d1": ("141.61.0.4", "141.61.0.4", "enp67s0f0np0"),
    },
    roles={"p0": "prefill", "p1": "prefill", "d": "decode"},
    ranks=[
        # p0: python launch_online_dp.py --dp-size 2 --tp-size 8 --dp-size-local 2
        #     --dp-rank-start 0 --dp-address 141.xx.xx.1 --dp-rpc-port 12321 --vllm-start-port 7100
        *launch_online_dp("p0", "p0", dp_size=2, tp_size=8, dp_size_local=2, dp_rank_start=0,
                          dp_address="141.61.0.1", dp_rpc_port=12321, vllm_start_port=7100),
        # p1: ... --dp-address 141.xx.xx.2 ...
        *launch_online_dp("p1", "p1", dp_size=2, tp_size=8, dp_size_local=2, dp_rank_start=0,
                          dp_address="141.61.0.2", dp_rpc_port=12321, vllm_start_port=7100),
        # d0: --dp-size 32 --tp-size 1 --dp-size-local 16 --dp-rank-start 0 --dp-address 141.xx.xx.3
        *launch_online_dp("d", "d0", dp_size=32, tp_size=1, dp_size_local=16, dp_rank_start=0,
                          dp_address="141.61.0.3", dp_rpc_port=12321, vllm_start_port=7100),
        # d1: --dp-size 32 --tp-size 1 --dp-size-local 16 --dp-rank-start 16 --dp-address 141.xx.xx.3
        *launch_online_dp("d", "d1", dp_size=32, tp_size=1, dp_size_local=16, dp_rank_start=16,
                          dp_address="141.61.0.3", dp_rpc_port=12321, vllm_start_port=7100),
    ],
    env={"p0": DSV31_PD_P_ENV, "p1": DSV31_PD_P_ENV, "d": DSV31_PD_D_ENV},
    args={"p0": DSV31_PD_P_ARGS, "p1": DSV31_PD_P_ARGS, "d": DSV31_PD_D_ARGS},
    kv={
        "p0": KV("MooncakeConnectorV1", "kv_producer", "30000", "0", **DSV31_PD_EXTRA),
        "p1": KV("MooncakeConnectorV1", "kv_producer", "30100", "1", **DSV31_PD_EXTRA),
        "d": KV("MooncakeConnectorV1", "kv_consumer", "30200", "2", **DSV31_PD_EXTRA),
    },
    # python load_balance_proxy_server_example.py --port 1999 --host 141.xx.xx.1 ...
    proxy=Proxy(
        node="p0", host="141.61.0.1", port=1999,
        prefiller_hosts=["141.61.0.1", "141.61.0.1", "141.61.0.2", "141.61.0.2"],
        prefiller_ports=["7100", "7101", "7100", "7101"],
        decoder_hosts=["141.61.0.3"] * 16 + ["141.61.0.4"] * 16,
        decoder_ports=ports(7100, 16) + ports(7100, 16),
    ),
)

# ---- dsv4-flash-a3-2p1d: "DeepSeek-V4-Flash", Prefill-Decode Disaggregation (A3) -----

FLASH_A3_ENV = {
    "HCCL_OP_EXPANSION_MODE": "AIV",
    "VLLM_RPC_TIMEOUT": "3600000",
    "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "30000",
    "OMP_PROC_BIND": "false",
    "OMP_NUM_THREADS": "10",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "TASK_QUEUE_ENABLE": "1",
    "LD_PRELOAD": "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2:$LD_PRELOAD",
    "USE_MULTI_GROUPS_KV_CACHE": "1",
    "USE_MULTI_BLOCK_POOL": "1",
}
FLASH_A3_P_ENV = {
    **FLASH_A3_ENV,
    "HCCL_EXEC_TIMEOUT": "204",
    "HCCL_CONNECT_TIMEOUT": "120",
    "HCCL_BUFFSIZE": "2560",
    "DYNAMIC_EPLB": None,
    "VLLM_ASCEND_ENABLE_FUSED_MC2": None,
}
FLASH_A3_D_ENV = {
    **FLASH_A3_ENV,
    "HCCL_EXEC_TIMEOUT": "2000",
    "HCCL_CONNECT_TIMEOUT": "1200",
    "HCCL_BUFFSIZE": "1024",
    "DYNAMIC_EPLB": "true",
    "VLLM_ASCEND_ENABLE_FUSED_MC2": "1",
}
FLASH_A3_ARGS = {
    "--enable-expert-parallel": True,
    "--seed": "1024",
    "--max-model-len": "135000",
    "--no-disable-hybrid-kv-cache-manager": True,
    "--no-enable-prefix-caching": True,
    "--safetensors-load-strategy": "prefetch",
    "--trust-remote-code": True,
    "--tokenizer-mode": "deepseek_v4",
    "--tool-call-parser": "deepseek_v4",
    "--enable-auto-tool-choice": True,
    "--reasoning-parser": "deepseek_v4",
    "--quantization": "ascend",
}
FLASH_A3_P_ARGS = {
    **FLASH_A3_ARGS,
    "--max-num-batched-tokens": "8192",
    "--max-num-seqs": "4",
    "--gpu-memory-utilization": "0.85",
    "--enforce-eager": True,
    "--additional-config": {"enable_cpu_binding": "True"},   # seed: --additional_config
    "--additional_config": None,
    "--async-scheduling": None,
    "--compilation-config": None,
}
FLASH_A3_P0_ARGS = {   # "Prefill node 1": profiler, no MTP
    **FLASH_A3_P_ARGS,
    "--profiler-config": {"profiler": "torch", "torch_profiler_dir": "./vllm_profile",
                          "torch_profiler_with_stack": False},
    "--speculative-config": None,
}
FLASH_A3_P1_ARGS = {   # "Prefill node 2": MTP, no profiler
    **FLASH_A3_P_ARGS,
    "--speculative-config": {"num_speculative_tokens": 1, "method": "deepseek_mtp"},
    "--profiler-config": None,
}
FLASH_A3_D_ARGS = {
    **FLASH_A3_ARGS,
    "--max-num-batched-tokens": "120",
    "--max-num-seqs": "60",
    "--async-scheduling": True,
    "--gpu-memory-utilization": "0.88",
    "--speculative-config": {"num_speculative_tokens": 1, "method": "deepseek_mtp"},
    "--compilation-config": {"cudagraph_mode": "FULL_DECODE_ONLY"},
    "--additional-config": {
        "ascend_compilation_config": {"enable_npugraph_ex": True, "enable_static_kernel": False},
        "eplb_config": {"dynamic_eplb": True, "expert_heat_collection_interval": 600,
                        "algorithm_execution_interval": 50, "eplb_policy_type": 2,
                        "num_redundant_experts": 16},
        "enable_cpu_binding": True,
        "multistream_overlap_shared_expert": False,
        "multistream_dsa_preprocess": False,
        "recompute_scheduler_enable": True,
    },
    "--enforce-eager": None,
    "--profiler-config": None,
}
# (spec) decode dp_size 32: the seed's scripts say 16 but its launch commands run D as DP32.
FLASH_A3_EXTRA = dict(prefill={"dp_size": 16, "tp_size": 1}, decode={"dp_size": 32, "tp_size": 1})

DSV4_FLASH_A3_2P1D = Example(
    name="dsv4-flash-a3-2p1d", soc="a3",
    model="/root/.cache/modelscope/hub/models/vllm-ascend/DeepSeek-V4-Flash-w8a8-mtp",
    served_name="auto",
    nodes={
        "p0": ("141.61.0.1", "141.61.0.1", "enp67s0f0np0"),
        "p1": ("141.61.0.2", "141.61.0.2", "enp67s0f0np0"),
        "d0": ("141.61.0.3", "141.61.0.3", "enp67s0f0np0"),
        "d1": ("141.61.0.4", "141.61.0.4", "enp67s0f0np0"),
    },
    roles={"p0": "prefill", "p1": "prefill", "d": "decode"},
    ranks=[
        # Prefill node 0: --dp-size 16 --tp-size 1 --dp-size-local 16 --dp-rank-start 0
        #   --dp-address xx.xx.xx.1 --dp-rpc-port 12321 --vllm-start-port 7100
        *launch_online_dp("p0", "p0", dp_size=16, tp_size=1, dp_size_local=16, dp_rank_start=0,
                          dp_address="141.61.0.1", dp_rpc_port=12321, vllm_start_port=7100),
        # Prefill node 1: ... --dp-address xx.xx.xx.2 ...
        *launch_online_dp("p1", "p1", dp_size=16, tp_size=1, dp_size_local=16, dp_rank_start=0,
                          dp_address="141.61.0.2", dp_rpc_port=12321, vllm_start_port=7100),
        # Decode node 0: --dp-size 32 --dp-size-local 16 --dp-rank-start 0 --dp-address xx.xx.xx.3
        *launch_online_dp("d", "d0", dp_size=32, dp_size_local=16, dp_rank_start=0,
                          dp_address="141.61.0.3", dp_rpc_port=12321, vllm_start_port=7100),
        # Decode node 1: --dp-size 32 --dp-size-local 16 --dp-rank-start 16 --dp-address xx.xx.xx.3
        *launch_online_dp("d", "d1", dp_size=32, dp_size_local=16, dp_rank_start=16,
                          dp_address="141.61.0.3", dp_rpc_port=12321, vllm_start_port=7100),
    ],
    env={"p0": FLASH_A3_P_ENV, "p1": FLASH_A3_P_ENV, "d": FLASH_A3_D_ENV},
    args={"p0": FLASH_A3_P0_ARGS, "p1": FLASH_A3_P1_ARGS, "d": FLASH_A3_D_ARGS},
    kv={
        "p0": KV("MooncakeHybridConnector", "kv_producer", "30100", "1", **FLASH_A3_EXTRA),
        "p1": KV("MooncakeHybridConnector", "kv_producer", "30200", "2", **FLASH_A3_EXTRA),
        "d": KV("MooncakeHybridConnector", "kv_consumer", "30300", "3", **FLASH_A3_EXTRA),
    },
    # The seed refers to the DeepSeek-V3.1 proxy: on the prefill master, one entry per P/D rank.
    proxy=Proxy(
        node="p0", host="141.61.0.1", port=1999,
        prefiller_hosts=["141.61.0.1"] * 16 + ["141.61.0.2"] * 16,
        prefiller_ports=ports(7100, 16) + ports(7100, 16),
        decoder_hosts=["141.61.0.3"] * 16 + ["141.61.0.4"] * 16,
        decoder_ports=ports(7100, 16) + ports(7100, 16),
    ),
)

# ---- dsv4-flash-a2-4p1d: "DeepSeek-V4-Flash", A2 "4*1P 1*4D" --------------------------

FLASH_A2_ENV = {
    "LD_PRELOAD": "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2:$LD_PRELOAD",
    "HCCL_OP_EXPANSION_MODE": "AIV",
    "TASK_QUEUE_ENABLE": "1",
    "VLLM_RPC_TIMEOUT": "3600000",
    "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "30000",
    "HCCL_EXEC_TIMEOUT": "204",
    "HCCL_CONNECT_TIMEOUT": "1200",
    "OMP_PROC_BIND": "false",
    "OMP_NUM_THREADS": "10",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "HCCL_BUFFSIZE": "1024",
    "USE_MULTI_GROUPS_KV_CACHE": "1",
    "USE_MULTI_BLOCK_POOL": "1",
}
FLASH_A2_P_ENV = {**FLASH_A2_ENV, "VLLM_TORCH_PROFILER_WITH_STACK": None,
                  "VLLM_TORCH_PROFILER_DIR": None}
FLASH_A2_D_ENV = {**FLASH_A2_ENV, "VLLM_TORCH_PROFILER_WITH_STACK": "0",
                  "VLLM_TORCH_PROFILER_DIR": "./profiling"}
FLASH_A2_ARGS = {
    "--enable-expert-parallel": True,
    "--seed": "1024",
    "--max-model-len": "137216",
    "--async-scheduling": True,
    "--no-disable-hybrid-kv-cache-manager": True,
    "--trust-remote-code": True,
    "--gpu-memory-utilization": "0.9",
    "--quantization": "ascend",
    "--safetensors-load-strategy": "prefetch",
    "--tokenizer-mode": "deepseek_v4",
    "--tool-call-parser": "deepseek_v4",
    "--enable-auto-tool-choice": True,
    "--reasoning-parser": "deepseek_v4",
    "--compilation-config": {"cudagraph_mode": "FULL_DECODE_ONLY"},
}
FLASH_A2_P_ARGS = {
    **FLASH_A2_ARGS,
    "--max-num-batched-tokens": "8192",
    "--max-num-seqs": "16",
    "--enforce-eager": True,
    "--enable-prefix-caching": True,
    "--additional-config": {"enable_cpu_binding": "True"},
    "--speculative-config": None,
    "--profiler-config": None,
}
FLASH_A2_D_ARGS = {
    **FLASH_A2_ARGS,
    "--max-num-batched-tokens": "60",
    "--max-num-seqs": "30",
    "--profiler-config": {"profiler": "torch", "torch_profiler_dir": "./profiling",
                          "torch_profiler_with_stack": False},
    "--speculative-config": {"num_speculative_tokens": 1, "method": "deepseek_mtp"},
    "--additional-config": {
        "ascend_compilation_config": {"enable_npugraph_ex": True, "enable_static_kernel": False},
        "eplb_config": {"dynamic_eplb": False, "expert_heat_collection_interval": 600,
                        "algorithm_execution_interval": 50, "eplb_policy_type": 2,
                        "num_redundant_experts": 32},
        "enable_cpu_binding": True,
        "multistream_overlap_shared_expert": False,
        "multistream_dsa_preprocess": False,
        "recompute_scheduler_enable": True,
    },
    "--enforce-eager": None,
    "--enable-prefix-caching": None,
}
FLASH_A2_EXTRA = dict(prefill={"dp_size": 8, "tp_size": 1}, decode={"dp_size": 32, "tp_size": 1})
FLASH_A2_P_NODES = {"p0": "141.61.0.1", "p1": "141.61.0.2", "p2": "141.61.0.3", "p3": "141.61.0.4"}

DSV4_FLASH_A2_4P1D = Example(
    name="dsv4-flash-a2-4p1d", soc="a2",
    model="/root/.cache/modelscope/hub/models/vllm-ascend/DeepSeek-V4-Flash-w8a8-mtp",
    served_name="deepseek_v4",
    nodes={
        "p0": ("141.61.0.1", "141.61.0.1", "enp67s0f0np0"),
        "p1": ("141.61.0.2", "141.61.0.2", "enp67s0f0np0"),
        "p2": ("141.61.0.3", "141.61.0.3", "enp67s0f0np0"),
        "p3": ("141.61.0.4", "141.61.0.4", "enp67s0f0np0"),
        "d0": ("141.61.0.5", "141.61.0.5", "enp67s0f0np0"),
        "d1": ("141.61.0.6", "141.61.0.6", "enp67s0f0np0"),
        "d2": ("141.61.0.7", "141.61.0.7", "enp67s0f0np0"),
        "d3": ("141.61.0.8", "141.61.0.8", "enp67s0f0np0"),
    },
    roles={"p0": "prefill", "p1": "prefill", "p2": "prefill", "p3": "prefill",
           "d": "decode"},
    ranks=[
        # each Prefill node: --dp-size 8 --tp-size 1 --dp-size-local 8 --dp-rank-start 0
        #   --dp-address <its own ip> --dp-rpc-port 12321 --vllm-start-port 7100
        *launch_online_dp("p0", "p0", dp_size=8, tp_size=1, dp_size_local=8, dp_rank_start=0,
                          dp_address="141.61.0.1", dp_rpc_port=12321, vllm_start_port=7100),
        *launch_online_dp("p1", "p1", dp_size=8, tp_size=1, dp_size_local=8, dp_rank_start=0,
                          dp_address="141.61.0.2", dp_rpc_port=12321, vllm_start_port=7100),
        *launch_online_dp("p2", "p2", dp_size=8, tp_size=1, dp_size_local=8, dp_rank_start=0,
                          dp_address="141.61.0.3", dp_rpc_port=12321, vllm_start_port=7100),
        *launch_online_dp("p3", "p3", dp_size=8, tp_size=1, dp_size_local=8, dp_rank_start=0,
                          dp_address="141.61.0.4", dp_rpc_port=12321, vllm_start_port=7100),
        # each Decode node: --dp-size 32 --tp-size 1 --dp-size-local 8 --dp-rank-start 0|8|16|24
        #   --dp-address <main D node ip> --dp-rpc-port 12321 --vllm-start-port 7100
        *launch_online_dp("d", "d0", dp_size=32, tp_size=1, dp_size_local=8, dp_rank_start=0,
                          dp_address="141.61.0.5", dp_rpc_port=12321, vllm_start_port=7100),
        *launch_online_dp("d", "d1", dp_size=32, tp_size=1, dp_size_local=8, dp_rank_start=8,
                          dp_address="141.61.0.5", dp_rpc_port=12321, vllm_start_port=7100),
        *launch_online_dp("d", "d2", dp_size=32, tp_size=1, dp_size_local=8, dp_rank_start=16,
                          dp_address="141.61.0.5", dp_rpc_port=12321, vllm_start_port=7100),
        *launch_online_dp("d", "d3", dp_size=32, tp_size=1, dp_size_local=8, dp_rank_start=24,
                          dp_address="141.61.0.5", dp_rpc_port=12321, vllm_start_port=7100),
    ],
    env={**{g: FLASH_A2_P_ENV for g in FLASH_A2_P_NODES}, "d": FLASH_A2_D_ENV},
    args={**{g: FLASH_A2_P_ARGS for g in FLASH_A2_P_NODES}, "d": FLASH_A2_D_ARGS},
    kv={
        # "engine_id should start from 0 and increment sequentially", kv_port 30000, 30100, ...
        "p0": KV("MooncakeHybridConnector", "kv_producer", "30000", "0", **FLASH_A2_EXTRA),
        "p1": KV("MooncakeHybridConnector", "kv_producer", "30100", "1", **FLASH_A2_EXTRA),
        "p2": KV("MooncakeHybridConnector", "kv_producer", "30200", "2", **FLASH_A2_EXTRA),
        "p3": KV("MooncakeHybridConnector", "kv_producer", "30300", "3", **FLASH_A2_EXTRA),
        "d": KV("MooncakeHybridConnector", "kv_consumer", "30400", "4", **FLASH_A2_EXTRA),
    },
    proxy=Proxy(
        node="p0", host="141.61.0.1", port=1999,
        prefiller_hosts=[ip for ip in FLASH_A2_P_NODES.values() for _ in range(8)],
        prefiller_ports=ports(7100, 8) * 4,
        decoder_hosts=["141.61.0.5"] * 8 + ["141.61.0.6"] * 8 + ["141.61.0.7"] * 8
        + ["141.61.0.8"] * 8,
        decoder_ports=ports(7100, 8) * 4,
    ),
)

# ---- dsv4-pro-a2-32npu: "DeepSeek-V4-Pro-w4a8 在 32×910B2 的 vLLM-Ascend 部署", 3 部署步骤 -------------------------

def _pro_rank(node: str, rank: int) -> Rank:
    # vllm serve ... --port 10010 $([ $RANK != 0 ] && echo --headless) --data-parallel-size 4
    #   --tensor-parallel-size 8 --data-parallel-size-local 1 --data-parallel-start-rank $RANK
    #   --data-parallel-address 192.168.0.72
    flags = {
        "--data-parallel-size": "4",
        "--tensor-parallel-size": "8",
        "--data-parallel-size-local": "1",
        "--data-parallel-address": "192.168.0.72",
        "--data-parallel-rpc-port": "29550",   # (spec) always rendered: vLLM's default the seed used
    }
    if rank:
        flags |= {"--headless": True, "--data-parallel-start-rank": str(rank)}
    # (spec) rank 0's --data-parallel-start-rank 0 is omitted; headless ranks have no --port
    return Rank("serve", node, 0, ALL_A2, None if rank else 10010, rank, bool(rank), flags)


DSV4_PRO_A2 = Example(
    name="dsv4-pro-a2-32npu", soc="a2",
    model="/data/models/DeepSeek-V4-Pro-w4a8-mtp", served_name="ds-v4",
    nodes={   # .149/rank0/192.168.0.72 ; .134/rank1/.33 ; .209/rank2/.50 ; .163/rank3/.38
        "n0": ("141.61.0.149", "192.168.0.72", "bond1"),
        "n1": ("141.61.0.134", "192.168.0.33", "bond1"),
        "n2": ("141.61.0.209", "192.168.0.50", "bond1"),
        "n3": ("141.61.0.163", "192.168.0.38", "bond1"),
    },
    roles={"serve": "serve"},
    ranks=[_pro_rank("n0", 0), _pro_rank("n1", 1), _pro_rank("n2", 2), _pro_rank("n3", 3)],
    env={"serve": {
        "HCCL_BUFFSIZE": "512",
        "HCCL_OP_EXPANSION_MODE": "AIV",
        "TASK_QUEUE_ENABLE": "1",
        "VLLM_ASCEND_ENABLE_FLASHCOMM1": "1",
        "ACL_OP_INIT_MODE": "1",
        "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
        "HCCL_CONNECT_TIMEOUT": "7200",
        "ASCEND_CONNECT_TIMEOUT": "10000",
        "VLLM_RPC_TIMEOUT": "1800000",
        "LD_PRELOAD": "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    }},
    args={"serve": {
        "--api-key": "<key>",
        "--max-model-len": "1048576",
        "--max-num-batched-tokens": "2048",
        "--max-num-seqs": "512",
        "--gpu-memory-utilization": "0.93",
        "--block-size": "128",
        "--enable-expert-parallel": True,
        "--quantization": "ascend",
        "--enable-chunked-prefill": True,
        "--enable-prefix-caching": True,
        "--tokenizer-mode": "deepseek_v4",
        "--tool-call-parser": "deepseek_v4",
        "--enable-auto-tool-choice": True,
        "--reasoning-parser": "deepseek_v4",
        "--async-scheduling": True,
        "--safetensors-load-strategy": "prefetch",
        "--model-loader-extra-config": {"enable_multithread_load": "true", "num_threads": 128},
        "--speculative-config": {"num_speculative_tokens": 1, "method": "mtp",
                                 "enforce_eager": True},
        "--additional-config": {"enable_cpu_binding": True, "enable_shared_expert_dp": True,
                                "multistream_overlap_shared_expert": True,
                                "ascend_compilation_config": {"enable_npu_graph_ex": True,
                                                              "enable_static_kernel": False}},
        "--compilation-config": {"cudagraph_mode": "FULL_DECODE_ONLY",
                                 "cudagraph_capture_sizes": [1, 8, 16, 32, 64, 128]},
        "--enforce-eager": None,   # the seed's table: removing enforce-eager fixed TPOT 646 -> 108 ms
    }},
    kv={}, proxy=None,
)

# ---- cp-a3-1p1d: "Long-Sequence Context Parallel (Deepseek)", Prefiller/Decoder Deployment --------------------

CP_ENV = {
    "HCCL_BUFFSIZE": "768",
    "OMP_PROC_BIND": "false",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "OMP_NUM_THREADS": "1",
    "HCCL_OP_EXPANSION_MODE": "AIV",
    "VLLM_USE_V1": "1",
    "TASK_QUEUE_ENABLE": "1",
    "VLLM_ASCEND_ENABLE_CONTEXT_PARALLEL": "1",
}
CP_ARGS = {
    "--enable-expert-parallel": True,
    "--quantization": "ascend",
    "--seed": "1024",
    "--no-enable-prefix-caching": True,
    "--max-model-len": "136000",
    "--trust-remote-code": True,
    "--speculative-config": {"num_speculative_tokens": 3, "method": "deepseek_mtp"},
}
CP_P_ARGS = {
    **CP_ARGS,
    "--decode-context-parallel-size": "8",
    "--prefill-context-parallel-size": "2",
    "--cp-kv-cache-interleave-size": "128",
    "--enforce-eager": True,
    "--no-enable-chunked-prefill": True,
    "--max-num-seqs": "1",
    "--max-num-batched-tokens": "136000",
    "--block-size": "128",
    "--gpu-memory-utilization": "0.8",
    "--compilation-config": None,
}
CP_D_ARGS = {
    **CP_ARGS,
    "--api-server-count": "1",
    "--decode-context-parallel-size": "1",
    "--distributed-executor-backend": "mp",
    "--max-num-batched-tokens": "128",
    "--enable-chunked-prefill": True,
    "--max-num-seqs": "4",
    "--gpu-memory-utilization": "0.96",
    "--compilation-config": {"cudagraph_mode": "FULL_DECODE_ONLY",
                             "cudagraph_capture_sizes": [1, 2, 4]},   # seed: --compilation_config
    "--prefill-context-parallel-size": None,
    "--enforce-eager": None,
}
CP_EXTRA = dict(prefill={"dp_size": 1, "tp_size": 16}, decode={"dp_size": 1, "tp_size": 16})

CP_A3_1P1D = Example(
    name="cp-a3-1p1d", soc="a3",
    model="/path_to_weight/DeepSeek-V3.1_w8a8mix_mtp", served_name="deepseek_v3",
    nodes={
        "p0": ("192.0.0.1", "192.0.0.1", "eth0"),
        "p1": ("192.0.0.2", "192.0.0.2", "eth0"),
        "d0": ("192.0.0.3", "192.0.0.3", "eth0"),
    },
    roles={"p": "prefill", "d": "decode"},
    ranks=[
        # 192.0.0.1: --port 8004 --tensor-parallel-size 16 --nnodes 2 --node-rank 0
        #   --master-addr 192.0.0.1 --master-port 7001
        Rank("p", "p0", 0, ALL_A3, 8004, 0, False, {
            "--tensor-parallel-size": "16",
            "--nnodes": "2",
            "--node-rank": "0",
            "--master-addr": "192.0.0.1",
            "--master-port": "7001",
        }, node_rank=0),
        # 192.0.0.2: ... --nnodes 2 --node-rank 1 --headless --master-addr 192.0.0.1
        #   --master-port 7001  (its --port 8004: (spec) none for a headless rank)
        Rank("p", "p1", 0, ALL_A3, None, 0, True, {
            "--tensor-parallel-size": "16",
            "--nnodes": "2",
            "--node-rank": "1",
            "--headless": True,
            "--master-addr": "192.0.0.1",
            "--master-port": "7001",
        }, node_rank=1),
        # 192.0.0.3: --port 8004 --data-parallel-size 1 --data-parallel-size-local 1
        #   --data-parallel-start-rank 0 ((spec) omitted) --data-parallel-address 192.0.0.3
        #   --data-parallel-rpc-port 5980 --tensor-parallel-size 16
        Rank("d", "d0", 0, ALL_A3, 8004, 0, False, {
            "--data-parallel-size": "1",
            "--data-parallel-size-local": "1",
            "--data-parallel-address": "192.0.0.3",
            "--data-parallel-rpc-port": "5980",
            "--tensor-parallel-size": "16",
        }),
    ],
    env={
        "p": {**CP_ENV, "VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"},
        "d": {**CP_ENV, "VLLM_ASCEND_ENABLE_FLASHCOMM1": None},
    },
    args={"p": CP_P_ARGS, "d": CP_D_ARGS},
    kv={
        # (spec) one engine_id per group: the seed's node-rank 1 uses "1", here both nodes "0"
        "p": KV("MooncakeConnectorV1", "kv_producer", "30000", "0", **CP_EXTRA,
                extra={"use_ascend_direct": True}),
        "d": KV("MooncakeConnectorV1", "kv_consumer", "30200", "3", **CP_EXTRA),
    },
    # python load_balance_proxy_server_example.py --port 8005 --host 192.0.0.1
    #   --prefiller-hosts 192.0.0.1 --prefiller-ports 8004 --decoder-hosts 192.0.0.3 --decoder-ports 8004
    proxy=Proxy(
        node="p0", host="192.0.0.1", port=8005,
        prefiller_hosts=["192.0.0.1"], prefiller_ports=["8004"],
        decoder_hosts=["192.0.0.3"], decoder_ports=["8004"],
    ),
)

EXAMPLES = {e.name: e for e in [
    DSV31_A3_SINGLE,
    DSV31_A2_2NODE,
    DSV31_A3_2P1D,
    DSV4_FLASH_A3_2P1D,
    DSV4_FLASH_A2_4P1D,
    DSV4_PRO_A2,
    CP_A3_1P1D,
]}

RANK_CASES = [
    pytest.param(ex, r, id=f"{ex.name}:{r.group}/{r.node}/{r.local_rank}")
    for ex in EXAMPLES.values() for r in ex.ranks
]
EXAMPLE_CASES = [pytest.param(ex, id=ex.name) for ex in EXAMPLES.values()]
PD_CASES = [pytest.param(ex, id=ex.name) for ex in EXAMPLES.values() if ex.proxy is not None]


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------

def test_every_example_file_has_a_golden_table():
    import test_examples_golden_new as new  # the examples added with the large-EP / V4-Flash guides

    assert set(new.STEPS) == set(new.EXAMPLES), "new examples with no pinned bring-up order"
    files = {p.stem for p in INVENTORIES.glob("*.yaml")} - set(new.EXAMPLES)
    assert files <= set(EXAMPLES), f"example files with no golden table: {sorted(files - set(EXAMPLES))}"
    assert set(EXAMPLES) <= files, f"golden tables with no example file: {sorted(set(EXAMPLES) - files)}"
    assert set(STEPS) == set(EXAMPLES), f"examples with no pinned bring-up order: {set(EXAMPLES) ^ set(STEPS)}"
    assert set(UNSET) <= set(EXAMPLES)


@pytest.mark.parametrize("ex", EXAMPLE_CASES)
def test_plan_header_and_rank_set(ex: Example):
    plan = plan_of(ex.name)
    assert plan["name"] == ex.name
    assert plan["soc"] == ex.soc
    got = sorted((r["group"], r["node"], r["local_rank"]) for r in plan["ranks"])
    assert got == sorted(r.key for r in ex.ranks)


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_placement(ex: Example, exp: Rank):
    r = rank_by_key(plan_of(ex.name), *exp.key)
    host, ip, _nic = ex.nodes[exp.node]
    assert r["role"] == ex.roles[exp.group]
    assert r["host"] == host
    assert r["ip"] == ip
    assert r["devices"] == list(exp.devices)
    assert r["port"] == exp.port
    assert r["dp_rank"] == exp.dp_rank
    assert r["headless"] is exp.headless
    if exp.node_rank is not None:
        assert r["node_rank"] == exp.node_rank


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_argv_basics(ex: Example, exp: Rank):
    argv = rank_by_key(plan_of(ex.name), *exp.key)["argv"]
    where = "/".join(map(str, exp.key))
    assert argv[:3] == ["vllm", "serve", ex.model]
    assert flag_value(argv, "--host") == "0.0.0.0"
    assert flag_value(argv, "--served-model-name") == ex.served_name
    check_flag(argv, "--port", None if exp.port is None else str(exp.port), where)
    options = [tok for tok in argv if tok.startswith("--")]
    dupes = sorted({o for o in options if options.count(o) > 1})
    assert not dupes, f"{where}: flags rendered more than once: {dupes}"


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_parallel_flags(ex: Example, exp: Rank):
    argv = rank_by_key(plan_of(ex.name), *exp.key)["argv"]
    where = "/".join(map(str, exp.key))
    unknown = set(exp.flags) - set(PARALLEL_FLAGS)
    assert not unknown, f"table error: {unknown}"
    for flag in PARALLEL_FLAGS:
        check_flag(argv, flag, exp.flags.get(flag), where)


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_env(ex: Example, exp: Rank):
    env = rank_by_key(plan_of(ex.name), *exp.key)["env"]
    _host, ip, nic = ex.nodes[exp.node]
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == ",".join(map(str, exp.devices))
    assert env["HCCL_IF_IP"] == ip
    for var in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"):
        assert env[var] == nic, var
    for var, value in ex.env[exp.group].items():
        if value is None:
            assert var not in env, f"{var} must not be set on group {exp.group}"
        else:
            assert env.get(var) == value, f"{var}: {env.get(var)!r} != {value!r}"
    # the seed's `unset ...` lines: unset on the node (the rank's "unset" list), never set
    rank = rank_by_key(plan_of(ex.name), *exp.key)
    expected_unset = UNSET.get(ex.name, [])
    assert rank.get("unset", []) == expected_unset
    assert not set(expected_unset) & set(env)


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_seed_args(ex: Example, exp: Rank):
    """Every seed flag of the rank's script is in argv as `--flag value` (JSON compared parsed);
    a secret's value (`--api-key`) is shown redacted (orchestrator/redact.py)."""
    from orchestrator.redact import REDACTED, is_secret_flag

    argv = rank_by_key(plan_of(ex.name), *exp.key)["argv"]
    where = "/".join(map(str, exp.key))
    for flag, value in ex.args[exp.group].items():
        secret = is_secret_flag(flag) and isinstance(value, str)
        check_flag(argv, flag, REDACTED if secret else value, where)


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_kv_transfer_config(ex: Example, exp: Rank):
    argv = rank_by_key(plan_of(ex.name), *exp.key)["argv"]
    if not ex.kv:
        assert "--kv-transfer-config" not in argv
        return
    kv = ex.kv[exp.group]
    raw = flag_value(argv, "--kv-transfer-config")
    assert raw is not None, "--kv-transfer-config missing"
    cfg = json.loads(raw)
    assert cfg["kv_connector"] == kv.connector
    assert cfg["kv_role"] == kv.role
    assert cfg["kv_port"] == kv.kv_port          # a string, as in the seeds
    assert cfg["engine_id"] == kv.engine_id      # a string, as in the seeds
    # exactly the seed's: no key more (the CP guide's use_ascend_direct is prefill-only)
    assert cfg["kv_connector_extra_config"] == {"prefill": kv.prefill, "decode": kv.decode, **kv.extra}


@pytest.mark.parametrize("ex", EXAMPLE_CASES)
def test_proxy(ex: Example):
    proxy = plan_of(ex.name)["proxy"]
    if ex.proxy is None:
        assert proxy is None
        return
    exp = ex.proxy
    assert proxy["node"] == exp.node
    assert proxy["host"] == exp.host
    assert proxy["port"] == exp.port
    argv = proxy["argv"]
    assert any(tok.endswith("load_balance_proxy_server_example.py") for tok in argv), argv
    assert flag_value(argv, "--host") == exp.host
    assert flag_value(argv, "--port") == str(exp.port)
    assert flag_values(argv, "--prefiller-hosts") == exp.prefiller_hosts
    assert flag_values(argv, "--prefiller-ports") == exp.prefiller_ports
    assert flag_values(argv, "--decoder-hosts") == exp.decoder_hosts
    assert flag_values(argv, "--decoder-ports") == exp.decoder_ports


# --------------------------------------------------------------------------------------------
# bring-up order: pinned per example, since `deploy up` follows it
# --------------------------------------------------------------------------------------------
# Every guide starts a group's master first and its other nodes after it (the V4-Pro guide:
# "rank0 先起, sleep 4 后 rank1-3"; the P/D guides' node 0 scripts before node 1), the other nodes
# of a group together; separate groups do not wait for each other (one wave; only the layerwise
# connector puts decoders first, and no example uses it). Multi-node groups get the setup step
# (the socket-env guard, the V4-Pro guide's sitecustomize.py).

def step(name, nodes, group=None, role=None, wave=None, via=None):
    out = {"name": name, "nodes": nodes}
    for key, value in (("group", group), ("role", role), ("wave", wave), ("via", via)):
        if value is not None:
            out[key] = value
    return out


def gate(nodes, setup=True):
    return [step("check-network", nodes), step("containers", nodes)] + ([step("setup", nodes)] if setup else [])


def master(group, node):
    return step("launch", [node], group, "master", 0)


def others(group, nodes):
    return step("launch", nodes, group, "others", 0)


def tail(http, proxy=None, smoke=None):
    out = [step("readiness", http)]
    if proxy:
        out.append(step("proxy", [proxy]))
    out.append(step("smoke", [proxy or smoke], via="proxy" if proxy else "rank"))
    return out


A3_2P1D_NODES = ["p0", "p1", "d0", "d1"]
STEPS = {
    "dsv31-a3-single": gate(["n0"], setup=False) + [master("serve", "n0")] + tail(["n0"], smoke="n0"),
    "dsv31-a2-2node-internal": gate(["n0", "n1"]) + [master("serve", "n0"), others("serve", ["n1"])]
    + tail(["n0"], smoke="n0"),
    "dsv31-a3-2p1d": gate(A3_2P1D_NODES) + [master("p0", "p0"), master("p1", "p1"), master("d", "d0"),
                                           others("d", ["d1"])] + tail(A3_2P1D_NODES, proxy="p0"),
    "dsv4-flash-a3-2p1d": gate(A3_2P1D_NODES) + [master("p0", "p0"), master("p1", "p1"), master("d", "d0"),
                                                others("d", ["d1"])] + tail(A3_2P1D_NODES, proxy="p0"),
    "dsv4-flash-a2-4p1d": gate(["p0", "p1", "p2", "p3", "d0", "d1", "d2", "d3"])
    + [master(g, g) for g in ("p0", "p1", "p2", "p3")] + [master("d", "d0"), others("d", ["d1", "d2", "d3"])]
    + tail(["p0", "p1", "p2", "p3", "d0", "d1", "d2", "d3"], proxy="p0"),
    "dsv4-pro-a2-32npu": gate(["n0", "n1", "n2", "n3"]) + [master("serve", "n0"), others("serve", ["n1", "n2", "n3"])]
    + tail(["n0"], smoke="n0"),
    # the headless node-rank 1 serves no HTTP: readiness asks p0 (its master) and d0
    "cp-a3-1p1d": gate(["p0", "p1", "d0"]) + [master("p", "p0"), others("p", ["p1"]), master("d", "d0")]
    + tail(["p0", "d0"], proxy="p0"),
}

# The seeds' `unset ...` lines (the A2 4P1D scripts: `unset ftp_proxy unset https_proxy unset http_proxy`).
UNSET = {"dsv4-flash-a2-4p1d": ["ftp_proxy", "https_proxy", "http_proxy"]}


@pytest.mark.parametrize("ex", EXAMPLE_CASES)
def test_bring_up_order(ex: Example):
    got = [{k: v for k, v in s.items() if k != "detail"} for s in plan_of(ex.name)["steps"]]
    assert got == STEPS[ex.name]


# --------------------------------------------------------------------------------------------
# containers: the guides' `docker run`, one per node
# --------------------------------------------------------------------------------------------
# Copied from the guides (DeepSeek-V4-Flash: the A2 and the A3 command; DeepSeek-V4-Pro on
# 32 x 910B2: Step 1). Where deploy differs, by design: `-d ... sleep infinity` instead of
# `--rm -it $IMAGE bash` (ranks are started inside, each on its own), the name is the spec's
# default, and the deployment's state folder is mounted too.

SEED_DOCKER_FLASH_A2 = """docker run --rm --name $NAME --net=host --shm-size=512g
--device /dev/davinci0 --device /dev/davinci1 --device /dev/davinci2 --device /dev/davinci3
--device /dev/davinci4 --device /dev/davinci5 --device /dev/davinci6 --device /dev/davinci7
--device /dev/davinci_manager --device /dev/devmm_svm --device /dev/hisi_hdc
-v /usr/local/dcmi:/usr/local/dcmi
-v /usr/local/Ascend/driver/tools/hccn_tool:/usr/local/Ascend/driver/tools/hccn_tool
-v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi
-v /usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/
-v /usr/local/Ascend/driver/version.info:/usr/local/Ascend/driver/version.info
-v /etc/ascend_install.info:/etc/ascend_install.info
-v /etc/hccn.conf:/etc/hccn.conf
-v /mnt/sfs_turbo/.cache:/root/.cache
-it $IMAGE bash"""

# The guide's A3 command is the A2 one with /dev/davinci8 .. /dev/davinci15 added (one per die).
SEED_DOCKER_FLASH_A3 = SEED_DOCKER_FLASH_A2.replace(
    "--device /dev/davinci7", "--device /dev/davinci7 " + " ".join(f"--device /dev/davinci{i}" for i in range(8, 16)))

SEED_DOCKER_PRO_A2 = """docker run -d --name vllm --net=host --shm-size=1500g
--device /dev/davinci0 --device /dev/davinci1 --device /dev/davinci2 --device /dev/davinci3
--device /dev/davinci4 --device /dev/davinci5 --device /dev/davinci6 --device /dev/davinci7
--device /dev/davinci_manager --device /dev/devmm_svm --device /dev/hisi_hdc
-v /usr/local/dcmi:/usr/local/dcmi -v /etc/hccn.conf:/etc/hccn.conf
-v /usr/local/Ascend/driver:/usr/local/Ascend/driver -v /data:/data
-e HCCL_OP_EXPANSION_MODE=AIV -e TASK_QUEUE_ENABLE=1 -e HCCL_BUFFSIZE=512
-e VLLM_ASCEND_ENABLE_FLASHCOMM1=1 -e PYTORCH_NPU_ALLOC_CONF=expandable_segments:True
quay.io/ascend/vllm-ascend:v0.21.0rc1 sleep infinity"""


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, tok in enumerate(argv) if tok == flag]


@dataclass(frozen=True)
class SeedContainer:
    example: str
    image: str
    docker_run: str
    extra_binds: tuple = ()   # the seed leaves these standard driver mounts out (deploy adds them)


STANDARD_BINDS = tuple(f"{p}:{p}" for p in (
    "/usr/local/dcmi", "/usr/local/Ascend/driver/tools/hccn_tool", "/usr/local/bin/npu-smi",
    "/usr/local/Ascend/driver/lib64/", "/usr/local/Ascend/driver/version.info",
    "/etc/ascend_install.info", "/etc/hccn.conf"))

CONTAINER_CASES = [pytest.param(c, id=c.example) for c in [
    SeedContainer("dsv4-flash-a2-4p1d", "quay.io/ascend/vllm-ascend:deepseekv4", SEED_DOCKER_FLASH_A2),
    SeedContainer("dsv4-flash-a3-2p1d", "quay.io/ascend/vllm-ascend:deepseekv4-a3", SEED_DOCKER_FLASH_A3),
    SeedContainer("dsv4-pro-a2-32npu", "quay.io/ascend/vllm-ascend:v0.21.0rc1", SEED_DOCKER_PRO_A2,
                  extra_binds=tuple(b for b in STANDARD_BINDS if b.split(":")[0] not in (
                      "/usr/local/dcmi", "/etc/hccn.conf"))),
]]


@pytest.mark.parametrize("seed", CONTAINER_CASES)
def test_containers_match_the_guides_docker_run(seed: SeedContainer):
    import shlex

    plan = plan_of(seed.example)
    want = shlex.split(seed.docker_run)
    nodes = [r["node"] for r in plan["ranks"]]
    assert [c["node"] for c in plan["containers"]] == list(dict.fromkeys(n for n in EXAMPLES[seed.example].nodes
                                                                          if n in nodes))
    for c in plan["containers"]:
        argv = c["argv"]
        where = f"{seed.example} {c['node']}"
        assert c["name"] == f"vllm-{seed.example}" and c["image"] == seed.image, where
        assert argv[:6] == ["docker", "run", "-d", "--name", c["name"], "--net=host"], where
        assert argv[-3:] == [seed.image, "sleep", "infinity"], where
        assert [t for t in argv if t.startswith("--shm-size")] == [t for t in want if t.startswith("--shm-size")]
        assert "--privileged" not in argv
        assert options(argv, "--device") == options(want, "--device"), where
        state = f"/var/tmp/deploy/{seed.example}"
        assert sorted(options(argv, "-v")) == sorted(options(want, "-v") + list(seed.extra_binds)
                                                     + [f"{state}:{state}"]), where
        assert options(argv, "-e") == options(want, "-e"), where
