"""No inventory string ever makes a rendered launch script run anything.

Every string field that reaches `deploy plan --script NODE` is fed shell metacharacters; each
rendered rank script is then executed with `sh`, a stub `vllm` first on PATH recording the argv
and environment it was given, and a canary file that any command substitution, word split,
redirection or injected line would create. The argv vLLM would get must be exactly the plan's.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import nodepaths
from orchestrator import scripts as rendered
from orchestrator.cli import main
from orchestrator.plan import load_and_plan
from orchestrator.redact import REDACTED, rank_argv

EXAMPLES = Path(__file__).resolve().parents[1] / "inventories"
STUB = '#!/bin/sh\nprintf "%s\\0" "$@" > "$STUB_OUT/argv"\nenv > "$STUB_OUT/env"\n'
PAYLOADS = [
    "$(touch {c})", "`touch {c}`", "'; touch {c}; '", '"; touch {c}; "', "\ntouch {c}\n",
    "${{IFS}}$(touch {c})", "$((1))$(touch {c})", 'a\\"$(touch {c})', "${{HOME:-$(touch {c})}}",
    "\\$(touch {c})", ";touch {c}", "&& touch {c}", "| touch {c}", "> {c}", "x\n> {c}",
    "*", "~root", "-rf /", "#", "$'\\x41'$(touch {c})", "\r\ntouch {c}", "'\"'\"'$(touch {c})",
]


def secret_files(path: Path) -> dict[str, str]:
    """The 0600 env files `up` would write beside the scripts (node path -> text)."""
    plan = load_and_plan(str(path))
    files = {nodepaths.rank_env_file(plan.inventory, r): rendered.rank_env_file_text(r) for r in plan.ranks}
    files[nodepaths.proxy_env_file(plan.inventory)] = rendered.proxy_env_file_text(plan)
    return {k: v for k, v in files.items() if v is not None}


def render(tmp: Path, data: dict) -> tuple[int, dict, dict[str, str]]:
    """(exit code, plan json, node -> its --script text); the env files in plan["secret_files"]."""
    path = tmp / "inv.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    r = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        return r.exit_code, {}, {}
    plan = json.loads(r.stdout_bytes)
    scripts = {}
    for node in dict.fromkeys(rank["node"] for rank in plan["ranks"]):
        s = CliRunner().invoke(main, ["plan", str(path), "--script", node])
        assert s.exit_code == 0, s.output
        scripts[node] = s.stdout_bytes.decode()  # .stdout folds \r\n
    plan["secret_files"] = secret_files(path)
    plan["injected"] = (data["env"].get("INJECTED_TOKEN"), data["args"].get("api-key"))
    return 0, plan, scripts


def run_scripts(tmp: Path, plan: dict, scripts: dict[str, str], canary: Path) -> None:
    stub = tmp / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "vllm").write_text(STUB)
    (stub / "vllm").chmod(0o755)
    (stub / "python").write_text(STUB)
    (stub / "python").chmod(0o755)
    ranks = iter(plan["ranks"])
    containers = {c["node"]: c for c in plan.get("containers", [])}
    for node, text in scripts.items():
        for part in text.split("# ==== ")[1:]:
            head, _, body = part.partition("\n")
            if head.startswith("container "):  # the docker run line: exactly the plan's argv tokens
                assert shlex.split(body.strip().splitlines()[0]) == containers[node]["argv"]
                continue
            if head.startswith("socket_env_guard"):
                continue
            is_proxy = head.startswith("proxy")
            rank = plan["proxy"] if is_proxy else next(ranks)
            assert rank["node"] == node
            out = tmp / "out"
            out.mkdir(exist_ok=True)
            script = tmp / "rank.sh"
            for n, src in enumerate(re.findall(r"^\. (/var/tmp/deploy/\S+\.env)$", body, re.M)):
                local = tmp / f"secret-{n}.env"  # the env file up writes there, sourced from here
                local.write_text(plan["secret_files"][src])
                body = body.replace(src, str(local))
            script.write_text(body)
            env = {"PATH": f"{stub}:/usr/bin:/bin", "HOME": str(tmp), "STUB_OUT": str(out)}
            p = subprocess.run(["sh", str(script)], cwd=tmp, env=env, capture_output=True,
                               timeout=30)
            assert p.returncode == 0, p.stderr
            assert not canary.exists(), f"the script ran an injected command:\n{part}"
            argv = (out / "argv").read_bytes().split(b"\0")[:-1]
            # exactly the plan's argv, but for the secret flags that went to the env file
            assert [a.decode() for a in argv] == rank_argv(SimpleNamespace(argv=rank["argv"]))[1:]
            if is_proxy:
                continue
            seen = dict(line.split("=", 1) for line in (out / "env").read_text().split("\n")
                        if "=" in line and not line.startswith((" ", "\t")))
            for k, v in rank["env"].items():
                if "$" not in v and "\n" not in v:
                    assert seen.get(k) == v or (v == REDACTED and k in seen), k
            for name, secret in zip(("INJECTED_TOKEN", "VLLM_API_KEY"), plan["injected"]):
                if secret is not None and "$" not in secret and "\n" not in secret:
                    assert seen.get(name) == secret, name


def inject(data: dict, value: str) -> dict:
    """Put `value` in every string field that reaches a launch script."""
    data = json.loads(json.dumps(data))
    printable = "".join(c for c in value if c >= " " and c != "\x7f")  # argv tokens: no controls
    # secrets of their own values (they are scrubbed from output by value): through the env files
    data["env"] = {**data.get("env", {}), "INJECTED": value, "TAIL": f"x{value}y", "INJECTED_TOKEN": f"s{value}s"}
    data["args"] = {**data.get("args", {}), "injected-flag": value,
                    "additional-config": {"k": value}, "api-key": f"k{printable}k"}
    data["model"]["path"] = "/weights/" + printable
    data["model"]["served_name"] = "m" + printable
    for g in data["groups"]:
        g.setdefault("env", {})["G_INJECTED"] = value
        g["engine_id"] = f"e{value}{g['name']}"
    if data.get("kv_transfer"):
        data["kv_transfer"].setdefault("extra", {})["x"] = value
    return data


BASE = yaml.safe_load((EXAMPLES / "dsv31-a3-2p1d.yaml").read_text())


@pytest.mark.parametrize("payload", PAYLOADS)
def test_metacharacters_never_run(tmp_path, payload):
    canary = tmp_path / "CANARY"
    code, plan, scripts = render(tmp_path, inject(BASE, payload.format(c=canary)))
    assert code == 0  # all of these are legal values: they must be carried, not refused
    run_scripts(tmp_path, plan, scripts, canary)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_carries_a_payload(tmp_path, example):
    canary = tmp_path / "CANARY"
    data = yaml.safe_load((EXAMPLES / example).read_text())
    code, plan, scripts = render(tmp_path, inject(data, f"$(touch {canary})'`touch {canary}`"))
    assert code == 0
    run_scripts(tmp_path, plan, scripts, canary)


SHELLY = st.text(alphabet=st.sampled_from(list("$`'\"\\;&|<>(){}[]*?~#!\n\t =-_aZ09./:%^,")),
                 min_size=1, max_size=24)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=SHELLY)
def test_random_metacharacter_strings_never_run(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("fuzz")
    canary = tmp / "CANARY"
    code, plan, scripts = render(tmp, inject(BASE, f"{value}$(touch {canary}){value}"))
    assert code in (0, 2)
    if code == 0:
        run_scripts(tmp, plan, scripts, canary)
