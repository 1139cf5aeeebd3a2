"""Every validation rule of the spec: a bad inventory exits 2 and names file:line, field and fix."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

BASE = """\
name: t-2p1d
soc: a3
nodes:
  p0: {host: 10.1.0.1, nic: eth0}
  p1: {host: 10.1.0.2, nic: eth0}
  d0: {host: 10.1.0.3, nic: eth0}
  d1: {host: 10.1.0.4, nic: eth0}
container:
  image: img
model:
  path: /weights/m
kv_transfer:
  connector: MooncakeConnectorV1
groups:
  - name: p0
    role: prefill
    nodes: [p0]
    dp: 2
    tp: 8
    kv_port: 40000
  - name: p1
    role: prefill
    nodes: [p1]
    dp: 2
    tp: 8
    kv_port: 40100
  - name: d
    role: decode
    nodes: [d0, d1]
    dp: 32
    tp: 1
    kv_port: 40200
proxy:
  node: p0
  port: 1999
"""


def run(tmp_path, text, *args):
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["plan", str(path), *args])
    return result, str(path)


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[nth - 1]


def assert_error(result, path, line, field, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    out = result.output
    assert f"{path}:{line}: {field}:" in out, out
    for w in words:
        assert re.search(w, out), (w, out)


def test_base_is_valid(tmp_path):
    result, _ = run(tmp_path, BASE, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["ranks"]) == 2 + 2 + 32


def test_unknown_key_did_you_mean(tmp_path):
    text = edit("    tp: 8\n    kv_port: 40000", "    tp: 8\n    kv_prot: 40000")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "kv_prot"), "groups[0].kv_prot", "unknown key 'kv_prot'",
                 "did you mean 'kv_port'")


def test_unknown_top_level_and_node_keys_reported_together(tmp_path):
    text = edit("soc: a3", "soc: a3\nreadyness: {timeout: 10}")
    text = edit("p1: {host: 10.1.0.2, nic: eth0}", "p1: {hots: 10.1.0.2, nic: eth0}", text)
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "readyness"), "readyness", "did you mean 'readiness'")
    assert f"{path}:{line_of(text, 'hots')}: nodes.p1.hots: unknown key 'hots'" in result.output
    assert "did you mean 'host'" in result.output
    assert "problems in the inventory" in result.output


def test_bad_yaml_names_line(tmp_path):
    text = edit("  image: img", "  image: [img")
    result, path = run(tmp_path, text)
    assert result.exit_code == 2
    assert f"{path}:" in result.output and "YAML syntax" in result.output


def test_missing_file(tmp_path):
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read the inventory" in result.output


def test_missing_required_field(tmp_path):
    text = edit("model:\n  path: /weights/m\n", "")
    result, path = run(tmp_path, text)
    assert_error(result, path, 1, "model", "required field is missing")


def test_bad_name_pattern(tmp_path):
    text = edit("name: t-2p1d", "name: T_2p1d")
    result, path = run(tmp_path, text)
    assert_error(result, path, 1, "name", "not allowed", "a-z0-9-")


def test_invalid_choice_suggests(tmp_path):
    text = edit("connector: MooncakeConnectorV1", "connector: MooncakeConnector")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "connector:"), "kv_transfer.connector", "did you mean 'MooncakeConnectorV1'")


def test_host_keys_ignore_rejected(tmp_path):
    text = edit("soc: a3", "soc: a3\nssh: {host_keys: ignore}")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "host_keys"), "ssh.host_keys", "'ignore' is not allowed", "strict")


def test_undefined_node(tmp_path):
    text = edit("nodes: [d0, d1]", "nodes: [d0, d2]")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "nodes: [d0, d2]"), r"groups[2].nodes[1]", "'d2' is not defined",
                 "did you mean 'd0'|d1")


def test_proxy_node_undefined(tmp_path):
    text = edit("  node: p0", "  node: px")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "node: px"), "proxy.node", "'px' is not defined")


def test_dp_not_divisible_by_nodes(tmp_path):
    text = edit("dp: 32", "dp: 31")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "dp: 31"), "groups[2].dp", r"not divisible by the number of nodes \(2\)")


def test_dp_local_mismatch(tmp_path):
    text = edit("dp: 32\n", "dp: 32\n    dp_local: 8\n")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "dp_local"), "groups[2].dp_local", r"must equal dp_local \(8\)")


def test_more_devices_than_soc(tmp_path):
    text = edit("soc: a3", "soc: a2")
    result, path = run(tmp_path, text)
    # p0: dp 2 x tp 8 = 16 devices per node, an a2 node has 8
    assert_error(result, path, line_of(text, "- name: p0"), "groups[0]", "needs 16 devices per node", "a2 has")


def test_more_devices_than_node_allows(tmp_path):
    text = edit("p0: {host: 10.1.0.1, nic: eth0}", "p0: {host: 10.1.0.1, nic: eth0, devices: [0, 1, 2, 3]}")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "nodes: [p0]"), "groups[0].nodes[0]", "needs 16 devices on node 'p0'",
                 "only 4 are free")


def test_same_device_two_groups(tmp_path):
    text = BASE.replace("nodes: [p1]", "nodes: [p0]").replace("dp: 2\n    tp: 8\n    kv_port: 40000",
                                                              "dp: 1\n    tp: 8\n    devices: [0,1,2,3,4,5,6,7]\n    kv_port: 40000")
    text = text.replace("dp: 2\n    tp: 8\n    kv_port: 40100", "dp: 1\n    tp: 8\n    devices: [7,8,9,10,11,12,13,14]\n    kv_port: 40100")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "devices: [7"), "groups[1].devices",
                 "device 7 of node 'p0' is also used by group 'p0'")


def test_http_port_collision(tmp_path):
    # p0 and p1 on the same host: both groups' ranks take ports 7100-7101.
    text = edit("p1: {host: 10.1.0.2, nic: eth0}", "p1: {host: 10.1.0.1, nic: eth0}")
    result, path = run(tmp_path, text)
    assert result.exit_code == 2
    assert "HTTP port 7100 of group 'p1'" in result.output and "collides" in result.output
    assert "host 10.1.0.1" in result.output


def test_kv_port_range_overlap(tmp_path):
    # group p0 uses 40000..40015 (dp 2 x tp 8); p1 on the same host starting at 40010 overlaps.
    text = BASE.replace("p1: {host: 10.1.0.2, nic: eth0}", "p1: {host: 10.1.0.1, nic: eth0}")
    text = text.replace("kv_port: 40100", "kv_port: 40010").replace("nodes: [p1]\n", "nodes: [p1]\n    port: 7200\n")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "kv_port: 40010"), "groups[1].kv_port",
                 "kv ports 40010-40017 of group 'p1'", "collides with kv ports 40000-40007 of group 'p0'|collides with kv ports 40008-40015")


def test_rpc_port_collides_with_http(tmp_path):
    text = edit("    kv_port: 40000", "    kv_port: 40000\n    dp_rpc_port: 7101")
    result, path = run(tmp_path, text)
    assert result.exit_code == 2
    assert "DP RPC port 7101 of group 'p0'" in result.output and "collides" in result.output


def test_duplicate_engine_id(tmp_path):
    text = edit("    kv_port: 40100", "    kv_port: 40100\n    engine_id: 0")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "engine_id"), "groups[1].engine_id", "engine_id '0' is also used by group 'p0'")


def test_prefill_groups_differ(tmp_path):
    text = edit("    dp: 2\n    tp: 8\n    kv_port: 40100", "    dp: 1\n    tp: 8\n    kv_port: 40100")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "- name: p1"), "groups[1]", "prefill groups must share dp and tp")


def test_decode_tp_above_prefill(tmp_path):
    text = edit("dp: 32\n    tp: 1", "dp: 2\n    tp: 16")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "tp: 16"), "groups[2].tp", "decode tp 16 is greater than prefill tp 8")


def test_kv_transfer_without_decode(tmp_path):
    text = BASE[:BASE.index("  - name: d")] + "proxy: {node: p0}\n"
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "kv_transfer:"), "kv_transfer", "no decode group")


def test_prefill_without_kv_transfer(tmp_path):
    text = edit("kv_transfer:\n  connector: MooncakeConnectorV1\n", "")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "role: prefill"), "groups[0].role", "role prefill needs kv_transfer")


def test_kv_port_required(tmp_path):
    text = edit("    kv_port: 40200\n", "\n")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "- name: d"), "groups[2].kv_port", "kv_port is required")


def test_planner_flag_in_args_rejected(tmp_path):
    text = edit("groups:", "args:\n  port: 9000\ngroups:")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "port: 9000"), "args.port", "--port is set by the planner")


def test_nnodes_world_size(tmp_path):
    text = BASE.replace("nodes: [p0]\n    dp: 2\n    tp: 8", "nodes: [p0, p1]\n    launch: nnodes\n    tp: 8")
    text = text.replace("  - name: p1\n    role: prefill\n    nodes: [p1]\n    dp: 2\n    tp: 8\n    kv_port: 40100\n", "")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "tp: 8"), "groups[0].tp", "world size tp x pp x pcp = 8",
                 "32 devices")


def test_warnings_do_not_fail(tmp_path):
    text = edit("kv_port: 40200", "kv_port: 30200\n    args: {enforce-eager: true, gpu-memory-utilization: 0.97}")
    result, path = run(tmp_path, text, "--json")
    assert result.exit_code == 0
    err = result.stderr
    assert "inside Mooncake's random transfer-engine range" in err
    assert "enforce-eager on a decode group" in err
    assert "gpu-memory-utilization 0.97 is above 0.95" in err
    json.loads(result.stdout)  # stdout stays pure JSON


def test_duplicate_key(tmp_path):
    text = edit("  port: 1999", "  port: 1999\n  port: 2000")
    result, path = run(tmp_path, text)
    assert_error(result, path, line_of(text, "port: 2000"), "proxy.port", "duplicate key 'port'")


@pytest.mark.parametrize("old,bad", [("dp: 32", "dp: 0"), ("dp: 32\n    tp: 1", "dp: 32\n    tp: -1"),
                                     ("dp: 32", "dp: two")])
def test_bad_numbers(tmp_path, old, bad):
    text = edit(old, bad)
    bad = bad.splitlines()[-1]
    result, path = run(tmp_path, text)
    assert result.exit_code == 2
    assert f"{path}:{line_of(text, bad)}: groups[2]." in result.output
