"""Property tests: any mutation of the example inventories is planned (exit 0) or refused
(exit 2) with every problem naming its file, line and field; never a traceback.

Bounded for CI (a fixed number of examples, no deadline per example; the whole file < 60 s).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "inventories").glob("*.yaml"))
DATA = {p.name: yaml.safe_load(p.read_text()) for p in EXAMPLES}
TOP_LEVEL_OK = ("YAML syntax", "the inventory must be a YAML mapping", "nesting deeper",
                "alias", "anchor", "is not UTF-8", "a mapping key must be a plain scalar")

SHELL = st.text(alphabet=st.sampled_from(list("$`'\"\\;&|<>(){}[]*?~#!\n =-_aZ09./:")), max_size=20)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | SHELL
    | st.sampled_from(["", "0", "1.5", "p0", "d0", "a3", "serve", "eth0", "10.0.0.1", "::1",
                       "port=1", "x" * 300]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SHELL, inner, max_size=3),
    max_leaves=6)


def paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from paths(v, prefix + (i,))


def mutate(data, path, op, value, key):
    data = json.loads(json.dumps(data))
    if not path:
        return data
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "set":
        parent[last] = value
    elif op == "delete":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif op == "add" and isinstance(parent[last], dict):
        parent[last][key] = value
    elif op == "rename" and isinstance(parent, dict):
        parent[key] = parent.pop(last)
    return data


def check(tmp: Path, text: str) -> None:
    path = tmp / "inv.yaml"
    path.write_text(text)
    r = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert r.exception is None or isinstance(r.exception, SystemExit), (
        f"{r.exception!r}\n{text[:2000]}")
    assert r.exit_code in (0, 2), r.output
    doc = json.loads(r.stdout)  # exactly one JSON object either way
    if r.exit_code == 2:
        assert doc["ok"] is False and doc["problems"]
        for p in doc["problems"]:
            assert p["file"] == str(path)
            assert p["field"]
            if p["field"] == "(top level)":
                assert any(w in p["message"] for w in TOP_LEVEL_OK), p
            else:
                assert p["line"], p
        assert len(r.stderr) < 20_000


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_examples_plan_or_exit_2(tmp_path_factory, data):
    name = data.draw(st.sampled_from(sorted(DATA)))
    doc = DATA[name]
    path = data.draw(st.sampled_from(list(paths(doc))[1:]))
    op = data.draw(st.sampled_from(["set", "set", "set", "delete", "add", "rename"]))
    value = data.draw(VALUES)
    key = data.draw(SHELL | st.sampled_from(["dp", "tp", "host", "<<", "port", "nodes"]))
    mutated = mutate(doc, path, op, value, key)
    try:
        text = yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return
    check(tmp_path_factory.mktemp("m"), text)


SNIPPETS = ["&a", "*a", "*nope", "<<: *a", "!!int x", "!!python/object:os.system x", "!!binary x",
            "[" * 40, "{" * 40, ": :", "- -", "\t", "\x00", "\ufeff", "? ", "%YAML 1.1\n---",
            "--- \n---", "!!set {a}", "&x [*x]", "99999999999999999999999999", ".nan", ".inf",
            "~", "'", '"', "|", ">", "#"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mangled_yaml_text_plans_or_exits_2(tmp_path_factory, data):
    path = data.draw(st.sampled_from(EXAMPLES))
    text = path.read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        snippet = data.draw(st.sampled_from(SNIPPETS) | SHELL)
        text = text[:at] + snippet + text[at:]
    check(tmp_path_factory.mktemp("t"), text)


SELECTOR = st.text(alphabet=st.sampled_from(list("dnp0123456789[]-,*?:!role group decode")),
                   max_size=30)


@settings(max_examples=300, deadline=None)
@given(selector=SELECTOR)
def test_any_selector_selects_or_says_why(selector):
    from orchestrator.inventory import load_inventory
    from orchestrator.nodeset import SelectorError, select_nodes

    inv = load_inventory(EXAMPLES[0])
    try:
        chosen = select_nodes(inv, selector)
    except SelectorError as e:
        assert str(e)
    else:
        assert set(chosen) <= set(inv.nodes)
