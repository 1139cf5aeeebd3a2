"""Units of the secret rules (orchestrator/redact.py): which names are secrets, how each output
redacts them, how they reach the node, and that no client anywhere ignores host keys."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator import nodepaths, redact, scripts
from orchestrator.inventory import parse_inventory
from orchestrator.launch import nodeside
from orchestrator.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "inventories").glob("*.yaml"))
KEY, TOKEN, PASSWORD = "sk-unit-0123456789abcdef", "hf_unit_fedcba9876543210", "mc-unit-pass-7777"


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """The registered values are process-wide: each test starts with none."""
    monkeypatch.setattr(redact, "_values", set())
    monkeypatch.setattr(redact, "_pattern", None)
    monkeypatch.setattr(redact, "_bpattern", None)


@pytest.mark.parametrize("name", [
    "VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MOONCAKE_STORE_PASSWORD", "AWS_SECRET_ACCESS_KEY",
    "OPENAI_APIKEY", "DB_PASSWD", "hf_token", "Api-Key", "SECRET", "GITHUB_TOKEN", "MY.SECRET.VALUE",
])
def test_secret_env_names(name):
    assert redact.is_secret_env(name)


@pytest.mark.parametrize("name", [
    "KEYBOARD_LAYOUT", "TOKENIZERS_PARALLELISM", "MAX_NUM_BATCHED_TOKENS", "SECRETARY", "PASSWORDLESS",
    "HCCL_BUFFSIZE", "HCCL_OP_EXPANSION_MODE", "HCCL_IF_IP", "HCCL_SOCKET_IFNAME", "HCCL_CONNECT_TIMEOUT",
    "HCCL_EXEC_TIMEOUT", "HCCL_INTRA_ROCE_ENABLE", "HCCL_INTRA_PCIE_ENABLE", "HCCL_DETERMINISTIC",
    "GLOO_SOCKET_IFNAME", "ASCEND_RT_VISIBLE_DEVICES", "PYTORCH_NPU_ALLOC_CONF", "SSH_AUTH_SOCK", "http_proxy",
])
def test_not_secret_env_names(name):
    assert not redact.is_secret_env(name)


@pytest.mark.parametrize("flag", ["api-key", "--api-key", "api_key", "--API-KEY", "hf-token", "some-secret",
                                  "db-password"])
def test_secret_flags(flag):
    assert redact.is_secret_flag(flag)


@pytest.mark.parametrize("flag", ["ssl-keyfile", "max-num-batched-tokens", "tokenizer", "tokenizer-mode",
                                  "kv-transfer-config", "served-model-name", "port"])
def test_not_secret_flags(flag):
    assert not redact.is_secret_flag(flag)


def test_the_examples_hold_no_secret_but_the_api_key_placeholder():
    """Every env name and flag of the shipped inventories (the guides' names) is not a secret,
    except `api-key` itself: the rule does not catch tuning names."""
    found = []
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text())
        layers = [data, data.get("container", {}), *(data.get("roles") or {}).values(), *data["groups"]]
        for layer in layers:
            found += [k for k in (layer.get("env") or {}) if redact.is_secret_env(k)]
            found += [k for k in (layer.get("args") or {}) if redact.is_secret_flag(k)]
    assert set(found) <= {"api-key"}, found


def test_redact_argv():
    argv = ["vllm", "serve", "/m", "--api-key", KEY, "--port", "8000", "--hf-token=" + TOKEN,
            "--api-key", "k1", "k2", "--enable-x"]
    out = redact.redact_argv(argv)
    assert out == ["vllm", "serve", "/m", "--api-key", "<redacted>", "--port", "8000", "--hf-token=<redacted>",
                   "--api-key", "<redacted>", "<redacted>", "--enable-x"]
    docker = ["docker", "run", "-e", f"HF_TOKEN={TOKEN}", "-e", "FOO=bar", "--env", f"X_PASSWORD={PASSWORD}", "img"]
    assert redact.redact_argv(docker) == ["docker", "run", "-e", "HF_TOKEN=<redacted>", "-e", "FOO=bar",
                                          "--env", "X_PASSWORD=<redacted>", "img"]


def _inventory(extra_env: dict | None = None) -> str:
    data = yaml.safe_load((ROOT / "inventories" / "dsv31-a3-single.yaml").read_text())
    data["args"]["api-key"] = KEY
    data["env"]["HF_TOKEN"] = TOKEN
    data["env"].update(extra_env or {})
    data["container"]["env"] = {"MOONCAKE_STORE_PASSWORD": PASSWORD, "FOO": "bar"}
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
def plan():
    return make_plan(parse_inventory(_inventory()))


def _absent(text: str) -> None:
    for v in (KEY, TOKEN, PASSWORD):
        assert v not in text


def test_plan_json_redacted(plan):
    doc = redact.redact_plan_json(plan.to_json())
    _absent(json.dumps(doc))
    rank = doc["ranks"][0]
    assert rank["env"]["HF_TOKEN"] == "<redacted>" and rank["argv"][rank["argv"].index("--api-key") + 1] == "<redacted>"
    assert "MOONCAKE_STORE_PASSWORD=<redacted>" in doc["containers"][0]["argv"] and "FOO=bar" in doc["containers"][0]["argv"]
    assert redact.plan_values(plan) == {KEY, TOKEN, PASSWORD}


def test_rank_script_sources_its_env_file_and_drops_the_key_flag(plan):
    rank = plan.ranks[0]
    text = scripts.rank_script(plan, rank)
    _absent(text)
    path = nodepaths.rank_env_file(plan.inventory, rank)
    assert f"\n. {path}\n" in text and "--api-key" not in text
    assert redact.rank_argv(rank) == [t for t in rank.argv if t not in ("--api-key", KEY)]
    env = scripts.rank_env_file_text(rank)
    assert env == f"export HF_TOKEN={TOKEN}\nexport VLLM_API_KEY={KEY}\n"
    _absent(scripts.node_script(plan, "n0"))


def test_rank_script_fails_without_its_env_file(plan, tmp_path):
    text = scripts.rank_script(plan, plan.ranks[0]).replace("exec vllm", "exec echo vllm")
    (tmp_path / "r.sh").write_text(text)
    p = subprocess.run(["sh", str(tmp_path / "r.sh")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "deploy: cannot read /var/tmp/deploy/" in p.stderr and p.stdout == ""


def test_container_secrets_go_through_env_file(plan):
    c = plan.containers[0]
    argv = scripts.container_argv(c, "/x/secret.env")
    _absent(" ".join(argv))
    assert argv[-5:] == ["--env-file", "/x/secret.env", c.image, "sleep", "infinity"] and "FOO=bar" in argv
    line = scripts.container_script(c, plan.inventory)
    _absent(line)
    assert "--env-file \"${DEPLOY_NODE_ROOT-}\"/var/tmp/deploy/" in line
    assert scripts.container_env_file_text(c) == f"MOONCAKE_STORE_PASSWORD={PASSWORD}\n"


def test_container_secret_with_a_line_break_is_refused():
    data = yaml.safe_load(_inventory())
    data["container"]["env"]["MOONCAKE_STORE_PASSWORD"] = "a\nb"
    plan = make_plan(parse_inventory(yaml.safe_dump(data)))
    with pytest.raises(scripts.ScriptError, match="line break"):
        scripts.container_env_file_text(plan.containers[0])


def test_bare_hf_token_flag_stays():
    from types import SimpleNamespace

    r = SimpleNamespace(argv=["vllm", "serve", "/m", "--hf-token", "--port", "1"], env={})
    assert redact.rank_argv(r) == r.argv and redact.rank_secret_env(r) == {}
    r = SimpleNamespace(argv=["vllm", "serve", "/m", "--hf-token=" + TOKEN, "--api-key", KEY, "--x"], env={})
    assert redact.rank_argv(r) == ["vllm", "serve", "/m", "--x"]
    assert redact.rank_secret_env(r) == {"HF_TOKEN": TOKEN, "VLLM_API_KEY": KEY}


def test_secret_flag_without_a_variable_is_named(plan):
    data = yaml.safe_load(_inventory())
    data["args"]["db-password"] = "pw-on-argv"
    p = make_plan(parse_inventory(yaml.safe_dump(data)))
    assert redact.secret_flags_on_argv(p) == ["group serve: --db-password"]
    assert redact.secret_flags_on_argv(plan) == []


def test_inventory_text_redacted_and_still_plans(plan):
    text = redact.redact_inventory_text(_inventory())
    _absent(text)
    again = make_plan(parse_inventory(text))
    assert redact.redact_plan_json(again.to_json()) == redact.redact_plan_json(plan.to_json())


def test_digest_tells_a_changed_key(plan):
    data = yaml.safe_load(_inventory())
    data["args"]["api-key"] = "sk-another-key-000"
    other = make_plan(parse_inventory(yaml.safe_dump(data)))
    assert redact.digest(plan, "s") == redact.digest(plan, "s") != redact.digest(other, "s")
    assert redact.digest(plan, "s") != redact.digest(plan, "t")
    assert KEY not in redact.digest(plan, "s")


def test_scrub_free_text_and_short_values():
    redact.register([KEY, "abc"])
    assert redact.scrub(f"x {KEY} y abc") == "x <redacted> y abc"  # shorter than MIN_SCRUB: left
    assert redact.scrub_bytes(f"{KEY}!".encode()) == b"<redacted>!"
    assert redact.scrub_obj({"a": [f"k={KEY}"], KEY: 1}) == {"a": ["k=<redacted>"], "<redacted>": 1}


def test_register_scrubs_stdout_and_stderr(capsys):
    redact.register([TOKEN])
    import sys

    print(f"token {TOKEN}")
    sys.stderr.write(f"error: {TOKEN} bad\n")
    out, err = capsys.readouterr()
    assert out == "token <redacted>\n" and err == "error: <redacted> bad\n"


def test_ledger_never_holds_a_value(plan, tmp_path, monkeypatch):
    from orchestrator.launch.ledger import Ledger

    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    led = Ledger(plan.name, inventory_text=_inventory(), plan=plan.to_json())
    led.record("smoke", False, f"body mentions {KEY}")  # free text: scrubbed by value once registered
    redact.register_plan(plan)
    led.save()
    path = Ledger.path_for(plan.name)
    _absent(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for d in (tmp_path / "state", path.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    back = Ledger.load(plan.name)
    assert back is not None and make_plan(parse_inventory(back.inventory_text)).name == plan.name


def test_run_folders_and_private_files(tmp_path, monkeypatch):
    from orchestrator.runlog import run_dir, write_private

    monkeypatch.setenv("DEPLOY_STATE_DIR", str(tmp_path / "state"))
    run = run_dir("inv", "up")
    for d in (tmp_path / "state", run.parent.parent, run.parent, run):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    redact.register([KEY])
    write_private(run / "f.txt", f"log {KEY}\n")
    assert (run / "f.txt").read_text() == "log <redacted>\n"
    assert stat.S_IMODE((run / "f.txt").stat().st_mode) == 0o600


def test_transport_node_log_is_scrubbed(tmp_path):
    from orchestrator.transport import _LogBudget, _NodeLog

    redact.register([KEY])
    log = _NodeLog(tmp_path / "n0.log", _LogBudget(1 << 20))
    cid = log.begin(f"echo {KEY}", f"script with {KEY}")
    log.feed(cid, "out|", f"{KEY}\n".encode())
    log.close()
    text = (tmp_path / "n0.log").read_text()
    assert KEY not in text and text.count("<redacted>") == 3


def test_private_files_written_0600_from_stdin_only(tmp_path):
    files = {"/var/tmp/deploy/x/a.env": f"export HF_TOKEN={TOKEN}\n", "/var/tmp/deploy/x/b.env": "DEPLOY_EOF_x\n"}
    script = nodeside.write_private_script(files)
    for line in script.splitlines():  # every value only inside a here-document
        if TOKEN in line:
            assert line == f"export HF_TOKEN={TOKEN}"
    p = subprocess.run(["sh", "-s"], input=script, text=True, capture_output=True, timeout=30,
                       env={**os.environ, "DEPLOY_NODE_ROOT": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    d = tmp_path / "var/tmp/deploy/x"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for path, text in files.items():
        f = tmp_path / path.lstrip("/")
        assert f.read_text() == text and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert sorted(os.listdir(d)) == ["a.env", "b.env"]  # no temp file left


def test_start_many_makes_logs_and_pid_files_private(tmp_path):
    (tmp_path / "r.sh").write_text("echo started\n")
    argv = nodeside.start_many("c", [(str(tmp_path / "r.sh"), str(tmp_path / "r.log"), str(tmp_path / "r.pid"))])
    assert argv[:3] == ["docker", "exec", "c"]
    p = subprocess.run(argv[3:], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    for f in ("r.log", "r.pid"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o600


def test_plan_cli_redacts_every_form(tmp_path):
    path = tmp_path / "inv.yaml"
    data = yaml.safe_load(_inventory())
    data["args"]["db-password"] = "pw-on-argv-123"
    path.write_text(yaml.safe_dump(data))
    outs = []
    for extra in ([], ["--json"], ["--script", "n0"]):
        p = subprocess.run(["python3", "-m", "orchestrator", "plan", str(path), *extra], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout + p.stderr)
        _absent(p.stdout + p.stderr)
        assert "pw-on-argv-123" not in p.stdout + p.stderr
    assert "--db-password is a secret vLLM reads from no environment variable" in outs[0]



def test_up_status_teardown_warn_of_a_secret_flag_on_argv(tmp_path, capsys):
    """What up/status/teardown load their plan with says it too (no node is contacted here)."""
    from orchestrator.launch.session import plan_from_file

    path = tmp_path / "inv.yaml"
    data = yaml.safe_load(_inventory())
    data["args"]["db-password"] = "pw-on-argv-123"
    path.write_text(yaml.safe_dump(data))
    plan, text = plan_from_file(str(path), as_json=False)
    err = capsys.readouterr().err
    assert "warning: group serve: --db-password is a secret vLLM reads from no environment variable" in err
    assert "pw-on-argv-123" in text and "pw-on-argv-123" not in err


_IGNORE_HOST_KEYS = [re.compile(p) for p in (
    r"known_hosts\s*=\s*None", "StrictHostKeyChecking" + r"\s*=?\s*(no|off|accept-new)\b",
    "UserKnownHostsFile" + r"\s*=?\s*/dev/null", r"host_key_checking\s*=\s*False",
    r"\bssh\b[^\n]*\s-o\s*StrictHostKeyChecking=no",
)]


def test_no_client_anywhere_ignores_host_keys():
    """No "ignore host keys" mode: not in the product, the simulator's own clients, the
    benchmarks or the tests (the schema refuses `host_keys: ignore`, test_validation)."""
    me = Path(__file__).resolve()
    hits = []
    for path in _our_files("orchestrator", "bench", "tests"):
        if path.suffix not in (".py", ".sh", ".yaml", ".yml", ".cfg", ".ini", ".toml") or path.resolve() == me:
            continue
        if path.is_file():
            text = path.read_text(errors="replace")
            hits += [f"{path.relative_to(ROOT)}: {m.group(0)}" for p in _IGNORE_HOST_KEYS for m in p.finditer(text)]
    assert not hits, hits


def _our_files(*folders: str) -> list[Path]:
    """The project's own files below `folders`: what git tracks or would track (not what it
    ignores, such as the benchmarks' virtualenvs of third-party code); every file without git."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard", "--", *folders], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for folder in folders for p in (ROOT / folder).rglob("*")]
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_inventory_errors_never_quote_a_secret_value():
    from orchestrator.errors import InventoryError

    data = yaml.safe_load(_inventory())
    data["env"]["HF_TOKEN"] = {"nested": TOKEN}
    data["groups"][0].setdefault("env", {})["OTHER"] = {"nested": "plain-value"}
    with pytest.raises(InventoryError) as e:
        parse_inventory(yaml.safe_dump(data))
    text = e.value.render()
    assert TOKEN not in text and "env.HF_TOKEN" in text and "<redacted> (a mapping)" in text
    assert "plain-value" in text  # other values are still quoted
    assert redact.secret_path(("groups", 0, "env", "HF_TOKEN", "str")) and redact.secret_path(("args", "api-key"))
    assert not redact.secret_path(("env", "HCCL_IF_IP")) and not redact.secret_path(("model", "path"))
