"""Node-side scripts (orchestrator/scripts.py), run for real with sh against fake `vllm` and
`python` programs: what the server process receives (argv, environment) is what the plan says,
for hostile values too; the guard's sitecustomize restores only what is missing."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.inventory import parse_inventory
from orchestrator.plan import make_plan
from orchestrator.scripts import (
    SITECUSTOMIZE_MARKER,
    SOCKET_ENV_VAR,
    ScriptError,
    node_script,
    proxy_script,
    rank_script,
    setup_argvs,
    sitecustomize_for,
    sitecustomize_text,
)

FAKE = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_OUT"], "w") as f:
    json.dump({{"argv": sys.argv, "env": dict(os.environ)}}, f)
"""

HOSTILE = "a b 'c' \"d\" $(touch /tmp/pwned) `id` ; | & * ? ~ \\ \n newline $HOME"


def inventory(tmp_path: Path, **extra) -> dict:
    f1, f2 = tmp_path / "toolkit.sh", tmp_path / "atb.sh"
    # the image's env files: a base LD_LIBRARY_PATH, a proxy variable, and which shell read them
    f1.write_text('export LD_LIBRARY_PATH=/toolkit/lib\nexport http_proxy=http://corp:3128\n'
                  'echo "${BASH_VERSION:+bash}" > "$FAKE_SHELL"\n')
    f2.write_text('export ATB_HOME_PATH=/atb\nexport LD_LIBRARY_PATH=/atb/lib:$LD_LIBRARY_PATH\n')
    doc = {
        "name": "t-pd", "soc": "a2",
        "nodes": {"p0": {"host": "10.0.0.1", "nic": "eth0"}, "d0": {"host": "10.0.0.2", "nic": "eth1"},
                  "d1": {"host": "10.0.0.3", "nic": "eth2", "ip": "192.168.1.3"}},
        "container": {"image": "img:1", "env_files": [str(f1), str(tmp_path / "absent.sh"), str(f2)],
                      "setup": [["cp", "/data/a b.py", "/usr/lib/"]]},
        "model": {"path": "/weights/m"},
        "env": {"http_proxy": None, "LD_LIBRARY_PATH": "/mooncake:$LD_LIBRARY_PATH", "HOSTILE": HOSTILE},
        "args": {"additional-config": {"x": "it's \"quoted\""}, "weird": HOSTILE},
        "kv_transfer": {"connector": "MooncakeConnectorV1"},
        "groups": [
            {"name": "p", "role": "prefill", "nodes": ["p0"], "dp": 2, "tp": 4, "kv_port": 40000},
            {"name": "d", "role": "decode", "nodes": ["d0", "d1"], "dp": 2, "tp": 4, "kv_port": 40100},
        ],
        "proxy": {"node": "p0", "args": {"log-level": "debug"}},
    }
    doc.update(extra)
    return doc


def plan_of(doc: dict):
    return make_plan(parse_inventory(yaml.safe_dump(doc, sort_keys=False), "t.yaml"))


@pytest.fixture
def fakebin(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for prog in ("vllm", "python"):
        (bindir / prog).write_text(FAKE)
        (bindir / prog).chmod(0o755)
    return bindir


def run_script(text: str, tmp_path: Path, fakebin: Path, env: dict | None = None) -> dict:
    script = tmp_path / "rank.sh"
    script.write_text(text)
    out = tmp_path / "out.json"
    base = {"PATH": f"{fakebin}:/usr/bin:/bin", "FAKE_OUT": str(out), "FAKE_SHELL": str(tmp_path / "shell"),
            "HOME": str(tmp_path), **(env or {})}
    proc = subprocess.run(["sh", str(script)], env=base, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert not Path("/tmp/pwned").exists()
    return json.loads(out.read_text())


def test_rank_receives_exactly_the_planned_argv_and_env(tmp_path, fakebin):
    plan = plan_of(inventory(tmp_path))
    for rank in plan.ranks:
        got = run_script(rank_script(plan, rank), tmp_path, fakebin)
        assert got["argv"][1:] == rank.argv[1:]          # argv[0] is the fake's own path
        env = got["env"]
        for key, value in rank.env.items():
            if key not in ("LD_LIBRARY_PATH", "HOSTILE"):
                assert env[key] == value, key
        # nothing is interpreted but a $NAME reference, expanded on the node (the spec's rule)
        assert env["HOSTILE"] == HOSTILE.replace("$HOME", str(tmp_path))
        # env files first (in order, the absent one skipped), the inventory's $REF builds on them
        assert env["LD_LIBRARY_PATH"] == "/mooncake:/atb/lib:/toolkit/lib"
        assert env["ATB_HOME_PATH"] == "/atb"
        # null env: unset last, so the env file's proxy variable is gone too
        assert "http_proxy" not in env
        # the guard's values travel as JSON (d spans two nodes, so the guard is on by default)
        assert json.loads(env[SOCKET_ENV_VAR]) == {k: rank.env[k] for k in (
            "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME", "HCCL_IF_IP")}


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_env_files_are_read_by_bash_when_the_image_has_it(tmp_path, fakebin):
    plan = plan_of(inventory(tmp_path))
    run_script(rank_script(plan, plan.ranks[0]), tmp_path, fakebin)
    assert (tmp_path / "shell").read_text().strip() == "bash"


def test_proxy_gets_its_argv_env_files_and_top_level_unsets(tmp_path, fakebin):
    plan = plan_of(inventory(tmp_path))
    got = run_script(proxy_script(plan), tmp_path, fakebin)
    assert got["argv"][1:] == plan.proxy.argv[1:]
    assert got["env"]["LD_LIBRARY_PATH"] == "/atb/lib:/toolkit/lib"
    assert "http_proxy" not in got["env"] and "HOSTILE" not in got["env"]


def test_no_guard_no_socket_env(tmp_path, fakebin):
    doc = inventory(tmp_path)
    doc["container"]["socket_env_guard"] = False
    plan = plan_of(doc)
    got = run_script(rank_script(plan, plan.ranks[0]), tmp_path, fakebin)
    assert SOCKET_ENV_VAR not in got["env"]
    assert sitecustomize_for(plan, "p0") is None
    assert "sitecustomize" not in node_script(plan, "p0")


def test_script_shape(tmp_path):
    plan = plan_of(inventory(tmp_path))
    text = rank_script(plan, plan.ranks[0])
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -e" not in text
    assert "\nexec vllm serve /weights/m \\\n  --host 0.0.0.0 \\\n  --port 7100 \\\n" in text
    sources = [i for i, ln in enumerate(lines) if ln.startswith("[ -f ")]
    exports = [i for i, ln in enumerate(lines) if ln.startswith("export ")]
    unsets = [i for i, ln in enumerate(lines) if ln.startswith("unset ")]
    assert max(sources) < min(exports) and max(exports) < min(unsets)


def test_node_script_has_container_setup_guard_ranks_and_proxy(tmp_path):
    plan = plan_of(inventory(tmp_path))
    text = node_script(plan, "p0")
    lines = text.splitlines()
    c = plan.container_on("p0")
    assert lines[0].startswith("# ==== container vllm-t-pd on p0")
    assert shlex.split(lines[1]) == c.argv
    assert shlex.join(["docker", "exec", "vllm-t-pd", "cp", "/data/a b.py", "/usr/lib/"]) in lines
    assert text.count("# ==== rank-p-p0-") == 2 and "# ==== proxy.sh" in text
    assert "proxy.sh" not in node_script(plan, "d0")
    assert node_script(plan, "nowhere") == ""
    assert setup_argvs(c) == [["docker", "exec", "vllm-t-pd", "cp", "/data/a b.py", "/usr/lib/"]]


@pytest.mark.parametrize("edit, what", [
    (lambda r: r.env.__setitem__("BAD-NAME", "1"), "not a shell identifier"),
    (lambda r: r.env.__setitem__("X", "a\0b"), "NUL"),
    (lambda r: r.argv.append("a\0b"), "NUL"),
])
def test_the_renderer_refuses_what_it_cannot_quote(tmp_path, edit, what):
    """The backstop behind the inventory's validation (which refuses these first): a rank that
    somehow carries them is never rendered."""
    plan = plan_of(inventory(tmp_path))
    edit(plan.ranks[0])
    with pytest.raises(ScriptError, match=what):
        rank_script(plan, plan.ranks[0])


# ---- sitecustomize

def run_python(tmp_path: Path, text: str, env: dict) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(text)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    proc = subprocess.run(
        [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        env={**keep, "PYTHONPATH": str(site), **env}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_sitecustomize_restores_missing_values_from_the_rank(tmp_path):
    text = sitecustomize_text({"GLOO_SOCKET_IFNAME": "baked0", "HCCL_IF_IP": "10.9.9.9"})
    assert text.splitlines()[0] == SITECUSTOMIZE_MARKER
    rank = {"GLOO_SOCKET_IFNAME": "bond1", "TP_SOCKET_IFNAME": "bond1", "HCCL_IF_IP": "192.168.0.72"}
    env = run_python(tmp_path, text, {SOCKET_ENV_VAR: json.dumps(rank), "TP_SOCKET_IFNAME": "set", "HCCL_IF_IP": ""})
    assert env["GLOO_SOCKET_IFNAME"] == "bond1"    # missing: restored from the rank's JSON
    assert env["TP_SOCKET_IFNAME"] == "set"        # present: never overwritten
    assert env["HCCL_IF_IP"] == ""                 # present even if empty: never overwritten


def test_sitecustomize_falls_back_to_the_nodes_values_when_the_env_var_is_gone(tmp_path):
    env = run_python(tmp_path, sitecustomize_text({"GLOO_SOCKET_IFNAME": "bond1", "HCCL_IF_IP": "10.0.0.1"}), {})
    assert env["GLOO_SOCKET_IFNAME"] == "bond1" and env["HCCL_IF_IP"] == "10.0.0.1"


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '{"A": 1}'])
def test_sitecustomize_never_breaks_python(tmp_path, bad):
    env = run_python(tmp_path, sitecustomize_text({"GLOO_SOCKET_IFNAME": "bond1"}), {SOCKET_ENV_VAR: bad})
    assert "A" not in env


def test_sitecustomize_for_a_node_bakes_that_nodes_values(tmp_path):
    plan = plan_of(inventory(tmp_path))
    text = sitecustomize_for(plan, "d1")
    env = run_python(tmp_path, text, {})
    assert env["GLOO_SOCKET_IFNAME"] == "eth2" and env["HCCL_IF_IP"] == "192.168.1.3"
    with pytest.raises(ScriptError):
        sitecustomize_text({"BAD NAME": "x"})


# ---- deploy plan --script

def test_plan_script_cli(tmp_path):
    from click.testing import CliRunner

    from orchestrator.cli import main

    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(inventory(tmp_path), sort_keys=False))
    ok = CliRunner().invoke(main, ["plan", str(path), "--script", "d1"])
    assert ok.exit_code == 0, ok.output
    plan = plan_of(inventory(tmp_path))
    assert ok.stdout == node_script(plan, "d1")
    assert shlex.split(ok.stdout.splitlines()[1]) == plan.container_on("d1").argv
    bad = CliRunner().invoke(main, ["plan", str(path), "--script", "zz"])
    assert bad.exit_code == 2 and "'zz' is not a node" in bad.output


def test_sitecustomize_install_never_replaces_the_images_own(tmp_path):
    from orchestrator.scripts import sitecustomize_install_argv

    plan = plan_of(inventory(tmp_path))
    argv = sitecustomize_install_argv(plan, "d0")
    assert argv[:5] == ["docker", "exec", "vllm-t-pd", "python3", "-c"]
    assert argv[-2:] == ["/var/tmp/deploy/t-pd/sitecustomize.py", SITECUSTOMIZE_MARKER]
    # run the installer with a throwaway venv's python (its site-packages stands for the image's)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python3")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    target = Path(purelib) / "sitecustomize.py"
    src = tmp_path / "staged.py"

    def install(text: str) -> str:
        src.write_text(text)
        out = subprocess.run([py, "-c", argv[5], str(src), argv[-1]], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()[0]

    ours = sitecustomize_for(plan, "d0")
    assert install(ours) == "installed" and target.read_text() == ours
    assert install(ours) == "unchanged"
    ours_d1 = sitecustomize_for(plan, "d1")
    assert install(ours_d1) == "updated" and target.read_text() == ours_d1
    target.write_text("# the image's own\nimport os\n")
    assert install(ours) == "kept" and target.read_text() == "# the image's own\nimport os\n"
    no_guard = inventory(tmp_path)
    no_guard["container"]["socket_env_guard"] = False
    assert sitecustomize_install_argv(plan_of(no_guard), "d0") is None


def test_only_shell_identifiers_are_live_references(tmp_path, fakebin):
    from orchestrator.scripts import env_name, shell_value

    assert shell_value("a$1b${2}c$éd") == "'a$1b${2}c$éd'"
    assert shell_value("x${HOME}y$HOME") == "x\"${HOME}\"y\"${HOME}\""
    for bad in ("FOO\n", "A-B", "1A", ""):
        with pytest.raises(ScriptError):
            env_name(bad)
