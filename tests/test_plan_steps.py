"""Typed bring-up steps and the per-node container of a plan (pure)."""
from __future__ import annotations

import json

import yaml

from orchestrator.inventory import parse_inventory
from orchestrator.plan import CONTROL_DEVICES, DRIVER_MOUNTS, StepKind, make_plan


def pd(connector="MooncakeConnectorV1", **extra) -> dict:
    doc = {
        "name": "t-pd", "soc": "a3",
        "nodes": {n: {"host": f"10.0.0.{i + 1}", "nic": "eth0"} for i, n in enumerate(
            ["p0", "p1", "d0", "d1", "spare"])},
        "container": {"image": "img:1"},
        "model": {"path": "/weights/m"},
        "kv_transfer": {"connector": connector},
        "groups": [
            {"name": "pa", "role": "prefill", "nodes": ["p0"], "dp": 2, "tp": 8, "kv_port": 40000},
            {"name": "pb", "role": "prefill", "nodes": ["p1"], "dp": 2, "tp": 8, "kv_port": 40100},
            {"name": "d", "role": "decode", "nodes": ["d0", "d1"], "dp": 4, "tp": 4, "kv_port": 40200},
        ],
        "proxy": {"node": "p0"},
    }
    doc.update(extra)
    return doc


def plan_of(doc):
    return make_plan(parse_inventory(yaml.safe_dump(doc, sort_keys=False), "t.yaml"))


def order(plan):
    return [(s.name, s.group, s.role, s.wave, list(s.nodes)) for s in plan.steps]


def test_step_kinds_are_the_json_names():
    assert [k.value for k in StepKind] == ["check-network", "ranktable", "containers", "setup", "launch",
                                           "readiness", "proxy", "warmup", "smoke"]


def test_pd_order_one_wave_master_then_others():
    plan = plan_of(pd())
    used = ["p0", "p1", "d0", "d1"]
    assert order(plan) == [
        ("check-network", None, None, None, used),
        ("containers", None, None, None, used),
        ("setup", None, None, None, used),            # d spans two nodes: the socket-env guard
        ("launch", "pa", "master", 0, ["p0"]),
        ("launch", "pb", "master", 0, ["p1"]),
        ("launch", "d", "master", 0, ["d0"]),
        ("launch", "d", "others", 0, ["d1"]),
        ("readiness", None, None, None, used),
        ("proxy", None, None, None, ["p0"]),
        ("smoke", None, None, None, ["p0"]),
    ]
    assert plan.steps[-1].via == "proxy"


def test_layerwise_decode_wave_first():
    plan = plan_of(pd("MooncakeLayerwiseConnector"))
    launches = [(s.group, s.role, s.wave) for s in plan.steps if s.kind is StepKind.LAUNCH]
    assert launches == [("d", "master", 0), ("d", "others", 0), ("pa", "master", 1), ("pb", "master", 1)]
    assert [s.describe(plan) for s in plan.steps if s.kind is StepKind.LAUNCH] == [
        "master, wave 0", "other nodes, wave 0", "master, wave 1", "master, wave 1"]


def test_llmdatadist_has_a_ranktable_step_after_the_network_gate():
    plan = plan_of(pd("LLMDataDistCMgrConnector"))
    assert [s.name for s in plan.steps][:3] == ["check-network", "ranktable", "containers"]


def test_launch_ranks_are_the_groups_processes_on_the_steps_nodes():
    plan = plan_of(pd())
    steps = [s for s in plan.steps if s.kind is StepKind.LAUNCH]
    started = [r for s in steps for r in plan.launch_ranks(s)]
    assert sorted(map(id, started)) == sorted(map(id, plan.ranks))   # every rank exactly once
    others = next(s for s in steps if s.role == "others")
    assert {r.node for r in plan.launch_ranks(others)} == {"d1"}


def test_colocated_smoke_via_the_api_rank_and_no_smoke_when_off():
    doc = pd()
    del doc["kv_transfer"], doc["proxy"]
    doc["groups"] = [{"name": "s", "role": "serve", "nodes": ["d0", "d1"], "dp": 2, "tp": 8}]
    plan = plan_of(doc)
    assert order(plan)[-3:] == [("launch", "s", "others", 0, ["d1"]), ("readiness", None, None, None, ["d0"]),
                                ("smoke", None, None, None, ["d0"])]
    assert plan.steps[-1].via == "rank"
    doc["readiness"] = {"smoke": False}
    assert "smoke" not in [s.name for s in plan_of(doc).steps]


def test_no_setup_step_without_setup_or_guard():
    plan = plan_of(pd(container={"image": "img:1", "socket_env_guard": False}))
    assert "setup" not in [s.name for s in plan.steps]


def test_steps_json_keeps_the_spec_keys():
    steps = json.loads(json.dumps(plan_of(pd()).to_json()))["steps"]
    assert steps[0] == {"name": "check-network", "nodes": ["p0", "p1", "d0", "d1"],
                        "detail": "NPU links, TLS, device IPs, planned-pair pings"}
    assert steps[6] == {"name": "launch", "nodes": ["d1"], "group": "d", "role": "others", "wave": 0,
                        "detail": "other nodes"}


# ---- containers

def test_one_container_per_used_node_in_node_order():
    plan = plan_of(pd())
    assert [c.node for c in plan.containers] == ["p0", "p1", "d0", "d1"]   # not "spare"
    assert {c.name for c in plan.containers} == {"vllm-t-pd"}
    assert plan.container_on("spare") is None
    assert plan.to_json()["containers"][0] == {
        "node": "p0", "name": "vllm-t-pd", "image": "img:1", "argv": plan.containers[0].argv}


def test_container_argv_layout():
    doc = pd(container={"image": "reg/img:2", "name": "mine", "shm_size": "64g", "privileged": True,
                        "mounts": ["/data:/data:ro", "/my/hccn.conf:/etc/hccn.conf"],
                        "env": {"A": "1", "B": "x y"}})
    doc["groups"][2]["devices"] = {"d0": [4, 5, 6, 7, 8, 9, 10, 11], "d1": [0, 1, 2, 3, 12, 13, 14, 15]}
    plan = plan_of(doc)
    c = plan.container_on("d0")
    assert c.argv[:8] == ["docker", "run", "-d", "--name", "mine", "--net=host", "--shm-size=64g", "--privileged"]
    assert c.argv[-3:] == ["reg/img:2", "sleep", "infinity"]
    # every device of the node, though d0's ranks use 4..11: in a container that mounts a subset
    # the runtime renumbers devices from 0 and the physical ids the ranks are given would be wrong
    devs = [c.argv[i + 1] for i, t in enumerate(c.argv) if t == "--device"]
    assert devs == [f"/dev/davinci{d}" for d in range(16)] + list(CONTROL_DEVICES)
    assert plan.ranks_on("d0")[0].env["ASCEND_RT_VISIBLE_DEVICES"].split(",")[0] == "4"
    binds = [c.argv[i + 1] for i, t in enumerate(c.argv) if t == "-v"]
    std = [f"{p}:{p}" for p in DRIVER_MOUNTS]
    std[DRIVER_MOUNTS.index("/etc/hccn.conf")] = "/my/hccn.conf:/etc/hccn.conf"   # replaced in place
    assert binds == std + ["/var/tmp/deploy/t-pd:/var/tmp/deploy/t-pd", "/data:/data:ro"]
    assert [c.argv[i + 1] for i, t in enumerate(c.argv) if t == "-e"] == ["A=1", "B=x y"]
    assert "--privileged" not in plan_of(pd()).containers[0].argv
