"""`deploy exec` end to end against real SSH servers (tests/conftest_ssh.py)."""
import json

import asyncssh
from click.testing import CliRunner

from orchestrator.commands.exec import command as exec_command


def deploy_exec(*args):
    return CliRunner().invoke(exec_command, [str(a) for a in args])


def test_identical_outputs_fold_under_one_header(farm, tmp_path):
    for n in ("d0", "d1", "p0", "p1"):
        farm.add(n)
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = deploy_exec(inv, "--", "echo", "link status: UP")
    assert r.exit_code == 0, r.output
    assert r.stdout == ("---------------- d[0-1],p[0-1] (4)\nlink status: UP\n"
                        "4 nodes: 4 ok, 0 failed, 0 unreachable\n")
    assert all(n.connections == 1 for n in farm.nodes.values())


def test_failed_group_shows_rc_and_exit_1(farm, tmp_path):
    for n in ("d0", "d1", "d2"):
        farm.add(n)
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = deploy_exec(inv, "--", "sh", "-c",
                    'echo same; [ "$FAKE_NODE" = d2 ] && { echo boom >&2; exit 3; }; true')
    assert r.exit_code == 1
    assert r.stdout == ("---------------- d[0-1] (2)\nsame\n"
                        "---------------- d2 (1) rc=3\nsame\nboom\n"
                        "3 nodes: 2 ok, 1 failed, 0 unreachable\n")


def test_mixed_results_exit_4_and_name_the_unreachable_node(farm, tmp_path):
    farm.add("d0"), farm.add("d1"), farm.add("d9", listen=False)
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = deploy_exec(inv, "--", "sh", "-c", "echo up")
    assert r.exit_code == 4
    assert "---------------- d[0-1] (2)\nup\n" in r.stdout
    assert "---------------- d9 (1) unreachable: refused\nrefused: " in r.stdout
    assert r.stdout.endswith("3 nodes: 2 ok, 0 failed, 1 unreachable\n")


def test_unreachable_wins_over_failed_and_changed_key_prints_the_fix(farm, tmp_path):
    farm.add("d0"), farm.add("d1")
    bad = farm.add("d2")
    farm.trust("d2", key=asyncssh.generate_private_key("ssh-ed25519"))
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = deploy_exec(inv, "--nodes", "d0,d2", "--", "false")
    assert r.exit_code == 4
    assert "---------------- d0 (1) rc=1" in r.stdout
    assert "d2 (1) unreachable: host key changed" in r.stdout
    assert f"ssh-keygen -R '[{bad.addr}]:{bad.port}' -f {farm.known_hosts}" in r.stdout


def test_json_is_one_object_with_every_node(farm, tmp_path):
    farm.add("d0"), farm.add("d1", listen=False)
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = deploy_exec(inv, "--json", "--", "sh", "-c", "echo hi; echo warn >&2")
    assert r.exit_code == 4
    doc = json.loads(r.stdout)
    assert doc["summary"] == {"nodes": 2, "ok": 1, "failed": 0, "unreachable": 1,
                              "interrupted": 0}
    assert doc["ok"] is False and doc["exit_code"] == 4
    assert doc["nodes"]["d0"] == {"status": "ok", "cause": "ok", "rc": 0, "stdout": "hi\n",
                                  "stderr": "warn\n", "reason": "", "omitted_bytes": 0}
    assert doc["nodes"]["d1"]["status"] == "unreachable" and doc["nodes"]["d1"]["rc"] is None


def test_run_folder_holds_logs_and_result(farm, tmp_path):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = deploy_exec(inv, "--", "echo", "logged")
    assert r.exit_code == 0
    runs = list((tmp_path / "state" / "farm" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("Z-exec")
    assert "out| 7 bytes\nlogged\n" in (runs[0] / "d0.log").read_text()
    assert json.loads((runs[0] / "result.json").read_text())["nodes"]["d0"]["stdout"] == "logged\n"


def test_timeout_option(farm, tmp_path):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = deploy_exec(inv, "--timeout", "0.3", "--", "sleep", "20")
    assert r.exit_code == 1
    assert "---------------- d0 (1) failed: timed out after 0.3s" in r.stdout


def test_usage_and_inventory_errors_exit_2(farm, tmp_path):
    farm.add("d0")
    inv = farm.write_inventory(tmp_path / "inv.yaml")
    r = deploy_exec(inv, "--nodes", "x*", "--", "true")
    assert r.exit_code == 2 and "x*" in r.output and "d0" in r.output
    assert deploy_exec(inv).exit_code == 2  # no command
    broken = tmp_path / "broken.yaml"
    broken.write_text(inv.read_text().replace("soc: a2", "soc: a9"))
    r = deploy_exec(broken, "--", "true")
    assert r.exit_code == 2 and "soc" in r.output
    assert farm.nodes["d0"].connections == 0
