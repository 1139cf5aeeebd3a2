"""Golden tests for the examples of issue 12: `deploy plan --json` against their seed guides.

Same rules as tests/test_examples_golden.py (whose helpers and tables are reused): the expected
values are copied from the guides' own commands, with the placeholder IPs replaced by the
examples' concrete ones, never computed from the inventories or the planner. Where a guide and
the spec disagree the spec wins; such places are marked "(spec)" and explained in the example's
header comment.

- dsv4-flash-a2-single, dsv4-flash-a3-single: the guide "DeepSeek-V4-Flash", Single-node
  Deployment (the A2 and the A3 script).
- large-ep-a3-2p2d: the guide "Distributed DP Server With Large EP (DeepSeek)": the launcher
  (`run_dp_template.sh dp_size dp_ip dp_port dp_rank_local dp_rank engine_port dp_size_local`,
  expanded below as that script does), run_dp_template.sh, the recommended per-role
  configuration and the toy proxy sketch.
"""
from __future__ import annotations

import json

import pytest
from test_examples_golden import (
    ALL_A2,
    ALL_A3,
    KV,
    PARALLEL_FLAGS,
    Example,
    Proxy,
    Rank,
    check_flag,
    flag_value,
    flag_values,
    plan_of,
    rank_by_key,
)

# ---- dsv4-flash-a2-single: "DeepSeek-V4-Flash", Single-node Deployment, the A2 script ---------

DSV4_FLASH_A2_SINGLE = Example(
    name="dsv4-flash-a2-single", soc="a2",
    model="/mnt/nfs_hw/weight/DeepSeek-V4-Flash-w8a8-mtp", served_name="ds",
    nodes={"n0": ("141.61.0.1", "141.61.0.1", "enp67s0f0np0")},
    roles={"serve": "serve"},
    ranks=[
        # vllm serve ... --data-parallel-size 1 --tensor-parallel-size 8 ... --port 7000
        Rank("serve", "n0", 0, ALL_A2, 7000, 0, False, {
            "--data-parallel-size": "1",
            "--tensor-parallel-size": "8",
            "--data-parallel-size-local": "1",             # (spec) internal launch
            "--data-parallel-address": "141.61.0.1",       # (spec)
            "--data-parallel-rpc-port": "12321",           # (spec) default dp_rpc_port
        }),
    ],
    env={"serve": {
        "LD_PRELOAD": "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2:$LD_PRELOAD",
        "OMP_PROC_BIND": "false",
        "OMP_NUM_THREADS": "8",
        "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
        "ACL_OP_INIT_MODE": "1",
        "VLLM_ASCEND_ENABLE_FLASHCOMM1": "1",
        "USE_MULTI_GROUPS_KV_CACHE": "1",
        "TASK_QUEUE_ENABLE": "1",
        "HCCL_OP_EXPANSION_MODE": "AIV",
        "HCCL_BUFFSIZE": "512",
        "USE_MULTI_BLOCK_POOL": "1",
    }},
    args={"serve": {
        "--safetensors-load-strategy": "prefetch",
        "--max-model-len": "135168",
        "--max-num-batched-tokens": "4096",
        "--gpu-memory-utilization": "0.92",
        "--max-num-seqs": "16",
        "--enable-expert-parallel": True,
        "--quantization": "ascend",
        "--block-size": "128",
        "--enable-chunked-prefill": True,
        "--enable-prefix-caching": True,
        "--tokenizer-mode": "deepseek_v4",
        "--tool-call-parser": "deepseek_v4",
        "--enable-auto-tool-choice": True,
        "--reasoning-parser": "deepseek_v4",
        "--async-scheduling": True,
        "--additional-config": {"enable_cpu_binding": True, "multistream_overlap_shared_expert": False},
        "--compilation-config": {"cudagraph_mode": "FULL_DECODE_ONLY",
                                 "cudagraph_capture_sizes": [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 32, 36, 40]},
        "--model-loader-extra-config": {"enable_multithread_load": True, "num_threads": 16},
        "--speculative-config": {"num_speculative_tokens": 1, "method": "mtp"},
    }},
    kv={}, proxy=None,
)

# ---- dsv4-flash-a3-single: "DeepSeek-V4-Flash", Single-node Deployment, the A3 script ---------

DSV4_FLASH_A3_SINGLE = Example(
    name="dsv4-flash-a3-single", soc="a3",
    model="/root/.cache/modelscope/hub/models/vllm-ascend/DeepSeek-V4-Flash-w8a8-mtp", served_name="dsv4",
    nodes={"n0": ("141.61.0.1", "141.61.0.1", "enp67s0f0np0")},
    roles={"serve": "serve"},
    ranks=[
        # vllm serve ... --api-server-count 1 --data-parallel-size 4 --tensor-parallel-size 4 --port 8008
        Rank("serve", "n0", 0, ALL_A3, 8008, 0, False, {
            "--data-parallel-size": "4",
            "--tensor-parallel-size": "4",
            "--data-parallel-size-local": "4",             # (spec) internal launch
            "--data-parallel-address": "141.61.0.1",       # (spec)
            "--data-parallel-rpc-port": "12321",           # (spec) default dp_rpc_port
        }),
    ],
    env={"serve": {
        "OMP_PROC_BIND": "false",
        "OMP_NUM_THREADS": "10",
        "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
        "ACL_OP_INIT_MODE": "1",
        "ASCEND_A3_ENABLE": "1",
        "USE_MULTI_GROUPS_KV_CACHE": "1",
        "USE_MULTI_BLOCK_POOL": "1",
        "HCCL_BUFFSIZE": "1024",
        "VLLM_ASCEND_ENABLE_FUSED_MC2": "1",
        "VLLM_ASCEND_ENABLE_FLASHCOMM1": "1",
    }},
    args={"serve": {
        "--enable-prefix-caching": True,
        "--max-model-len": "1024000",                      # (spec) dashed form of --max_model_len
        "--max-num-batched-tokens": "8192",
        "--gpu-memory-utilization": "0.9",
        "--api-server-count": "1",
        "--max-num-seqs": "16",
        "--enable-expert-parallel": True,
        "--tokenizer-mode": "deepseek_v4",
        "--tool-call-parser": "deepseek_v4",
        "--enable-auto-tool-choice": True,
        "--reasoning-parser": "deepseek_v4",
        "--safetensors-load-strategy": "prefetch",
        "--quantization": "ascend",
        "--speculative-config": {"num_speculative_tokens": 1, "method": "deepseek_mtp"},
        "--block-size": "128",
        "--compilation-config": {"cudagraph_mode": "FULL_DECODE_ONLY"},
        "--async-scheduling": True,
        "--additional-config": {
            "ascend_compilation_config": {"enable_npugraph_ex": True, "enable_static_kernel": False},
            "enable_cpu_binding": "true",
            "multistream_overlap_shared_expert": False,
            "multistream_dsa_preprocess": False,
        },
    }},
    kv={}, proxy=None,
)

# ---- large-ep-a3-2p2d: "Distributed DP Server With Large EP (DeepSeek)" ----------------------

ENV_RANKS: dict[tuple[str, str, int], dict] = {}   # rank key -> the VLLM_DP_* run_dp_template.sh exports


def launch_dp_program(group: str, node: str, *, dp_size: int, dp_size_local: int, dp_rank_start: int,
                      dp_ip: str, dp_port: int, engine_port: int, tp: int) -> list[Rank]:
    """The guide's launcher for one node, expanded as it does: for i in range(dp_size_local):
    run_dp_template.sh dp_size dp_ip dp_port dp_rank_local=i dp_rank=start+i engine_port+i dp_size_local."""
    ranks = []
    for i in range(dp_size_local):
        ENV_RANKS[(group, node, i)] = {
            "VLLM_DP_SIZE": str(dp_size),            # $1
            "VLLM_DP_MASTER_IP": dp_ip,              # $2
            "VLLM_DP_MASTER_PORT": str(dp_port),     # $3
            "VLLM_DP_RANK_LOCAL": str(i),            # $4
            "VLLM_DP_RANK": str(dp_rank_start + i),  # $5
            "VLLM_DP_SIZE_LOCAL": str(dp_size_local),  # $7
            "VLLM_WORKER_MULTIPROC_METHOD": "fork",
            "VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED": "1",
        }
        # --port $6; --tensor-parallel-size 8; no --data-parallel-* flag at all
        ranks.append(Rank(group, node, i, tuple(range(i * tp, (i + 1) * tp)), engine_port + i,
                          dp_rank_start + i, False, {"--tensor-parallel-size": str(tp)}))
    return ranks


LARGE_EP_KV_COMMON = dict(connector="LLMDataDistCMgrConnector", kv_port="20001",
                          prefill={"dp_size": 2, "tp_size": 8}, decode={"dp_size": 4, "tp_size": 8})
# the template's kv-transfer-config fields besides connector/role/port/engine_id
LARGE_EP_KV_FIELDS = {"kv_buffer_device": "npu", "kv_parallel_size": "1",
                      "kv_connector_module_path": "vllm_ascend.distributed.llmdatadist_c_mgr_connector"}
LARGE_EP_ENV = {
    "OMP_PROC_BIND": "false",
    "OMP_NUM_THREADS": "10",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    "TASK_QUEUE_ENABLE": "1",
    "VLLM_USE_V1": "1",
    "DISAGGREGATED_PREFILL_RANK_TABLE_PATH": "/var/tmp/deploy/large-ep-a3-2p2d/ranktable.json",  # (spec)
}
LARGE_EP_ARGS = {
    "--enable-expert-parallel": True,
    "--seed": "1024",
    "--max-model-len": "17000",
    "--max-num-batched-tokens": "16384",
    "--trust-remote-code": True,
    "--max-num-seqs": "4",
    "--gpu-memory-utilization": "0.9",
    "--quantization": "ascend",
    "--speculative-config": {"num_speculative_tokens": 1, "method": "deepseek_mtp"},
}

LARGE_EP = Example(
    name="large-ep-a3-2p2d", soc="a3",
    model="/root/.cache/ds_r1", served_name="deepseek_r1",
    nodes={
        "p0": ("141.61.0.1", "141.61.0.1", "enp67s0f0np0"),
        "p1": ("141.61.0.2", "141.61.0.2", "enp67s0f0np0"),
        "d0": ("141.61.0.3", "141.61.0.3", "enp67s0f0np0"),
        "d1": ("141.61.0.4", "141.61.0.4", "enp67s0f0np0"),
    },
    roles={"p": "prefill", "d": "decode"},
    ranks=[
        # prefill: dp_size 2, dp_size_local 1 (one engine_port per prefiller host in the proxy sketch)
        *launch_dp_program("p", "p0", dp_size=2, dp_size_local=1, dp_rank_start=0, dp_ip="141.61.0.1",
                           dp_port=12321, engine_port=9000, tp=8),
        *launch_dp_program("p", "p1", dp_size=2, dp_size_local=1, dp_rank_start=1, dp_ip="141.61.0.1",
                           dp_port=12321, engine_port=9000, tp=8),
        # decode: dp_size 4, dp_size_local 2 (each decoder host twice, ports 9000 9001)
        *launch_dp_program("d", "d0", dp_size=4, dp_size_local=2, dp_rank_start=0, dp_ip="141.61.0.3",
                           dp_port=12321, engine_port=9000, tp=8),
        *launch_dp_program("d", "d1", dp_size=4, dp_size_local=2, dp_rank_start=2, dp_ip="141.61.0.3",
                           dp_port=12321, engine_port=9000, tp=8),
    ],
    env={
        # prefiller node: 1. set HCCL_BUFFSIZE=256; decoder node: 1. set HCCL_BUFFSIZE=1024
        "p": {**LARGE_EP_ENV, "HCCL_BUFFSIZE": "256"},
        "d": {**LARGE_EP_ENV, "HCCL_BUFFSIZE": "1024"},
    },
    args={
        "p": {**LARGE_EP_ARGS, "--enforce-eager": True, "--additional-config": {
            "ascend_scheduler_config": {"enabled": False}, "torchair_graph_config": {"enabled": False},
            "enable_weight_nz_layout": True, "enable_prefill_optimizations": True}},
        "d": {**LARGE_EP_ARGS, "--enforce-eager": None, "--additional-config": {
            "ascend_scheduler_config": {"enabled": False},
            "torchair_graph_config": {"enabled": True, "enable_multistream_mla": True, "enable_multistream_moe": True,
                                      "graph_batch_sizes": [28], "enable_super_kernel": True,
                                      "use_cached_graph": True},
            "enable_weight_nz_layout": True}},
    },
    kv={
        "p": KV(role="kv_producer", engine_id="1", **LARGE_EP_KV_COMMON),   # (spec) producer; own engine_id
        "d": KV(role="kv_consumer", engine_id="0", **LARGE_EP_KV_COMMON),   # the template's
    },
    proxy=Proxy(
        node="p0", host="141.61.0.1", port=8000,                              # (spec) host; port: proxy default
        prefiller_hosts=["141.61.0.1", "141.61.0.2"], prefiller_ports=["9000", "9000"],
        decoder_hosts=["141.61.0.3", "141.61.0.3", "141.61.0.4", "141.61.0.4"],
        decoder_ports=["9000", "9001", "9000", "9001"],
    ),
)
# ASCEND_RT_VISIBLE_DEVICES per group node under launch env: the group's devices on the node
# (the guide: all 16 visible; vLLM narrows it to the local DP rank's tp devices).
LARGE_EP_VISIBLE = {"p": ",".join(map(str, range(8))), "d": ",".join(map(str, range(16)))}

EXAMPLES = {e.name: e for e in [DSV4_FLASH_A2_SINGLE, DSV4_FLASH_A3_SINGLE, LARGE_EP]}
RANK_CASES = [pytest.param(ex, r, id=f"{ex.name}:{r.group}/{r.node}/{r.local_rank}")
              for ex in EXAMPLES.values() for r in ex.ranks]
EXAMPLE_CASES = [pytest.param(ex, id=ex.name) for ex in EXAMPLES.values()]


def _env_launch(ex: Example, exp: Rank) -> bool:
    return (exp.group, exp.node, exp.local_rank) in ENV_RANKS and ex is LARGE_EP


@pytest.mark.parametrize("ex", EXAMPLE_CASES)
def test_plan_header_and_rank_set(ex: Example):
    plan = plan_of(ex.name)
    assert plan["name"] == ex.name and plan["soc"] == ex.soc
    assert sorted((r["group"], r["node"], r["local_rank"]) for r in plan["ranks"]) == sorted(r.key for r in ex.ranks)


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_placement(ex: Example, exp: Rank):
    r = rank_by_key(plan_of(ex.name), *exp.key)
    host, ip, _nic = ex.nodes[exp.node]
    assert (r["role"], r["host"], r["ip"]) == (ex.roles[exp.group], host, ip)
    assert r["devices"] == list(exp.devices)
    assert r["port"] == exp.port
    assert r["dp_rank"] == exp.dp_rank
    assert r["headless"] is exp.headless


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_argv(ex: Example, exp: Rank):
    argv = rank_by_key(plan_of(ex.name), *exp.key)["argv"]
    where = "/".join(map(str, exp.key))
    assert argv[:3] == ["vllm", "serve", ex.model]
    assert flag_value(argv, "--host") == "0.0.0.0"
    assert flag_value(argv, "--served-model-name") == ex.served_name
    check_flag(argv, "--port", str(exp.port), where)
    for flag in PARALLEL_FLAGS:   # launch env: every --data-parallel-* flag absent
        check_flag(argv, flag, exp.flags.get(flag), where)
    for flag, value in ex.args[exp.group].items():
        check_flag(argv, flag, value, where)
    options = [tok for tok in argv if tok.startswith("--")]
    assert not sorted({o for o in options if options.count(o) > 1}), f"{where}: flags rendered twice"


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_env(ex: Example, exp: Rank):
    env = rank_by_key(plan_of(ex.name), *exp.key)["env"]
    _host, ip, nic = ex.nodes[exp.node]
    assert env["HCCL_IF_IP"] == ip
    for var in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME"):
        assert env[var] == nic, var
    if _env_launch(ex, exp):
        assert env["ASCEND_RT_VISIBLE_DEVICES"] == LARGE_EP_VISIBLE[exp.group]
        for var, value in ENV_RANKS[exp.key].items():
            assert env.get(var) == value, f"{var}: {env.get(var)!r} != {value!r}"
    else:
        assert env["ASCEND_RT_VISIBLE_DEVICES"] == ",".join(map(str, exp.devices))
        assert not [k for k in env if k.startswith("VLLM_DP_") or k == "VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED"]
    for var, value in ex.env[exp.group].items():
        if value is None:
            assert var not in env, f"{var} must not be set on group {exp.group}"
        else:
            assert env.get(var) == value, f"{var}: {env.get(var)!r} != {value!r}"


@pytest.mark.parametrize("ex, exp", RANK_CASES)
def test_rank_kv_transfer_config(ex: Example, exp: Rank):
    argv = rank_by_key(plan_of(ex.name), *exp.key)["argv"]
    if not ex.kv:
        assert "--kv-transfer-config" not in argv
        return
    kv = ex.kv[exp.group]
    cfg = json.loads(flag_value(argv, "--kv-transfer-config"))
    assert (cfg["kv_connector"], cfg["kv_role"], cfg["kv_port"], cfg["engine_id"]) == \
        (kv.connector, kv.role, kv.kv_port, kv.engine_id)
    assert cfg["kv_connector_extra_config"]["prefill"] == kv.prefill     # (spec) planner-derived
    assert cfg["kv_connector_extra_config"]["decode"] == kv.decode
    for key, value in LARGE_EP_KV_FIELDS.items():
        assert cfg.get(key) == value, key


@pytest.mark.parametrize("ex", EXAMPLE_CASES)
def test_proxy(ex: Example):
    proxy = plan_of(ex.name)["proxy"]
    if ex.proxy is None:
        assert proxy is None
        return
    exp = ex.proxy
    assert (proxy["node"], proxy["host"], proxy["port"]) == (exp.node, exp.host, exp.port)
    argv = proxy["argv"]
    # the v0.9.1-dev location of the proxy (examples/disaggregate_prefill_v1, no "d")
    assert argv[1] == "/vllm-workspace/vllm-ascend/examples/disaggregate_prefill_v1/load_balance_proxy_server_example.py"
    assert flag_value(argv, "--host") == exp.host
    assert flag_value(argv, "--port") == str(exp.port)
    assert flag_values(argv, "--prefiller-hosts") == exp.prefiller_hosts
    assert flag_values(argv, "--prefiller-ports") == exp.prefiller_ports
    assert flag_values(argv, "--decoder-hosts") == exp.decoder_hosts
    assert flag_values(argv, "--decoder-ports") == exp.decoder_ports


def test_large_ep_plans_a_pd_rank_table():
    """LLMDataDist reads the P/D table: the plan has a ranktable step before the containers."""
    names = [s["name"] for s in plan_of("large-ep-a3-2p2d")["steps"]]
    assert names.index("ranktable") < names.index("containers") < names.index("launch")


# The bring-up order `up` follows, pinned per example (as test_examples_golden.STEPS).
def _steps():
    from test_examples_golden import gate, master, others, step, tail

    ep_nodes = ["p0", "p1", "d0", "d1"]
    ep_gate = gate(ep_nodes)
    ep_gate.insert(1, step("ranktable", ep_nodes))  # LLMDataDist: the P/D rank table before the containers
    return {
        "dsv4-flash-a2-single": gate(["n0"], setup=False) + [master("serve", "n0")] + tail(["n0"], smoke="n0"),
        "dsv4-flash-a3-single": gate(["n0"], setup=False) + [master("serve", "n0")] + tail(["n0"], smoke="n0"),
        "large-ep-a3-2p2d": ep_gate + [master("p", "p0"), others("p", ["p1"]), master("d", "d0"), others("d", ["d1"])]
        + tail(ep_nodes, proxy="p0"),
    }


STEPS = _steps()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_bring_up_order_new(name):
    got = [{k: v for k, v in s.items() if k != "detail"} for s in plan_of(name)["steps"]]
    assert got == STEPS[name]
