"""The launch-script renderer refuses what it cannot quote: a programming error, raised, never
a script that runs something (validation stops these earlier; this is the backstop)."""
from __future__ import annotations

import pytest

from orchestrator.inventory import parse_inventory
from orchestrator.plan import make_plan
from orchestrator.scripts import Unquotable, rank_script, shell_value

INV = """\
name: t
soc: a2
nodes: {n0: {host: 10.0.0.1, nic: eth0}}
container: {image: img}
model: {path: /m}
env: {A: "x $HOME ${PATH} $(no) `no` $1"}
groups: [{name: g, role: serve, nodes: [n0], tp: 8}]
"""


def plan():
    return make_plan(parse_inventory(INV))


def test_only_name_references_stay_live():
    assert shell_value("x $HOME ${PATH} $(no) `no` $1 ${A:-b}") == (
        "'x '\"${HOME}\"' '\"${PATH}\"' $(no) `no` $1 ${A:-b}'")


@pytest.mark.parametrize("key", ["A;touch x", "1A", "A B", "A\nB", ""])
def test_env_key_that_is_not_a_name_raises(key):
    p = plan()
    p.ranks[0].env[key] = "v"
    with pytest.raises(Unquotable):
        rank_script(p, p.ranks[0])


def test_nul_raises():
    p = plan()
    p.ranks[0].env["A"] = "a\0b"
    with pytest.raises(Unquotable):
        rank_script(p, p.ranks[0])
    p = plan()
    p.ranks[0].argv.append("x\0y")
    with pytest.raises(Unquotable):
        rank_script(p, p.ranks[0])


@pytest.mark.parametrize("node", ["n0\ntouch x", "n0\rx", "n0\x1bx"])
def test_control_characters_in_comment_lines_raise(node):
    p = plan()
    p.ranks[0].node = node
    with pytest.raises(Unquotable):
        rank_script(p, p.ranks[0])
