import pytest
import yaml

from orchestrator.inventory import parse_inventory
from orchestrator.nodeset import SelectorError, expand, fold, select_nodes


@pytest.fixture
def inv():
    data = {
        "name": "t", "soc": "a3",
        "nodes": {n: {"host": f"10.0.0.{i}", "nic": "eth0"}
                  for i, n in enumerate(["p0", "p1", "d0", "d1", "d2", "head"])},
        "container": {"image": "x"}, "model": {"path": "/m"},
        "kv_transfer": {"connector": "MooncakeConnectorV1"},
        "groups": [
            {"name": "gp0", "role": "prefill", "nodes": ["p0"], "kv_port": 30000},
            {"name": "gp1", "role": "prefill", "nodes": ["p1"], "kv_port": 30100},
            {"name": "gd", "role": "decode", "nodes": ["d0", "d1", "d2"], "kv_port": 30200},
        ],
        "proxy": {"node": "head"},
    }
    return parse_inventory(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("names, folded", [
    (["d0", "d1", "p0", "p1"], "d[0-1],p[0-1]"),
    (["p1", "d1", "p0", "d0"], "d[0-1],p[0-1]"),
    (["n01", "n02", "n03", "n07"], "n[01-03,07]"),
    (["n08", "n09", "n10"], "n[08-10]"),
    (["d5"], "d5"),
    (["head", "d0", "d1"], "d[0-1],head"),
    (["a", "b"], "a,b"),
    (["rack1-n1", "rack1-n2", "rack2-n1"], "rack1-n[1-2],rack2-n1"),
    (["d0", "d0", "d1"], "d[0-1]"),
    (["d1", "d3", "d4", "d5", "d9"], "d[1,3-5,9]"),
    ([], ""),
])
def test_fold(names, folded):
    assert fold(names) == folded


def test_fold_round_trips_through_expand():
    names = ["n01", "n02", "n03", "n07", "n10"]
    assert sorted(expand(fold(names))) == names
    assert expand("p0") is None and expand("d*") is None


def test_select_all_when_no_selector(inv):
    assert select_nodes(inv, None) == list(inv.nodes)
    assert select_nodes(inv, "") == list(inv.nodes)


@pytest.mark.parametrize("selector, expected", [
    ("p0", ["p0"]),
    ("d1,p0", ["p0", "d1"]),              # inventory order, not selector order
    ("d*", ["d0", "d1", "d2"]),
    ("role:decode", ["d0", "d1", "d2"]),
    ("role:prefill,head", ["p0", "p1", "head"]),
    ("group:gp1", ["p1"]),
    ("d[0-1]", ["d0", "d1"]),
    ("d[0,2],p[0-1]", ["p0", "p1", "d0", "d2"]),
    ("d0,d0, d*", ["d0", "d1", "d2"]),
])
def test_select(inv, selector, expected):
    assert select_nodes(inv, selector) == expected


@pytest.mark.parametrize("selector, words", [
    ("x9", ["'x9'", "d[0-2],head,p[0-1]"]),
    ("role:serve", ["serve", "decode, prefill"]),
    ("group:nope", ["nope", "gp0, gp1, gd"]),
    ("d[0-5]", ["d[3-5]", "nodes:"]),
    ("p0,q*", ["'q*'"]),
])
def test_unknown_terms_name_it_and_the_valid_names(inv, selector, words):
    with pytest.raises(SelectorError) as e:
        select_nodes(inv, selector)
    for w in words:
        assert w in str(e.value)
