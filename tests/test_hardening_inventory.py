"""Issue 8, inventory side: every hostile or mistaken input is exit 2 naming file:line and field,
never a traceback, never unbounded work."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

BASE = textwrap.dedent("""\
    name: t
    soc: a2
    nodes:
      n0: {host: 10.0.0.1, nic: eth0}
      n1: {host: 10.0.0.2, nic: eth0}
    container: {image: img}
    model: {path: /m}
    groups:
      - {name: g, role: serve, nodes: [n0, n1], dp: 2, tp: 8}
    """)


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def plan(tmp_path: Path, text: str | bytes, *args: str):
    path = tmp_path / "inv.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    r = CliRunner().invoke(main, ["plan", str(path), *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r, str(path)


def refused(tmp_path, text, field: str, *words: str, line: int | None = None) -> str:
    r, path = plan(tmp_path, text)
    assert r.exit_code == 2, r.output
    err = r.stderr
    assert f"{path}:" in err and field in err, err
    for w in words:
        assert w in err, err
    if line is not None:
        assert f"{path}:{line}: {field}" in err, err
    assert len(err) < 4000  # never the whole value
    return err


# ---------------------------------------------------------------- names where they enter

@pytest.mark.parametrize("name", ['"n0\\nrm -rf x"', '"../../etc/passwd"', '"a/b"', '".hidden"',
                                  '"a b"', '"$(touch x)"', "x" * 70])
def test_node_names_are_checked(tmp_path, name):
    text = edit("  n1: {host: 10.0.0.2", f"  {name}: {{host: 10.0.0.2", BASE)
    text = edit("nodes: [n0, n1]", f"nodes: [n0, {name}]", text)
    refused(tmp_path, text, "nodes", "not allowed", line=5)


@pytest.mark.parametrize("key", ['"A;touch x"', '"1ABC"', '"A-B"', '"A B"', '"A=B"', '"$(x)"'])
def test_env_names_are_checked_everywhere(tmp_path, key):
    for where, text in (("env", BASE + f"env: {{{key}: v}}\n"),
                        ("container.env", edit("{image: img}", f"{{image: img, env: {{{key}: v}}}}")),
                        ("groups[0].env", edit("tp: 8}", f"tp: 8, env: {{{key}: v}}}}")),
                        ("roles.serve.env", BASE + f"roles: {{serve: {{env: {{{key}: v}}}}}}\n")):
        refused(tmp_path, text, where, "environment variable name")


@pytest.mark.parametrize("key", ["port=9999", "max-model-len 10", "a;b", "--port=1"])
def test_args_keys_are_flag_names_only(tmp_path, key):
    refused(tmp_path, BASE + f'args: {{"{key}": 1}}\n', "args", "flag name only")


def test_planner_flag_through_flag_value_key_is_refused(tmp_path):
    refused(tmp_path, edit("tp: 8}", 'tp: 8, args: {"port=9999": true}}'), "groups[0].args",
            "flag name only")
    refused(tmp_path, edit("tp: 8}", "tp: 8, args: {port: 9999}}"), "groups[0].args.port",
            "set by the planner")


def test_container_name_and_group_name_are_checked(tmp_path):
    refused(tmp_path, edit("{image: img}", '{image: img, name: "x; rm -rf /"}'), "container.name")
    refused(tmp_path, edit("name: g,", 'name: "g\\nx",'), "groups[0].name")


@pytest.mark.parametrize("ip", ["999.1.1.1", "10.0.0", "'10.0.0.1; touch x'", "'::g'"])
def test_invalid_ip_is_refused(tmp_path, ip):
    refused(tmp_path, edit("nic: eth0}", f"nic: eth0, ip: {ip}}}"), "nodes.n0.ip",
            "not an IP address", line=4)


@pytest.mark.parametrize("host", ["'-oProxyCommand=x'", "'a b'", "'h;x'"])
def test_invalid_host_is_refused(tmp_path, host):
    refused(tmp_path, edit("host: 10.0.0.1", f"host: {host}"), "nodes.n0.host")


# ---------------------------------------------------------------- coercions the spec does not allow

@pytest.mark.parametrize("value,got", [("true", "true (a boolean)"), ("1.5", "1.5 (a number)"),
                                       ("8.0", "8.0 (a number)"), ("[1]", "[1] (a list)"),
                                       ('"8"', "'8' (a string)")])
def test_no_coercion_into_integers(tmp_path, value, got):
    refused(tmp_path, edit("dp: 2,", f"dp: {value},"), "groups[0].dp", got, line=9)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "[1]", "true", '"2"', ".inf", "2000"])
def test_size_flags_must_be_positive_integers(tmp_path, value):
    for flag in ("pipeline-parallel-size", "prefill-context-parallel-size"):
        refused(tmp_path, edit("tp: 8}", f"tp: 8, args: {{{flag}: {value}}}}}"),
                f"groups[0].args.{flag}", "finite" if value == ".inf" else "integer from 1 to")


def test_non_finite_arg_value_is_refused_with_its_field(tmp_path):
    refused(tmp_path, BASE + "args: {max-model-len: .inf}\n", "args.max-model-len", "finite")
    refused(tmp_path, BASE + "args: {additional-config: {x: .nan}}\n", "args.additional-config")


def test_list_for_a_scalar_is_refused(tmp_path):
    refused(tmp_path, edit("{path: /m}", "{path: [/m]}"), "model.path", "a list")


def test_env_values_are_written_as_yaml_spelled_them(tmp_path):
    text = BASE + "env: {A: True, B: 0x10, C: 1.50, D: yes, E: 7, F: text}\n"
    r, _ = plan(tmp_path, text, "--json")
    assert r.exit_code == 0, r.output
    env = json.loads(r.stdout)["ranks"][0]["env"]
    assert {k: env[k] for k in "ABCDEF"} == {"A": "True", "B": "0x10", "C": "1.50", "D": "yes",
                                             "E": "7", "F": "text"}
    r, _ = plan(tmp_path, text, "--script", "n0")
    assert "export A=True\n" in r.stdout and "'True'" not in r.stdout.replace("A=True", "")


# ---------------------------------------------------------------- timeouts

@pytest.mark.parametrize("value,word", [(".inf", "finite"), (".nan", "finite"), ("0", "greater"),
                                        ("-1", "greater"), ("100000", "less"), ("true", "boolean")])
def test_connect_timeout_is_bounded(tmp_path, value, word):
    refused(tmp_path, edit("soc: a2", f"soc: a2\nssh: {{connect_timeout: {value}}}"),
            "ssh.connect_timeout", word, line=3)


def test_readiness_timeout_is_bounded(tmp_path):
    refused(tmp_path, BASE + "readiness: {timeout: .inf}\n", "readiness.timeout", "finite")


@pytest.mark.parametrize("jump", ["'a@b:c:d'", "'@'", "'a b'", "'h:99999'", "'h,,x'"])
def test_malformed_jump_is_an_inventory_error(tmp_path, jump):
    refused(tmp_path, edit("soc: a2", f"soc: a2\nssh: {{jump: {jump}}}"), "ssh.jump",
            "cannot parse jump host")


# ---------------------------------------------------------------- the bounded loader

BOMB = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """)


def deploy_subprocess(*args: str, limit_mb: int = 400) -> subprocess.CompletedProcess:
    """The real CLI, with an address-space cap: an unbounded expansion dies instead of passing."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, timeout=60, preexec_fn=cap, env=env)


def test_alias_bomb_is_refused_naming_the_anchor(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    p = deploy_subprocess("plan", str(path))
    assert p.returncode == 2, p.stderr[-2000:]
    assert "anchor &" in p.stderr and "expand to more than" in p.stderr
    assert len(p.stderr) < 2000 and "Traceback" not in p.stderr


def test_many_alias_uses_are_refused(tmp_path):
    text = "a: &x 1\nb: [" + ",".join(["*x"] * 10_001) + "]\n"
    err = refused(tmp_path, text, "(top level)", "alias uses", "&x")
    assert "inv.yaml:2:" in err


def test_recursive_alias_is_refused(tmp_path):
    refused(tmp_path, "a: &x [*x]\n", "(top level)", "&x", "recursive")
    refused(tmp_path, BASE + "roles: &r {serve: {<<: *r}}\n", "(top level)", "&r")


def test_deep_nesting_is_refused_before_composing(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("a: " + "[" * 200_000 + "]" * 200_000 + "\n")  # libyaml's composer segfaults
    r = deploy_subprocess("plan", str(p))
    assert r.returncode == 2 and "nesting deeper than" in r.stderr, r.stderr[-500:]


@pytest.mark.parametrize("value,word", [("!!int x", "not a valid !!int"),
                                        ("1" * 5000, "out of range"),
                                        ("9223372036854775808", "out of range"),
                                        ("!!binary aGk=", "!!binary is not supported"),
                                        ("!!python/object:os.system x", "not supported"),
                                        ("!!float nope", "not a valid !!float")])
def test_unreadable_scalars_name_their_field(tmp_path, value, word):
    refused(tmp_path, edit("dp: 2,", f"dp: {value},"), "groups[0].dp", word, line=9)


def test_non_utf8_byte_names_the_line(tmp_path):
    refused(tmp_path, BASE.encode().replace(b"image: img", b"image: i\xffg"), "(top level)",
            "byte 0xff", "not UTF-8", line=6)


def test_nul_in_a_string_is_refused(tmp_path):
    refused(tmp_path, edit("{path: /m}", '{path: "/m\\0x"}'), "model.path", "NUL")


def test_huge_file_is_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse: costs no disk
    r = CliRunner().invoke(main, ["plan", str(big)])
    assert r.exit_code == 2 and "the limit is" in r.stderr


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "dir"])
def test_only_regular_files_are_read(tmp_path, special):
    if special == "fifo":
        path = tmp_path / "fifo.yaml"
        os.mkfifo(path)
    elif special == "dir":
        path = tmp_path
    else:
        path = Path(special)
    p = deploy_subprocess("plan", str(path))  # a FIFO with no writer or /dev/zero would hang
    assert p.returncode == 2, p.stderr
    assert any(w in p.stderr for w in ("not a regular file", "cannot read", "is a directory"))


def test_merge_keys_follow_yaml(tmp_path):
    text = edit("  n0: {host: 10.0.0.1, nic: eth0}\n  n1: {host: 10.0.0.2, nic: eth0}",
                "  n0: &node {host: 10.0.0.1, nic: eth0, ip: 10.9.0.1}\n"
                "  n1: {<<: *node, host: 10.0.0.2, ip: 10.9.0.2}")
    r, _ = plan(tmp_path, text, "--json")
    assert r.exit_code == 0, r.output
    ranks = json.loads(r.stdout)["ranks"]
    assert [(x["host"], x["ip"]) for x in ranks] == [("10.0.0.1", "10.9.0.1"),
                                                    ("10.0.0.2", "10.9.0.2")]
    # a list of merges: earlier wins over later, explicit keys over both
    text2 = edit("model: {path: /m}", "model: {path: /m}\n"
                 "roles:\n  serve: &s1 {env: {A: one}}\n  prefill: &s2 {env: {A: two}, args: {x: 1}}\n"
                 "  decode: {<<: [*s1, *s2]}", text)
    r, _ = plan(tmp_path, text2, "--json")
    assert r.exit_code == 0, r.output
    # a merged key repeated explicitly is an override, not a duplicate
    assert "duplicate" not in r.stderr


def test_real_duplicate_keys_still_reported(tmp_path):
    refused(tmp_path, edit("{path: /m}", "{path: /m, path: /n}"), "model.path", "duplicate key")


def test_error_messages_print_only_an_excerpt(tmp_path):
    huge = "x" * 100_000
    err = refused(tmp_path, edit("{image: img}", f"{{image: img, name: '{huge}'}}"),
                  "container.name")
    assert len(err) < 1000


def test_json_prints_one_object_on_inventory_error(tmp_path):
    r, path = plan(tmp_path, edit("dp: 2,", "dp: true,"), "--json")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2
    [p] = doc["problems"]
    assert (p["file"], p["line"], p["field"]) == (path, 9, "groups[0].dp")
    assert "warnings" in doc


@pytest.mark.parametrize("old,new,field", [
    ("{image: img}", "{image: --privileged}", "container.image"),
    ("{image: img}", "{image: 'img; rm'}", "container.image"),
    ("{image: img}", "{image: img, shm_size: '1g --privileged'}", "container.shm_size"),
    ("{image: img}", "{image: img, mounts: ['-v/:/host']}", "container.mounts[0]"),
    ("{path: /m}", "{path: --trust-remote-code}", "model.path"),
    ("{path: /m}", "{path: /m, served_name: \"a\\nb\"}", "model.served_name"),
    ("name: t\n", "name: " + "t" * 64 + "\n", "name"),
])
def test_argv_values_cannot_become_options(tmp_path, old, new, field):
    refused(tmp_path, edit(old, new), field)


def test_dot_dot_in_a_node_name_is_refused(tmp_path):
    text = edit("  n1: {host", "  a..b: {host")
    refused(tmp_path, edit("nodes: [n0, n1]", "nodes: [n0, a..b]", text), "nodes", "'..'")


@pytest.mark.parametrize("args", [["--script", "nope"], ["--bogus"]])
def test_json_prints_one_object_on_usage_error(tmp_path, args):
    r, _ = plan(tmp_path, BASE, "--json", *args)
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["error"]
