"""The inventory fields `up` adds (docs/inventory.md, "Extensions"): env null, kv_extra,
container.env_files / setup / socket_env_guard, mount validation — as the plan sees them."""
from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.errors import InventoryError
from orchestrator.inventory import DEFAULT_ENV_FILES, parse_inventory
from orchestrator.plan import make_plan

BASE = {
    "name": "t-pd", "soc": "a2",
    "nodes": {"p0": {"host": "10.0.0.1", "nic": "eth0"}, "d0": {"host": "10.0.0.2", "nic": "eth1"},
              "d1": {"host": "10.0.0.3", "nic": "eth1"}},
    "container": {"image": "img:1"},
    "model": {"path": "/weights/m"},
    "kv_transfer": {"connector": "MooncakeConnectorV1", "extra": {"a": 1, "nested": {"x": 1, "y": 1}}},
    "groups": [
        {"name": "p", "role": "prefill", "nodes": ["p0"], "dp": 2, "tp": 4, "kv_port": 40000},
        {"name": "d", "role": "decode", "nodes": ["d0", "d1"], "dp": 2, "tp": 4, "kv_port": 40100},
    ],
    "proxy": {"node": "p0"},
}


def plan_of(**edits):
    doc = json.loads(json.dumps(BASE))
    for path, value in edits.items():
        cur = doc
        keys = path.split("__")
        for k in keys[:-1]:
            cur = cur[int(k)] if isinstance(cur, list) else cur.setdefault(k, {})
        cur[keys[-1]] = value
    return make_plan(parse_inventory(yaml.safe_dump(doc, sort_keys=False), "t.yaml"))


def problems(**edits) -> str:
    with pytest.raises(InventoryError) as e:
        plan_of(**edits)
    return str(e.value)


def kv_extra(plan, group):
    argv = next(r.argv for r in plan.ranks if r.group == group)
    return json.loads(argv[argv.index("--kv-transfer-config") + 1])["kv_connector_extra_config"]


# ---- env: null

def test_env_null_unsets_on_the_node_and_stays_out_of_env():
    plan = plan_of(env={"http_proxy": None, "KEEP": "1"})
    for r in plan.ranks:
        assert "http_proxy" not in r.env and r.env["KEEP"] == "1"
        assert r.unset == ["http_proxy"]
        assert r.to_json()["unset"] == ["http_proxy"]


def test_env_null_is_overridden_by_a_higher_layer_and_removes_a_lower_one():
    plan = plan_of(env={"http_proxy": None, "X": "low"},
                   roles={"decode": {"env": {"http_proxy": "http://proxy:8080"}}},
                   groups__0__env={"X": None})
    p = [r for r in plan.ranks if r.group == "p"]
    d = [r for r in plan.ranks if r.group == "d"]
    assert all(r.unset == ["http_proxy", "X"] and "X" not in r.env for r in p)
    assert all(r.unset == [] and r.env["http_proxy"] == "http://proxy:8080" and r.env["X"] == "low" for r in d)
    assert all("unset" not in r.to_json() for r in d)  # no key when nothing is unset


def test_env_null_of_a_per_rank_variable_is_not_unset():
    plan = plan_of(env={"HCCL_IF_IP": None})
    assert all(r.unset == [] and r.env["HCCL_IF_IP"] for r in plan.ranks)


# ---- kv_extra

def test_kv_extra_role_then_group_over_kv_transfer_extra():
    plan = plan_of(roles={"prefill": {"kv_extra": {"a": 2, "nested": {"y": 2}, "r": True}}},
                   groups__0__kv_extra={"a": 3, "nested": {"x": 3}})
    assert kv_extra(plan, "p") == {"prefill": {"dp_size": 2, "tp_size": 4}, "decode": {"dp_size": 2, "tp_size": 4},
                                   "a": 3, "nested": {"x": 3, "y": 2}, "r": True}
    assert kv_extra(plan, "d") == {"prefill": {"dp_size": 2, "tp_size": 4}, "decode": {"dp_size": 2, "tp_size": 4},
                                   "a": 1, "nested": {"x": 1, "y": 1}}


def test_kv_extra_unknown_place_is_an_error():
    assert "unknown key 'kv_extras'" in problems(groups__0__kv_extras={"a": 1})


# ---- container fields

def test_container_defaults():
    c = plan_of().inventory.container
    assert c.env_files == list(DEFAULT_ENV_FILES) == [
        "/usr/local/Ascend/ascend-toolkit/set_env.sh", "/usr/local/Ascend/nnal/atb/set_env.sh"]
    assert c.setup == [] and c.socket_env_guard is None


@pytest.mark.parametrize("groups, explicit, expected", [
    (None, None, True),             # d spans d0 + d1
    (None, False, False),
    ("single", None, False),        # no group spans nodes
    ("single", True, True),
])
def test_socket_env_guard_default_follows_groups_spanning_nodes(groups, explicit, expected):
    edits = {}
    if groups == "single":
        edits["groups__1__nodes"] = ["d0"]
        edits["groups__1__dp"] = 1
    if explicit is not None:
        edits["container__socket_env_guard"] = explicit
    plan = plan_of(**edits)
    assert plan.socket_env_guard is expected
    assert all((c.socket_env is not None) is expected for c in plan.containers)
    assert ("setup" in [s.name for s in plan.steps]) is expected


def test_setup_argv_lists():
    plan = plan_of(container__setup=[["cp", "/data/x.py", "/usr/lib/"], ["true"]],
                   container__socket_env_guard=False)
    assert plan.containers[0].setup == (("cp", "/data/x.py", "/usr/lib/"), ("true",))
    assert "setup" in [s.name for s in plan.steps]


@pytest.mark.parametrize("setup, fragment", [
    ([[]], "container.setup[0]"),
    ([["cp", "a"], [""]], "container.setup[1]"),
    (["cp a b"], "container.setup[0]"),
    ([[["nested"]]], "container.setup[0][0]"),
])
def test_setup_must_be_non_empty_string_lists(setup, fragment):
    assert fragment in problems(container__setup=setup)


@pytest.mark.parametrize("mount", [
    "relative:/x", "/x:relative", "/x", "/a:/b:rx", "/a:/b:ro:extra", "/a\n:/b", "~/cache:/root/.cache",
])
def test_bad_mounts_are_refused_at_the_inventory(mount):
    out = problems(container__mounts=["/ok:/ok", mount])
    assert "container.mounts[1]" in out and "container.mounts[0]" not in out


@pytest.mark.parametrize("mount", ["/data:/data", "/a:/b:ro", "/a:/b:rw", "/usr/local/Ascend/driver/lib64/:/x/"])
def test_good_mounts(mount):
    assert mount in plan_of(container__mounts=[mount]).containers[0].binds


@pytest.mark.parametrize("mount", ["/x:/var/tmp/deploy/t-pd", "/x:/var/tmp", "/x:/", "/x:/var/tmp/deploy/t-pd/"])
def test_a_mount_over_the_state_folder_is_refused(mount):
    assert "state folder" in problems(container__mounts=[mount])


def test_env_files_must_be_absolute():
    assert "container.env_files[0]" in problems(container__env_files=["set_env.sh"])
    assert plan_of(container__env_files=[]).inventory.container.env_files == []


@pytest.mark.parametrize("size, ok", [("1g", True), ("1500g", True), ("64mb", True), ("1.5GiB", True),
                                      ("lots", False), ("-1g", False), ("1x", False)])
def test_shm_size_is_a_docker_size(size, ok):
    if ok:
        assert plan_of(container__shm_size=size).containers[0].argv[6] == f"--shm-size={size}"
    else:
        assert "container.shm_size" in problems(container__shm_size=size)


def test_shm_bytes_matches_docker_inspect():
    assert plan_of(container__shm_size="512g").containers[0].shm_bytes == 512 * 1024 ** 3


def test_kv_extra_without_use_is_an_error():
    assert "roles.serve.kv_extra" in problems(roles={"serve": {"kv_extra": {"a": 1}}})
    doc_edits = dict(kv_transfer=None, proxy=None, groups=[
        {"name": "s", "role": "serve", "nodes": ["p0"], "kv_extra": {"a": 1}}])
    out = problems(**doc_edits)
    assert "groups[0].kv_extra" in out


@pytest.mark.parametrize("edit, path", [
    ({"container__image": "--privileged"}, "container.image"),
    ({"container__image": "img with space"}, "container.image"),
    ({"container__name": "-x"}, "container.name"),
    ({"container__env": {"A=B": "1"}}, "container.env['A=B']"),
    ({"container__env": {"1A": "1"}}, "container.env.1A"),
])
def test_container_values_that_would_become_docker_options_are_refused(edit, path):
    assert path in problems(**edit)


def test_container_env_is_passed_literally():
    c = plan_of(container__env={"A": "x $HOME y", "B": 1}).containers[0]
    assert ["-e", "A=x $HOME y", "-e", "B=1"] == c.argv[-7:-3]
