"""Rank tables from captured facts (units): the node output of check-network's collection step,
in the tools' real formats (ascend-tools.md §1.5, §1.6, §3.5), parsed by `node_facts`, then
`build_table` / `validate_table`. Expected tables follow vllm-ascend.md §1.3 (gen_ranktable.py)
and ascend-tools.md §4 (HCCL v1.0 / v1.2), field by field.
"""
from __future__ import annotations

import copy
import hashlib

import pytest

from orchestrator.checks.facts import node_facts
from orchestrator.inventory import parse_inventory
from orchestrator.plan import make_plan
from orchestrator.ranktable import build_table, render_table, table_hash, validate_table

PD_A2 = """\
name: rt
soc: a2
nodes:
  p0: {host: 172.19.32.175, nic: eth0}
  d0: {host: 172.19.123.51, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.11.0}
model: {path: /weights/m}
kv_transfer: {connector: LLMDataDistCMgrConnector}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 1, tp: 2, kv_port: 40000}
  - {name: d, role: decode, nodes: [d0], dp: 2, tp: 1, kv_port: 40100}
proxy: {node: p0}
"""

PD_A3 = PD_A2.replace("soc: a2", "soc: a3")


def _plan(text: str):
    return make_plan(parse_inventory(text))


def roce(node_index: int, dev: int) -> tuple[str, str]:
    return f"192.168.{dev}.{10 + node_index}", "255.255.255.0"


def captured(soc: str, devices: list[int], node_index: int, *, no_ip: set[int] = frozenset(),
             ip_of=roce, pod: int = 0, server_index: int | None = None, vnic_down: set[int] = frozenset(),
             no_spod: set[int] = frozenset()) -> str:
    """What network_collect.sh prints on one node (the sections node_facts parses)."""
    chips = 2 if soc == "a3" else 1
    out = [f"@@npu-l\n\tTotal Count                    : 8\n\n\tNPU ID                         : 0\n"
           f"\tChip Count                     : {chips}\n@@rc 0"]
    server_index = node_index if server_index is None else server_index
    for d in devices:
        if d in no_ip:
            out.append(f"@@ip {d}\nGet ipconf failed, because no ip was preset there!\n@@rc 13")
        else:
            ip, mask = ip_of(node_index, d)
            out.append(f"@@ip {d}\nipaddr:{ip}\nnetmask:{mask}\n@@rc 0")
        if soc == "a3":
            npu, die = divmod(d, 2)
            link = "DOWN" if d in vnic_down else "UP"
            out.append(f"@@vnic {d}\nvnic link status: {link}\nvnic ipaddr: 192.{server_index}.{2 + die}.{199 - d}\n"
                       f"vnic netmask: 255.255.255.0\n@@rc 0")
            if d in no_spod:
                out.append(f"@@spod {d}\nThis device does not support querying spod-info.\n@@rc 255")
            else:
                sdid = (server_index << 22) | (npu << 18) | (die << 16) | d
                out.append(f"@@spod {d}\n\tSDID                           : {sdid}\n"
                           f"\tSuper Pod Size                 : 384\n\tSuper Pod ID                   : {pod}\n"
                           f"\tServer Index                   : {server_index}\n@@rc 0")
    return "\n".join(out) + "\n"


def facts_for(plan, **per_node) -> dict:
    """facts for every plan node; per_node[name] = captured() kwargs for that node."""
    out = {}
    for i, n in enumerate(plan.nodes):
        devices = plan.devices_used(n)
        out[n] = node_facts(n, captured(plan.inventory.soc, devices, i, **per_node.get(n, {})), devices)
    return out


def where(problems) -> set[tuple]:
    return {(p.node, p.device) for p in problems}


# ------------------------------------------------------------------------------ pd


def test_pd_a2_matches_gen_ranktable_field_by_field():
    plan = _plan(PD_A2)
    table = build_table(plan, facts_for(plan), "pd")
    assert table == {
        "version": "1.2",
        "server_count": "2",
        "prefill_device_list": [
            {"server_id": "172.19.32.175", "device_id": "0", "device_ip": "192.168.0.10", "cluster_id": "1"},
            {"server_id": "172.19.32.175", "device_id": "1", "device_ip": "192.168.1.10", "cluster_id": "2"},
        ],
        "decode_device_list": [
            {"server_id": "172.19.123.51", "device_id": "0", "device_ip": "192.168.0.11", "cluster_id": "3"},
            {"server_id": "172.19.123.51", "device_id": "1", "device_ip": "192.168.1.11", "cluster_id": "4"},
        ],
        "status": "completed",
    }
    assert list(table) == ["version", "server_count", "prefill_device_list", "decode_device_list", "status"]
    assert list(table["prefill_device_list"][0]) == ["server_id", "device_id", "device_ip", "cluster_id"]
    assert validate_table(plan, table, facts_for(plan)) == []


def test_pd_a3_uses_vnic_ip_and_spod_info():
    plan = _plan(PD_A3)
    table = build_table(plan, facts_for(plan), "pd")
    first = table["prefill_device_list"][0]
    assert list(first) == ["server_id", "device_id", "device_ip", "super_pod_id", "super_device_id", "cluster_id"]
    assert first == {"server_id": "172.19.32.175", "device_id": "0", "device_ip": "192.0.2.199",
                     "super_pod_id": "0", "super_device_id": "0", "cluster_id": "1"}
    # device 1 = NPU 0 die 1 on server index 1: SDID 1<<22 | 0<<18 | 1<<16 | 1
    last = table["decode_device_list"][-1]
    assert last == {"server_id": "172.19.123.51", "device_id": "1", "device_ip": "192.1.3.198",
                    "super_pod_id": "0", "super_device_id": str((1 << 22) | (1 << 16) | 1), "cluster_id": "4"}
    assert all(isinstance(v, str) for e in table["prefill_device_list"] + table["decode_device_list"] for v in e.values())
    assert validate_table(plan, table, facts_for(plan)) == []


def test_pd_prefill_servers_first_whatever_the_inventory_order():
    text = PD_A2.replace("  p0: {host: 172.19.32.175, nic: eth0}\n  d0: {host: 172.19.123.51, nic: eth0}",
                         "  d0: {host: 172.19.123.51, nic: eth0}\n  p0: {host: 172.19.32.175, nic: eth0}")
    plan = _plan(text)
    table = build_table(plan, facts_for(plan), "pd")
    assert {e["server_id"] for e in table["prefill_device_list"]} == {"172.19.32.175"}
    assert [e["cluster_id"] for e in table["prefill_device_list"]] == ["1", "2"]


def test_pd_node_devices_in_visible_devices_order():
    """vllm-ascend indexes a node's entries by tp rank: order = ASCEND_RT_VISIBLE_DEVICES."""
    plan = _plan(PD_A2.replace("tp: 2, kv_port: 40000}", "tp: 2, kv_port: 40000, devices: [5, 3]}"))
    assert plan.ranks[0].env["ASCEND_RT_VISIBLE_DEVICES"] == "5,3"
    table = build_table(plan, facts_for(plan), "pd")
    assert [e["device_id"] for e in table["prefill_device_list"]] == ["5", "3"]


# ------------------------------------------------------------------------------ hccl


def test_hccl_a2_v10():
    plan = _plan(PD_A2)
    table = build_table(plan, facts_for(plan), "hccl")
    assert table == {
        "status": "completed", "version": "1.0", "server_count": "2",
        "server_list": [
            {"server_id": "172.19.32.175", "host_ip": "172.19.32.175", "device": [
                {"device_id": "0", "device_ip": "192.168.0.10", "rank_id": "0"},
                {"device_id": "1", "device_ip": "192.168.1.10", "rank_id": "1"}]},
            {"server_id": "172.19.123.51", "host_ip": "172.19.123.51", "device": [
                {"device_id": "0", "device_ip": "192.168.0.11", "rank_id": "2"},
                {"device_id": "1", "device_ip": "192.168.1.11", "rank_id": "3"}]},
        ],
    }
    assert validate_table(plan, table, facts_for(plan)) == []


THREE_A3 = """\
name: rt3
soc: a3
nodes:
  a: {host: 10.0.0.1, nic: eth0}
  b: {host: 10.0.0.2, nic: eth0}
  c: {host: 10.0.0.3, nic: eth0}
container: {image: x}
model: {path: /weights/m}
groups:
  - {name: s, role: serve, nodes: [a, b, c], dp: 3, tp: 2}
"""


def test_hccl_a3_v12_super_pods_contiguous():
    """a and c in Super Pod 0, b in Super Pod 1: servers regrouped a, c, b; rank ids follow."""
    plan = _plan(THREE_A3)
    facts = facts_for(plan, b={"pod": 1, "server_index": 0}, c={"server_index": 1})
    table = build_table(plan, facts, "hccl")
    assert table["version"] == "1.2"
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.1", "10.0.0.3", "10.0.0.2"]
    assert [d["rank_id"] for s in table["server_list"] for d in s["device"]] == [str(i) for i in range(6)]
    assert table["super_pod_list"] == [
        {"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"}, {"server_id": "10.0.0.3"}]},
        {"super_pod_id": "1", "server_list": [{"server_id": "10.0.0.2"}]},
    ]
    dev = table["server_list"][0]["device"][1]
    assert dev == {"device_id": "1", "device_ip": "192.168.1.10", "super_device_id": str((1 << 16) | 1), "rank_id": "1"}
    assert validate_table(plan, table, facts) == []


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("fmt", ["pd", "hccl"])
def test_missing_ip_names_node_and_device(fmt):
    plan = _plan(PD_A2)
    facts = facts_for(plan, d0={"no_ip": {1}})
    problems = validate_table(plan, build_table(plan, facts, fmt), facts)
    assert where(problems) == {("d0", 1)}
    assert "no device IP" in problems[0].message
    assert "no ip was preset" in problems[0].fix   # the tool's own line is quoted


def test_duplicate_device_ip_names_both():
    plan = _plan(PD_A2)
    facts = facts_for(plan, d0={"ip_of": lambda _i, d: ("192.168.0.10", "255.255.255.0") if d == 1
                                 else roce(1, d)})
    problems = validate_table(plan, build_table(plan, facts, "pd"), facts)
    dup = [p for p in problems if "also on" in p.message]
    assert where(dup) == {("p0", 0), ("d0", 1)}


def test_plane_in_another_subnet_is_named():
    plan = _plan(PD_A2)
    facts = facts_for(plan, d0={"ip_of": lambda i, d: ("10.99.0.5", "255.255.0.0") if d == 1 else roce(i, d)})
    problems = validate_table(plan, build_table(plan, facts, "hccl"), facts)
    assert len(problems) == 1 and problems[0].device == 1
    assert "plane 1" in problems[0].message


def test_planned_device_without_facts_is_missing():
    plan = _plan(PD_A2)
    facts = facts_for(plan)
    del facts["d0"].devices[1]
    problems = validate_table(plan, build_table(plan, facts, "pd"), facts)
    assert ("d0", 1) in where(problems)
    assert any("missing from decode_device_list" in p.message for p in problems)
    assert any("has 1 devices, the plan uses 2" in p.message for p in problems)


def test_node_without_facts_is_named_once():
    plan = _plan(PD_A2)
    facts = facts_for(plan)
    del facts["d0"]
    problems = validate_table(plan, build_table(plan, facts, "pd"), facts)
    assert ("d0", None) in where(problems)
    assert not any(p.node == "d0" and p.device is not None for p in problems)


def test_tampered_tables_are_refused():
    plan = _plan(PD_A2)
    good = build_table(plan, facts_for(plan), "pd")
    t = copy.deepcopy(good)
    t["server_count"] = "4"
    assert any("server_count" in p.message for p in validate_table(plan, t))
    t = copy.deepcopy(good)
    t["prefill_device_list"], t["decode_device_list"] = t["decode_device_list"], t["prefill_device_list"]
    assert validate_table(plan, t)   # decode devices in the prefill list
    t = copy.deepcopy(good)
    t["decode_device_list"][0]["cluster_id"] = "1"
    assert ("d0", 0) in where(validate_table(plan, t))
    h = build_table(plan, facts_for(plan), "hccl")
    h["server_list"][1]["device"][0]["rank_id"] = "7"
    assert ("d0", 0) in where(validate_table(plan, h))
    h = build_table(plan, facts_for(plan), "hccl")
    h["version"] = "1.2"
    assert any("version" in p.message for p in validate_table(plan, h))


def test_a3_missing_sdid_and_vnic_down_are_named():
    plan = _plan(PD_A3)
    facts = facts_for(plan, p0={"no_spod": {1}}, d0={"vnic_down": {0}})
    problems = validate_table(plan, build_table(plan, facts, "pd"), facts)
    assert where(problems) == {("p0", 1), ("d0", 0)}
    assert any("SDID" in p.message for p in problems if p.node == "p0")
    assert any("vNIC link is DOWN" in p.message for p in problems if p.node == "d0")


def test_a3_duplicate_sdid_in_a_pod():
    plan = _plan(PD_A3)
    facts = facts_for(plan, d0={"server_index": 0})  # both servers claim Server Index 0
    problems = validate_table(plan, build_table(plan, facts, "hccl"), facts)
    assert {p.device for p in problems if "SDID" in p.message} == {0, 1}


def test_hash_is_sha256_of_the_written_text():
    plan = _plan(PD_A2)
    table = build_table(plan, facts_for(plan), "pd")
    text = render_table(table)
    assert text.endswith("\n")
    assert table_hash(table) == hashlib.sha256(text.encode()).hexdigest()
    assert table_hash(table) != table_hash(build_table(plan, facts_for(plan), "hccl"))


def test_a3_hccl_pods_must_be_contiguous_and_complete():
    plan = _plan(THREE_A3)
    facts = facts_for(plan, b={"pod": 1, "server_index": 0}, c={"server_index": 1})
    good = build_table(plan, facts, "hccl")
    t = copy.deepcopy(good)
    t["server_list"] = [t["server_list"][i] for i in (0, 2, 1)]   # a, b, c: pod 0, 1, 0
    for i, d in enumerate(x for s in t["server_list"] for x in s["device"]):
        d["rank_id"] = str(i)
    assert any("not contiguous" in p.message for p in validate_table(plan, t, facts))
    t = copy.deepcopy(good)
    t["super_pod_list"][1]["server_list"] = []
    assert ("b", None) in where(validate_table(plan, t, facts))
