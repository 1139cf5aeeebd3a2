"""CLI start-up: every command is listed and runs, and each command imports only what it uses.

Asserted on modules (what a process imported), never on time: timings are bench/startup.py's.
"""
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

import orchestrator.commands
from orchestrator import cli, inventory_cache
from orchestrator.errors import InventoryError
from orchestrator.inventory import load_inventory

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "inventories" / "dsv31-a3-2p1d.yaml"

# Runs the CLI like the `deploy` script, then writes the names of every imported module.
PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "deploy"
from orchestrator.cli import main
main()
"""


def imported(tmp_path, *args, env=None):
    """(exit code, set of module names) of one `deploy ARGS` process."""
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    e = {**os.environ, "PYTHONPATH": str(REPO), "DEPLOY_STATE_DIR": str(tmp_path / "state"),
         **(env or {})}
    r = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], capture_output=True,
                       text=True, timeout=120, env=e)
    return r, set(json.loads(out.read_text()))


def below(modules, *packages):
    return sorted(m for m in modules if m.split(".")[0] in packages)


# ---------------------------------------------------------------- the listing


def _help(width):
    return CliRunner().invoke(cli.main, ["--help"], terminal_width=width,
                              max_content_width=width)


@pytest.mark.parametrize("width", [40, 80, 120, 200])
def test_help_lists_every_command_exactly_as_click_does_with_all_imported(width, monkeypatch):
    lazy = _help(width)
    assert lazy.exit_code == 0, lazy.output
    monkeypatch.setattr(cli.LazyGroup, "format_commands", click.Group.format_commands)
    eager = _help(width)  # click's own listing: imports every command for its help
    assert eager.exit_code == 0
    assert lazy.output == eager.output
    listed = lazy.output.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == list(cli.COMMANDS)


def test_every_command_module_is_registered_with_its_summary():
    modules = {m.name for m in pkgutil.iter_modules(orchestrator.commands.__path__)}
    assert set(cli.COMMANDS.values()) == modules
    assert list(cli.SUMMARIES) == list(cli.COMMANDS)
    for name, module in cli.COMMANDS.items():
        command = importlib.import_module(f"orchestrator.commands.{module}").command
        assert command.name == name
        first = command.help.split("\n\n")[0]
        assert cli.SUMMARIES[name] == " ".join(first.split()), name


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_runs_through_the_lazy_group(name):
    r = CliRunner().invoke(cli.main, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert f"Usage: main {name} " in r.output
    assert cli.SUMMARIES[name].split()[0] in r.output


def test_unknown_command_is_still_a_usage_error():
    r = CliRunner().invoke(cli.main, ["deploy-everything"])
    assert r.exit_code == 2 and "No such command 'deploy-everything'" in r.output


# ---------------------------------------------------------------- what each command imports


def test_help_imports_no_command_and_no_heavy_library(tmp_path):
    r, mods = imported(tmp_path, "--help")
    assert r.returncode == 0 and "check-network" in r.stdout
    assert below(mods, "pydantic", "pydantic_core", "asyncssh", "rich", "yaml", "tenacity") == []
    assert sorted(m for m in mods if m.startswith("orchestrator.")) == ["orchestrator.cli"]


def test_version_imports_nothing_of_ours(tmp_path):
    r, mods = imported(tmp_path, "--version")
    assert r.returncode == 0 and "0.1.0" in r.stdout
    assert "pydantic" not in mods and "asyncssh" not in mods


def test_plan_imports_no_ssh_and_json_no_rich(tmp_path):
    r, mods = imported(tmp_path, "plan", str(EXAMPLE))
    assert r.returncode == 0 and "steps:" in r.stdout
    assert below(mods, "asyncssh", "tenacity", "cryptography") == []
    assert "orchestrator.transport" not in mods and "orchestrator.sim" not in mods
    r, mods = imported(tmp_path, "plan", "--json", str(EXAMPLE))
    assert r.returncode == 0 and json.loads(r.stdout)["ranks"]
    assert below(mods, "asyncssh", "rich") == []


def test_check_network_json_imports_no_rich(tmp_path):
    """--json output is for scripts: rich (tables, progress) is imported only for a person."""
    r, mods = imported(tmp_path, "check-network", str(EXAMPLE), "--json", "--nodes", "nosuch")
    assert r.returncode == 2 and "nosuch" in r.stderr
    assert "orchestrator.checks.network" in mods and below(mods, "rich") == []


def test_exec_validates_once_then_needs_no_pydantic(tmp_path):
    """Selecting a node that is not there exits 2 after the inventory is loaded, before SSH. The
    first run validates in a forked child (which stores the entry), so neither run imports pydantic."""
    args = ("exec", str(EXAMPLE), "--nodes", "nosuch", "--", "true")
    r, first = imported(tmp_path, *args)
    assert r.returncode == 2 and "nosuch" in r.stderr
    assert below(first, "pydantic", "pydantic_core", "yaml") == []  # the child validated it …
    assert len(list((tmp_path / "state" / ".cache" / "inventories").glob("*.json"))) == 1  # … and stored it
    r, again = imported(tmp_path, *args)
    assert r.returncode == 2 and "nosuch" in r.stderr
    assert below(again, "pydantic", "pydantic_core", "yaml", "rich") == []
    assert "orchestrator.inventory" not in again and "orchestrator.plan" not in again
    assert "asyncssh" in again  # exec itself still is the SSH command


def test_exec_of_an_invalid_inventory_validates_itself_and_says_what_plan_says(bad, tmp_path):
    bad, _ = bad
    r, mods = imported(tmp_path, "exec", str(bad), "--", "true")
    assert r.returncode == 2 and "a9" in r.stderr
    assert "pydantic" in mods  # the child found problems: this process validated and told them
    plan = subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(bad)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert plan.returncode == 2 and r.stderr == plan.stderr
    assert not list((tmp_path / "state").rglob("*.json"))


# ---------------------------------------------------------------- the validated-inventory cache


def _fields(value):
    """A model or a cached Fields as plain data, for comparing the two."""
    if isinstance(value, BaseModel):
        return {k: _fields(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, inventory_cache.Fields):
        return {k: _fields(v) for k, v in vars(value).items() if k != "source"}
    if isinstance(value, dict):
        return {k: _fields(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fields(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "inventories").glob("*.yaml")))
def test_a_cached_inventory_has_exactly_the_validated_fields(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    path = REPO / "inventories" / name
    full = inventory_cache.load_inventory(path)
    assert not isinstance(full, inventory_cache.Fields)
    hit = inventory_cache.load_inventory(path)
    assert isinstance(hit, inventory_cache.Fields) and hit.source is None
    assert _fields(hit) == _fields(full) == _fields(load_inventory(path))
    assert type(hit.ssh.connect_timeout) is type(full.ssh.connect_timeout)


def test_cache_is_private_and_keyed_by_the_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    inv = tmp_path / "inv.yaml"
    inv.write_text(EXAMPLE.read_text())
    inventory_cache.load_inventory(inv)
    folder = inventory_cache.cache_dir()
    entries = list(folder.iterdir())
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o077 == 0
    assert folder.stat().st_mode & 0o077 == 0 and folder.parent.stat().st_mode & 0o077 == 0
    inv.write_text(EXAMPLE.read_text().replace("ssh:", "ssh:\n  connect_timeout: 7", 1))
    changed = inventory_cache.load_inventory(inv)
    assert not isinstance(changed, inventory_cache.Fields) and changed.ssh.connect_timeout == 7
    assert len(list(folder.iterdir())) == 2


@pytest.fixture
def bad(tmp_path, monkeypatch):
    """(an invalid inventory, the InventoryError its full validation raises), a private state folder."""
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "bad.yaml"
    path.write_text(EXAMPLE.read_text().replace("soc: a3", "soc: a9"))
    with pytest.raises(InventoryError) as direct:
        load_inventory(path)
    return path, direct


def test_an_invalid_inventory_is_never_cached_and_says_the_same(bad):
    bad, direct = bad
    for _ in range(2):
        with pytest.raises(InventoryError) as cached:
            inventory_cache.load_inventory(bad)
        assert cached.value.render() == direct.value.render()
    assert not inventory_cache.cache_dir().exists() or not list(inventory_cache.cache_dir().iterdir())


@pytest.mark.parametrize("content", [b"", b"{", b"[1, 2]", b'{"m": {"name": "x"}}',
                                     b'{"m": {"name": "x", "ssh": 1, "nodes": {"x": 1}, '
                                     b'"groups": {"q": 1}, "extra": {"z": 1}}}', b"\xff"])
def test_a_damaged_entry_means_validate_again(content, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    inventory_cache.load_inventory(EXAMPLE)
    (entry,) = inventory_cache.cache_dir().iterdir()
    entry.write_bytes(content)
    again = inventory_cache.load_inventory(EXAMPLE)
    assert not isinstance(again, inventory_cache.Fields)  # validated, and stored afresh
    assert isinstance(inventory_cache.load_inventory(EXAMPLE), inventory_cache.Fields)


def test_no_writable_state_folder_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(blocker / "state"))
    for _ in range(2):
        inv = inventory_cache.load_inventory(EXAMPLE)
        assert not isinstance(inv, inventory_cache.Fields) and inv.name


def test_old_entries_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(inventory_cache, "KEEP", 3)
    text = EXAMPLE.read_text()
    for i in range(5):
        inv = tmp_path / f"inv{i}.yaml"
        inv.write_text(text + f"\n# copy {i}\n")
        inventory_cache.load_inventory(inv)
    assert len(list(inventory_cache.cache_dir().glob("*.json"))) == 3


# ---------------------------------------------------------------- no per-node config parse


def _cluster_with_home_config(tmp_path, monkeypatch, config: str | None):
    from orchestrator import transport
    from orchestrator.inventory import parse_inventory

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    if config is not None:
        (home / ".ssh" / "config").write_text(config)
    monkeypatch.setenv("HOME", str(home))
    parsed = []
    real = transport.SSHClientConfig.load

    def counting(cls, last, paths, reload, canonical, final, local_user, user, host, port):
        parsed.append(host)
        return real(last, paths, reload, canonical, final, local_user, user, host, port)

    monkeypatch.setattr(transport.SSHClientConfig, "load", classmethod(counting))
    nodes = {f"n{i}": {"host": f"npu-{i // 2}", "port": 2200 + i, "nic": "eth0"} for i in range(6)}
    inv = parse_inventory(json.dumps({
        "name": "cfg", "soc": "a2", "nodes": nodes, "container": {"image": "img"},
        "model": {"path": "/m"}, "groups": [{"name": "s", "role": "serve", "nodes": list(nodes)}],
        "ssh": {"known_hosts": str(tmp_path / "known_hosts")}}))
    cluster = transport.Cluster(inv)
    found = {n: cluster._config(inv.nodes[n].host) for n in inv.nodes}
    return found, parsed


@pytest.mark.parametrize("config", [None, "HashKnownHosts no\nHost *\n  ServerAliveInterval 30\n"])
def test_a_config_that_cannot_set_port_user_or_jump_is_parsed_for_no_node(config, tmp_path,
                                                                          monkeypatch):
    found, parsed = _cluster_with_home_config(tmp_path, monkeypatch, config)
    assert parsed == [] and all(cfg.get("Port") is None for cfg in found.values())


@pytest.mark.parametrize("config", ["Host npu-1\n  Port 2022\n  User ops\n",
                                    "Host npu-*\n  ProxyJump=bastion\n",
                                    "Include more.conf\n"])
def test_a_config_that_can_is_parsed_once_per_distinct_host(config, tmp_path, monkeypatch):
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "more.conf").write_text("Host npu-2\n  User from-include\n")
    found, parsed = _cluster_with_home_config(tmp_path, monkeypatch, config)
    assert sorted(parsed) == ["npu-0", "npu-1", "npu-2"]  # six nodes, three hosts
    if "Port 2022" in config:
        assert found["n2"].get("Port") == 2022 and found["n3"].get("User") == "ops"
        assert found["n0"].get("Port") is None
    if "ProxyJump" in config:
        assert all(cfg.get("ProxyJump") == "bastion" for cfg in found.values())
    if "Include" in config:
        assert found["n4"].get("User") == "from-include" and found["n0"].get("User") is None


def test_prefetch_stores_in_a_child_and_leaves_no_child_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    inv = tmp_path / "inv.yaml"
    inv.write_text(EXAMPLE.read_text())
    inventory_cache.prefetch(inv)
    (pid,) = inventory_cache._children.values()
    hit = inventory_cache.load_inventory(inv)
    assert isinstance(hit, inventory_cache.Fields)  # the child's entry, read back
    assert _fields(hit) == _fields(load_inventory(inv))
    assert inventory_cache._children == {}
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie
    inventory_cache.prefetch(inv)  # stored already: nothing to fork
    assert inventory_cache._children == {}


def test_prefetch_of_an_invalid_inventory_raises_the_full_problems(bad):
    bad, direct = bad
    inventory_cache.prefetch(bad)
    with pytest.raises(InventoryError) as fetched:
        inventory_cache.load_inventory(bad)
    assert fetched.value.render() == direct.value.render()
    assert not inventory_cache.cache_dir().exists() or not list(inventory_cache.cache_dir().iterdir())


def test_a_stuck_validating_child_is_killed_and_the_caller_validates(tmp_path, monkeypatch):
    import orchestrator.inventory as inventory_module

    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(inventory_cache, "PREFETCH_WAIT", 0.3)
    me, real = os.getpid(), inventory_module.load_inventory

    def stuck_in_the_child(path):
        if os.getpid() != me:
            import time
            time.sleep(600)
        return real(path)

    monkeypatch.setattr(inventory_module, "load_inventory", stuck_in_the_child)
    inv = tmp_path / "inv.yaml"
    inv.write_text(EXAMPLE.read_text())
    inventory_cache.prefetch(inv)
    (pid,) = inventory_cache._children.values()
    loaded = inventory_cache.load_inventory(inv)
    assert not isinstance(loaded, inventory_cache.Fields) and loaded.name == real(inv).name
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # killed and reaped
