"""Plan a generated 256-node, 4096-rank A3 P/D inventory and report the time (not a test).

    python bench/plan.py            # prints load+validate, plan and --json render times
"""
from __future__ import annotations

import json
import statistics
import time

import yaml

from orchestrator.inventory import parse_inventory
from orchestrator.plan import make_plan


def inventory_text(prefill_groups: int = 64, decode_groups: int = 4) -> str:
    """64 prefill groups of 2 nodes (dp 32, tp 1) + 4 decode groups of 32 nodes (dp 512, tp 1)."""
    nodes, groups = {}, []
    for g in range(prefill_groups):
        names = [f"p{g * 2 + i}" for i in range(2)]
        groups.append({"name": f"p{g}", "role": "prefill", "nodes": names, "dp": 32, "tp": 1, "kv_port": 40000})
        nodes.update({n: None for n in names})
    for g in range(decode_groups):
        names = [f"d{g * 32 + i}" for i in range(32)]
        groups.append({"name": f"d{g}", "role": "decode", "nodes": names, "dp": 512, "tp": 1, "kv_port": 40000})
        nodes.update({n: None for n in names})
    for i, n in enumerate(nodes):
        nodes[n] = {"host": f"10.{i // 250}.{i % 250}.1", "nic": "eth0"}
    inv = {
        "name": "bench-256", "soc": "a3", "nodes": nodes,
        "container": {"image": "quay.io/ascend/vllm-ascend:v0.18.0-a3"},
        "model": {"path": "/weights/DeepSeek-V3.1-w8a8-mtp-QuaRot", "served_name": "deepseek_v3"},
        "env": {"HCCL_BUFFSIZE": 1024}, "args": {"trust-remote-code": True, "max-model-len": 65536},
        "kv_transfer": {"connector": "MooncakeConnectorV1"},
        "groups": groups, "proxy": {"node": "p0", "port": 1999},
    }
    return yaml.safe_dump(inv, sort_keys=False)


def main(repeat: int = 5) -> None:
    text = inventory_text()
    load, plan_t, dump = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        inv = parse_inventory(text, "bench.yaml")
        t1 = time.perf_counter()
        plan = make_plan(inv)
        t2 = time.perf_counter()
        json.dumps(plan.to_json())
        t3 = time.perf_counter()
        load.append(t1 - t0), plan_t.append(t2 - t1), dump.append(t3 - t2)
    total = [a + b + c for a, b, c in zip(load, plan_t, dump)]
    print(f"nodes={len(inv.nodes)} ranks={len(plan.ranks)} proxy_backends={len(plan.ranks)}")
    print(f"load+validate median {statistics.median(load):.3f}s, plan {statistics.median(plan_t):.3f}s, "
          f"json {statistics.median(dump):.3f}s, total {statistics.median(total):.3f}s (of {repeat} runs)")


if __name__ == "__main__":
    main()
