"""`launch: env` (the large-EP guide's env-driven DP, v0.9.1-era images) in the planner, and the
mistake it guards against: VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED set by hand without the VLLM_DP_*
variables, which the real image accepts and then silently runs with DP size 1.
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.errors import InventoryError
from orchestrator.inventory import parse_inventory
from orchestrator.plan import make_plan

BASE = """\
name: envdp
soc: a3
nodes:
  p0: {host: 10.0.0.1, nic: eth0}
  d0: {host: 10.0.0.2, nic: eth0}
  d1: {host: 10.0.0.3, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.9.1-a3}
model: {path: /root/.cache/m}
kv_transfer: {connector: LLMDataDistCMgrConnector}
groups:
  - {name: p, role: prefill, nodes: [p0], dp: 1, tp: 8, launch: env, kv_port: 20001, devices: [8, 9, 10, 11, 12, 13, 14, 15]}
  - {name: d, role: decode, nodes: [d0, d1], dp: 4, tp: 4, launch: env, kv_port: 20002, dp_rpc_port: 13000}
proxy: {node: p0}
"""


def plan(text: str):
    return make_plan(parse_inventory(text))


def test_env_ranks_carry_the_dp_variables_and_no_dp_flags():
    p = plan(BASE)
    d = [r for r in p.ranks if r.group == "d"]
    assert [(r.node, r.local_rank, r.dp_rank, r.port) for r in d] == [
        ("d0", 0, 0, 7100), ("d0", 1, 1, 7101), ("d1", 0, 2, 7100), ("d1", 1, 3, 7101)]
    r = d[3]
    assert {k: r.env[k] for k in r.env if k.startswith("VLLM_")} == {
        "VLLM_DP_SIZE": "4", "VLLM_DP_MASTER_IP": "10.0.0.2", "VLLM_DP_MASTER_PORT": "13000",
        "VLLM_DP_RANK_LOCAL": "1", "VLLM_DP_RANK": "3", "VLLM_DP_SIZE_LOCAL": "2",
        "VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED": "1", "VLLM_WORKER_MULTIPROC_METHOD": "fork"}
    for rank in p.ranks:
        assert not [a for a in rank.argv if a.startswith("--data-parallel") or a == "--headless"], rank.argv
        assert rank.argv[rank.argv.index("--port") + 1] == str(rank.port)
    # the rank owns its tp devices; visible are the group's devices on the node (vLLM narrows them)
    assert r.devices == [4, 5, 6, 7]
    assert r.env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    pre = p.ranks[0]
    assert pre.devices == list(range(8, 16)) and pre.env["ASCEND_RT_VISIBLE_DEVICES"] == "8,9,10,11,12,13,14,15"


def test_env_groups_launch_other_nodes_not_headless():
    pl = plan(BASE)
    steps = [(s.name, s.group, s.describe(pl)) for s in pl.steps if s.name == "launch"]
    assert ("launch", "d", "other nodes") in steps


@pytest.mark.parametrize("where, text", [
    ("env", BASE.replace("groups:\n", "env: {VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED: 1}\ngroups:\n")),
    ("roles.decode.env", BASE.replace("groups:\n", "roles: {decode: {env: {VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED: '1'}}}\ngroups:\n")),
    ("groups[1].env", BASE.replace("launch: env, kv_port: 20002,", "env: {VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED: '1'}, kv_port: 20002,")),
    ("container.env", BASE.replace("v0.9.1-a3}", "v0.9.1-a3, env: {VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED: '1'}}")
     .replace("launch: env, kv_port: 20002,", "kv_port: 20002,")),
])
def test_lb_switch_by_hand_without_launch_env_is_refused(where, text):
    text = text.replace("launch: env, kv_port: 20002,", "kv_port: 20002,")  # d launches external
    with pytest.raises(InventoryError) as e:
        plan(text)
    msgs = [f"{'.'.join(map(str, pr.path))}: {pr.message} / {pr.hint}" for pr in e.value.problems]
    assert any("VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED" in m and "DP size 1" in m and "launch: env" in m
               for m in msgs), msgs
    assert all("group 'd'" in m for m in msgs if "DP size 1" in m), msgs


def test_lb_switch_refused_through_the_cli(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text(BASE.replace("launch: env, kv_port: 20002,", "env: {VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED: '1'}, kv_port: 20002,"))
    result = CliRunner().invoke(main, ["plan", str(inv)])
    assert result.exit_code == 2
    assert "VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED" in result.output and "launch: env" in result.output


def test_dp_variables_by_hand_are_the_planners():
    p = plan(BASE.replace("launch: env, kv_port: 20002,", "launch: env, env: {VLLM_DP_RANK: '9'}, kv_port: 20002,"))
    assert [r.env["VLLM_DP_RANK"] for r in p.ranks if r.group == "d"] == ["0", "1", "2", "3"]
    assert any("VLLM_DP_RANK" in w.message for w in p.warnings)


def test_dp_flags_in_args_are_refused_in_env_mode():
    with pytest.raises(InventoryError) as e:
        plan(BASE.replace("launch: env, kv_port: 20002,", "launch: env, args: {data-parallel-size: 4}, kv_port: 20002,"))
    assert any("--data-parallel-size is set by the planner" in pr.message for pr in e.value.problems)
