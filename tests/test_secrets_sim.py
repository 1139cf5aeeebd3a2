"""Secrets end to end against `deploy sim` (docs/inventory.md, "Secrets").

An inventory with `args.api-key`, `env.HF_TOKEN` and a secret `container.env` comes up and
serves with the key enforced; no process on the node carries a value on its command line, the
node's env files are 0600 in a 0700 folder, and no output of plan/up/status/teardown nor any
file of the local state folder (ledger, run logs, diagnostics bundle) holds a value.
Node-side checks go through `deploy exec` with a state folder of their own (its output is the
node's, unredacted: it must not land in the state folder searched for the values).
"""
from __future__ import annotations

import json
import secrets
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_up_sim import MODES, ROOT, Sim, deploy

SINGLE = ROOT / "inventories" / "dsv31-a3-single.yaml"
PD = ROOT / "inventories" / "cp-a3-1p1d.yaml"


def _values() -> dict[str, str]:
    return {"api-key": "sk-" + secrets.token_hex(12), "HF_TOKEN": "hf_" + secrets.token_hex(12),
            "MOONCAKE_STORE_PASSWORD": "mc-" + secrets.token_hex(12)}


def _secret_inventory(source: Path, tmp: Path, values: dict[str, str], restarts: int | None = None) -> Path:
    data = yaml.safe_load(source.read_text())
    data.setdefault("args", {})["api-key"] = values["api-key"]
    data.setdefault("env", {})["HF_TOKEN"] = values["HF_TOKEN"]
    data["container"].setdefault("env", {})["MOONCAKE_STORE_PASSWORD"] = values["MOONCAKE_STORE_PASSWORD"]
    if restarts is not None:
        data.setdefault("readiness", {})["restarts"] = restarts
    path = tmp / source.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _assert_absent(values: dict[str, str], *texts: str, where: str) -> None:
    for name, v in values.items():
        for text in texts:
            assert v not in text, f"the {name} value appears in {where}"


def _assert_state_clean(state: Path, values: dict[str, str]) -> int:
    """No file of the local state folder holds a value; folders 0700, files not world-readable."""
    n = 0
    for p in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o700, f"{p} is {mode:o}"
            continue
        n += 1
        assert mode & 0o077 == 0 or p.parent.stat().st_mode & 0o077 == 0, f"{p} is {mode:o}"
        _assert_absent(values, p.read_bytes().decode("utf-8", "replace"), where=str(p))
    return n


class Node:
    """`deploy exec` on the sim's nodes, logging to a state folder of its own."""

    def __init__(self, sim: Sim):
        self.sim = sim
        self.env = {"DEPLOY_STATE_DIR": str(sim.dir / "exec-state")}

    def sh(self, script: str, node: str) -> str:
        p = deploy("exec", self.sim.inventory, "--json", "--nodes", node, "--", "sh", "-c", script, env=self.env)
        out = json.loads(p.stdout)["nodes"][node]
        assert out["status"] == "ok", out
        return out["stdout"]


def _request(host: str, port: int, key: str | None, model: str = "x") -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    body = json.dumps({"model": model, "prompt": "hi", "max_tokens": 2}).encode()
    req = urllib.request.Request(f"http://{host}:{port}/v1/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def tmp_dir(tmp_path):
    return tmp_path


def _up_recording(sim: Sim, monkeypatch) -> tuple[int, str, str, list[tuple[str, object, object]]]:
    """`deploy up INVENTORY --json` in this process, recording every (command line, stdin, what
    the run log records of stdin) the transport sends to a node."""
    from click.testing import CliRunner

    from orchestrator import transport
    from orchestrator.cli import main

    sent: list[tuple[str, object, object]] = []
    exec_ = transport.Cluster._exec

    async def spy(self, node, command, data, timeout, stdin_note, **kw):
        sent.append((command, data, stdin_note))
        return await exec_(self, node, command, data, timeout, stdin_note, **kw)

    monkeypatch.setattr(transport.Cluster, "_exec", spy)
    monkeypatch.setenv("DEPLOY_STATE_DIR", sim.env["DEPLOY_STATE_DIR"])
    r = CliRunner().invoke(main, ["up", sim.inventory, "--json"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.stdout, r.stderr, sent


def test_secrets_never_on_a_command_line_nor_in_any_output(tmp_dir, monkeypatch):
    values = _values()
    sim = Sim(_secret_inventory(SINGLE, tmp_dir, values), MODES[0])
    node = Node(sim)
    try:
        name = sim.inv["name"]
        outputs = []
        for args in (["plan", sim.inventory], ["plan", sim.inventory, "--json"], ["plan", sim.inventory, "--script", "n0"]):
            p = sim.run(*args)
            assert p.returncode == 0, p.stderr
            outputs += [p.stdout, p.stderr]
        assert "<redacted>" in outputs[2] and "--env-file" in outputs[4]
        _assert_absent(values, *outputs, where="deploy plan")

        code, stdout, stderr, sent = _up_recording(sim, monkeypatch)
        doc = json.loads(stdout)
        assert code == 0 and doc["ok"] and doc["smoke_text"].strip(), stderr[-3000:]
        _assert_absent(values, stdout, stderr, where="deploy up --json")
        # every command line `up` sent to the node (what `ps` shows there while it runs): none
        # holds a value; the values went only in stdin that the run log does not record
        assert len(sent) > 10
        _assert_absent(values, *(command for command, _d, _n in sent), where="a command sent to the node")
        carried = [(d, n) for _c, d, n in sent if d is not None and any(v in str(d) for v in values.values())]
        assert carried, "the values never reached the node"
        assert all(n != d for d, n in carried), ("a value in a script on stdin that the run log records "
                                                 "(its commands show in ps on the node)")

        # the node: no command line holds a value, and the check sees the rank's own
        cmdlines = node.sh('for p in /proc/[0-9]*; do tr "\\000" " " < "$p/cmdline" 2>/dev/null; echo; done', "n0")
        assert any("vllm" in line and "8015" in line for line in cmdlines.splitlines()), cmdlines[:2000]
        _assert_absent(values, cmdlines, where="a command line on the node")
        # the values reached vLLM's environment (from the 0600 files, not the command line)
        pid = json.loads(sim.run("status", sim.inventory, "--json").stdout)["ranks"][0]["pid"]
        environ = node.sh(f'tr "\\000" "\\n" < /proc/{pid}/environ', "n0").splitlines()
        assert f"VLLM_API_KEY={values['api-key']}" in environ
        assert f"HF_TOKEN={values['HF_TOKEN']}" in environ
        assert f"MOONCAKE_STORE_PASSWORD={values['MOONCAKE_STORE_PASSWORD']}" in environ  # docker --env-file
        # node-side state: folder 0700, env files 0600, nothing group/world-accessible
        modes = node.sh(f'cd "${{DEPLOY_NODE_ROOT-}}/var/tmp/deploy/{name}" && stat -c "%a %n" . *', "n0")
        mode = dict(reversed(line.split(" ", 1)) for line in modes.splitlines())
        assert mode["."] == "700", modes
        for f in ("secret.env", "rank-serve-n0-0.env", "rank-serve-n0-0.pid", "rank-serve-n0-0.log"):
            assert mode[f] == "600", modes
        assert all(m in ("600", "700") for m in mode.values()), modes

        # the key works and is enforced: without it vLLM's 401, with it a completion
        rank = json.loads(outputs[2])["ranks"][0]
        host, port = rank["ip"], rank["port"]
        assert _request(host, port, None) == (401, b'{"error":"Unauthorized"}')
        assert _request(host, port, "sk-wrong")[0] == 401
        assert _request(host, port, values["api-key"], sim.inv["model"]["served_name"])[0] == 200

        p = sim.run("status", sim.inventory, "--json")
        assert p.returncode == 0 and json.loads(p.stdout)["ok"], p.stdout[-2000:]
        _assert_absent(values, p.stdout, p.stderr, where="deploy status --json")
        p = sim.run("status", sim.inventory)
        assert "changed since" not in p.stderr  # the redacted ledger copy plans the same as the file
        _assert_absent(values, p.stdout, p.stderr, where="deploy status")
        p = sim.run("up", sim.inventory, "--json")
        assert json.loads(p.stdout)["nothing_to_do"], p.stdout[-2000:]  # the same key: nothing to do

        ledger = Path(sim.env["DEPLOY_STATE_DIR"]) / name / "ledger.json"
        assert stat.S_IMODE(ledger.stat().st_mode) == 0o600
        assert "<redacted>" in json.loads(ledger.read_text())["inventory_text"]
        p = sim.run("teardown", sim.inventory, "--json")
        assert p.returncode == 0, p.stdout[-2000:]
        _assert_absent(values, p.stdout, p.stderr, where="deploy teardown --json")
        left = node.sh(f'ls "${{DEPLOY_NODE_ROOT-}}/var/tmp/deploy/{name}"', "n0").split()
        assert "rank-serve-n0-0.log" in left and not [f for f in left if f.endswith(".env")], left
        assert _assert_state_clean(Path(sim.env["DEPLOY_STATE_DIR"]), values) >= 5
    finally:
        sim.run("teardown", sim.inventory)
        sim.down()


def test_changed_key_is_never_nothing_to_do(tmp_dir):
    """The ledger keeps a keyed hash of the values, not them: a second `up` with a new key does
    not report the old deployment as serving (it is a changed plan: teardown, then up)."""
    values = _values()
    sim = Sim(_secret_inventory(SINGLE, tmp_dir, values), MODES[0])
    try:
        p = sim.run("up", sim.inventory, "--json")
        assert p.returncode == 0, p.stdout[-2000:]
        data = yaml.safe_load(Path(sim.inventory).read_text())
        new = "sk-" + secrets.token_hex(12)
        data["args"]["api-key"] = new
        Path(sim.inventory).write_text(yaml.safe_dump(data, sort_keys=False))
        p = sim.run("up", sim.inventory, "--json")
        doc = json.loads(p.stdout)
        assert not doc["nothing_to_do"] and p.returncode == 1, p.stdout[-2000:]
        assert "teardown" in p.stdout  # the earlier run's ranks hold the devices
        assert sim.run("teardown", sim.inventory).returncode == 0
        p = sim.run("up", sim.inventory, "--json")
        assert p.returncode == 0, p.stdout[-2000:]
        rank = json.loads(sim.run("plan", sim.inventory, "--json").stdout)["ranks"][0]
        assert _request(rank["ip"], rank["port"], values["api-key"])[0] == 401
        assert _request(rank["ip"], rank["port"], new, sim.inv["model"]["served_name"])[0] == 200
    finally:
        sim.run("teardown", sim.inventory)
        sim.down()


def test_failed_group_bundle_holds_no_secret(tmp_dir):
    values = _values()
    sim = Sim(_secret_inventory(SINGLE, tmp_dir, values, restarts=0), MODES[0])
    try:
        sim.fault("n0", "crash-at-start")
        p = sim.run("up", sim.inventory, "--skip-checks")
        assert p.returncode == 1, p.stderr[-2000:]
        folder = Path(p.stderr.split("diagnostics: ")[1].split()[0])
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        plan = json.loads((folder / "plan.json").read_text())
        assert plan["ranks"][0]["env"]["HF_TOKEN"] == "<redacted>"
        assert "--api-key" in plan["ranks"][0]["argv"] and values["api-key"] not in plan["ranks"][0]["argv"]
        for f in folder.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        _assert_absent(values, p.stdout, p.stderr, where="deploy up (failed)")
        _assert_state_clean(Path(sim.env["DEPLOY_STATE_DIR"]), values)
    finally:
        sim.fault("n0", "clear")
        sim.run("teardown", sim.inventory)
        sim.down()


def test_pd_proxy_sends_the_key_to_its_backends(tmp_dir):
    """The upstream proxy sends OPENAI_API_KEY as its Bearer token: `up` gives it the key through
    its own 0600 env file, so the smoke passes through the proxy while each backend enforces it."""
    values = _values()
    sim = Sim(_secret_inventory(PD, tmp_dir, values), MODES[0])
    node = Node(sim)
    try:
        p = sim.run("up", sim.inventory, "--json", "--skip-checks")
        doc = json.loads(p.stdout)
        assert p.returncode == 0 and doc["ok"] and doc["smoke_text"].strip(), p.stdout[-3000:]
        _assert_absent(values, p.stdout, p.stderr, where="deploy up --json")
        plan = json.loads(sim.run("plan", sim.inventory, "--json").stdout)
        proxy = plan["proxy"]["node"]
        modes = node.sh(f'stat -c "%a" "${{DEPLOY_NODE_ROOT-}}/var/tmp/deploy/{sim.inv["name"]}/proxy.env"', proxy)
        assert modes.strip() == "600"
        cmdlines = node.sh('for p in /proc/[0-9]*; do tr "\\000" " " < "$p/cmdline" 2>/dev/null; echo; done', proxy)
        _assert_absent(values, cmdlines, where="a command line on the proxy node")
        backend = next(r for r in plan["ranks"] if r["port"] is not None)
        assert _request(backend["ip"], backend["port"], None)[0] == 401
        _assert_state_clean(Path(sim.env["DEPLOY_STATE_DIR"]), values)
    finally:
        sim.run("teardown", sim.inventory)
        sim.down()
