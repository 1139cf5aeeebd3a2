"""Hostile inventory strings, end to end: `deploy up`, `status` and `teardown` against `deploy sim`.

Every inventory string that reaches a node is given shell metacharacters, quotes, newlines,
`--flag` look-alikes, unicode and long values, each carrying a canary command (`touch CANARY`)
that any command substitution, word split, redirection or injected line would run. For each
inventory the real CLI brings the deployment up, reads its status and tears it down; then:

- the exit code is 0 and the value arrived exactly, checked on the node, not in our own output:
  the rank and proxy processes' argv (/proc/PID/cmdline) equal the plan's, their environment
  (/proc/PID/environ) and the container's (its docker inspect record) hold every value byte for
  byte, container.setup got its argv (it writes it to a file), the uploaded rank scripts and the
  socket-env guard's sitecustomize.py on the node equal what the planner rendered, the served
  name and model path are what /v1/models answers (and smoke + warm-up requests succeeded); or
  the exit code is 2 and the refusal names the field, before anything reached a node;
- no canary anywhere (this machine's /tmp, the node's DEPLOY_NODE_ROOT, the container's root,
  every file of the simulator), and after teardown no process, container or port left.

One simulator for the module (1 node, 2 ranks and the proxy, --startup 0.3); each case is its own
deployment name on it. Bounded for CI: a fixed list of classic payloads in two rotations (one
with values at the length bound), one API-key case, one flag look-alike case and two hypothesis
examples (derandomized: the same strings on every run).
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
MODE = "openssh" if Path("/usr/sbin/sshd").exists() else "embedded"
TAG = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:8] or secrets.token_hex(4)  # one per run, all workers
CANARY = f"/tmp/CANARY-{TAG}"          # absolute: this machine's /tmp, or the container's
REL = f"CANARY-{TAG}-rel"             # relative: wherever a shell happens to stand
PAYLOADS = [
    "$(touch {c})", "`touch {c}`", "'; touch {c}; '", '"; touch {c}; "', "\ntouch {c}\n",
    "${{IFS}}$(touch {c})", "$((1))$(touch {c})", 'a\\"$(touch {c})', "${{HOME:-$(touch {c})}}",
    "\\$(touch {c})", ";touch {c}", "&& touch {c}", "| touch {c}", "> {c}", "x\n> {c}",
    "*", "~root", "-rf /", "#", "$'\\x41'$(touch {c})", "\r\ntouch {c}", "'\"'\"'$(touch {c})",
    "--port=9999", "--api-key=$(touch {c})", "-q", "--served-model-name x",
    "ünïcødé — 模型 😀 \u202e\u200b$(touch {c})", "%s%n%x {c}", "{{}}$(touch {c}){{}}",
    "$(touch {r})", "`touch {r}`",
]
BASE = """\
name: fz
soc: a2
nodes:
  n0: {host: 10.1.0.1, nic: eth0}
container:
  image: quay.io/ascend/vllm-ascend:v0.18.0
  mounts: ["/weights:/weights"]
  socket_env_guard: true
model: {path: /weights/m, served_name: m}
kv_transfer: {connector: MooncakeConnectorV1}
groups:
  - {name: p, role: prefill, nodes: [n0], devices: [0], kv_port: 40000}
  - {name: d, role: decode, nodes: [n0], devices: [1], kv_port: 40100, port: 7200, dp_rpc_port: 12400}
proxy: {node: n0, port: 1999}
readiness: {timeout: 60, restarts: 0, warmup: 1}
"""


def deploy(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


class Node:
    """The module's simulator: one node; inventories for it are written next to it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fuzz-up-", dir="/tmp"))
        self.dir.chmod(0o755)
        (self.dir / "base.yaml").write_text(BASE)
        self.env = {"DEPLOY_STATE_DIR": str(self.dir / "state")}
        p = deploy("sim", "up", str(self.dir / "base.yaml"), "--dir", str(self.dir / "sim"), "--sshd", MODE,
                   "--startup", "0.3", env=self.env)
        assert p.returncode == 0, p.stderr
        self.base = yaml.safe_load(Path(p.stdout.strip().splitlines()[-1]).read_text())
        self.root = self.dir / "sim" / "nodes" / "n0" / "root"   # the node's DEPLOY_NODE_ROOT
        self.n = 0
        self.refused: list = []  # the problems of the last inventory refused at load

    def run(self, *args: str) -> tuple[int, dict, str]:
        p = deploy(*args, "--json", env=self.env)
        try:
            return p.returncode, json.loads(p.stdout), p.stderr
        except ValueError:
            raise AssertionError(f"not one JSON object on stdout (rc {p.returncode}):\n{p.stdout}\n{p.stderr}") from None

    def inventory(self, data: dict) -> Path:
        self.n += 1
        data = json.loads(json.dumps(data))
        data["name"] = f"fz{self.n}"
        path = self.dir / f"fz{self.n}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return path

    def provide_model(self, model_path: str) -> None:
        """The weights folder the fake vllm wants, in the node's host view (mounted at /weights)."""
        assert model_path.startswith("/weights/") and "/" not in model_path[len("/weights/"):]
        folder = self.root / "weights" / model_path[len("/weights/"):]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text((self.root / "weights" / "m" / "config.json").read_text())

    def provide_proxy(self, script: str) -> None:
        """A copy of the image's P/D proxy at `script` (under /weights) in the node's host view."""
        from orchestrator.sim.runtime import image

        assert script.startswith("/weights/") and "/" not in script[len("/weights/"):]
        text = image.files(str(self.dir / "sim"), self.base["container"]["image"])[image.PROXY][0]
        (self.root / script.lstrip("/")).write_text(text)

    def down(self) -> None:
        deploy("sim", "down", "--dir", str(self.dir / "sim"))
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def node():
    n = Node()
    yield n
    n.down()


def canaries(node: Node) -> list[str]:
    """Every canary file: this machine's /tmp and /var/tmp, the nodes' user's home, the cwd, and
    every file of the simulator (the node's root, container roots, state, homes)."""
    found = glob.glob(f"/tmp/CANARY-{TAG}*") + glob.glob(f"/var/tmp/CANARY-{TAG}*")
    for d in ("/var/lib/deploy-sim", os.getcwd(), "/", str(Path.home())):
        found += glob.glob(os.path.join(d, f"CANARY-{TAG}*"))
    for dirpath, _dirs, files in os.walk(node.dir):
        found += [os.path.join(dirpath, f) for f in files if f.startswith(f"CANARY-{TAG}")]
    return found


def payload(i: int) -> str:
    return PAYLOADS[i % len(PAYLOADS)].format(c=CANARY, r=REL)


def one_word(value: str) -> str:
    """For fields that are one argv word (model path, served name): no control characters."""
    return "".join(c for c in value if c >= " " and c != "\x7f")


def inject(base: dict, values: list[str], single: str) -> tuple[dict, dict]:
    """Put `values` (each in a field of its own) and `single` in every string field that reaches
    the node; returns (inventory, what to look for on the node)."""
    data = json.loads(json.dumps(base))
    env = {f"INJ_{i}": v for i, v in enumerate(values)}
    data["env"] = {**env, "TAIL": f"x{single}y"}
    data["container"]["env"] = {f"C_INJ_{i}": v for i, v in enumerate(values)}
    data["container"]["setup"] = [["python3", "-c", "import sys, json; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))",
                                   "/var/tmp/deploy/NAME/setup-args.json", *values, single]]
    data["args"] = {"revision": single, "response-role": f"r{single}", "generation-config": f"--port=9999{single}"}
    data["roles"] = {"prefill": {"args": {"chat-template": single}, "env": {"R_INJ": single}},
                     "decode": {"args": {"download-dir": f"/x{single}"}}}
    data["kv_transfer"]["extra"] = {f"x{i}": v for i, v in enumerate(values)}
    g_p, g_d = data["groups"]
    g_p["engine_id"] = f"e{single}"
    g_p["env"] = {"G_INJ": single}
    g_p["kv_extra"] = {"y": single}
    g_d["env"] = {"G_INJ": f"d{single}"}
    word = one_word(single)
    folder = word.replace("/", "%").encode()[:200].decode(errors="ignore")  # one file name: <= 255 bytes
    data["model"] = {"path": "/weights/m" + folder, "served_name": "m" + word}
    data["proxy"]["script"] = f"/weights/proxy{folder}.py"
    mount = folder.replace(":", "%")
    data["container"]["mounts"].append(f"/weights/mnt{mount}:/mnt/m{mount}:ro")
    data["container"]["env_files"] = ["/usr/local/Ascend/ascend-toolkit/set_env.sh", "/usr/local/Ascend/nnal/atb/set_env.sh",
                                      f"/etc/none{word}"]  # absent: sourced only when present
    return data, {"setup": [*values, single]}


def check_on_node(node: Node, inv_path: Path, data: dict, status: dict, expect: dict) -> None:
    """The values arrived exactly: argv, environment, container record, setup, uploaded files."""
    from orchestrator import nodepaths, scripts
    from orchestrator.inventory import load_inventory
    from orchestrator.launch.deployment import rank_refs
    from orchestrator.plan import make_plan

    plan = make_plan(load_inventory(inv_path))
    inv = plan.inventory
    pids = {r["key"]: r["pid"] for r in status["ranks"]}
    for ref in rank_refs(plan):
        pid = pids[ref.key]
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        assert argv[-(len(ref.rank.argv) - 1):] == ref.rank.argv[1:], ref.key
        assert argv[-len(ref.rank.argv)].endswith("/vllm")
        environ = dict(e.decode().split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        for k, v in ref.rank.env.items():
            if not scripts._REF.search(v):  # `$NAME` / `${NAME}` references stay live (the spec)
                assert environ.get(k) == v, (ref.key, k)
        for k, v in inv.container.env.items():
            if k not in ref.rank.env:
                assert environ.get(k) == v, (ref.key, k)
        guard = scripts.socket_env(plan, ref.rank)
        assert json.loads(environ[scripts.SOCKET_ENV_VAR]) == guard
        script = node.root / ref.script.lstrip("/")
        assert script.read_bytes() == scripts.rank_script(plan, ref.rank).encode(), ref.script
    proxy = status["proxy"]
    argv = [a.decode() for a in Path(f"/proc/{proxy['pid']}/cmdline").read_bytes().split(b"\0")[:-1]]
    assert argv[-(len(plan.proxy.argv) - 1):] == plan.proxy.argv[1:]
    assert (node.root / nodepaths.proxy_script(inv).lstrip("/")).read_bytes() == scripts.proxy_script(plan).encode()
    cdir = node.dir / "sim" / "nodes" / "n0" / "containers" / nodepaths.container_name(inv)
    record = json.loads((cdir / "config.json").read_text())
    for k, v in inv.container.env.items():
        assert f"{k}={v}" in record["Config"]["Env"], k
    state = node.root / nodepaths.remote_dir(inv).lstrip("/")
    setup_file = state / "setup-args.json"
    assert json.loads(setup_file.read_text()) == expect["setup"]
    guard = scripts.sitecustomize_for(plan, "n0")
    assert (node.root / nodepaths.sitecustomize_file(inv).lstrip("/")).read_text() == guard
    installed = glob.glob(str(cdir / "rootfs" / "usr/local/python3.11.14/lib/python3*/site-packages/sitecustomize.py"))
    assert installed and Path(installed[0]).read_text() == guard
    for ref in rank_refs(plan):
        if ref.rank.port is None:
            continue
        models = _get(ref.rank.ip, ref.rank.port, "/v1/models")
        assert [(m["id"], m["root"]) for m in models["data"]] == [(inv.model.served, inv.model.path)]


def _get(host: str, port: int, path: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as r:  # loopback: the sim's node
        return json.loads(r.read())


def nothing_left(node: Node, status: dict) -> None:
    pids = [r["pid"] for r in status.get("ranks", []) if r.get("pid")]
    if status.get("proxy") and status["proxy"].get("pid"):
        pids.append(status["proxy"]["pid"])
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state in ("Z", "X"), f"pid {pid} still runs after teardown"
    containers = node.dir / "sim" / "nodes" / "n0" / "containers"
    assert not containers.exists() or not any(containers.iterdir()), list(containers.iterdir())
    from orchestrator.launch.nodeside import parse_listening

    addr = node.base["nodes"]["n0"]["host"]
    held = [p for a, p in parse_listening(Path("/proc/net/tcp").read_text())
            if a == addr and p in (7100, 7200, 1999, 9999, 12321, 12400)]
    assert not held, held


def cycle(node: Node, data: dict, expect: dict) -> int:
    """up, status, teardown of one inventory; returns up's exit code (0 or 2, else it fails)."""
    name = f"fz{node.n + 1}"
    for argv in data["container"].get("setup", []):
        argv[:] = [a.replace("/var/tmp/deploy/NAME/", f"/var/tmp/deploy/{name}/") for a in argv]
    if data["model"]["path"] != "/weights/m":
        node.provide_model(data["model"]["path"])
    if data.get("proxy", {}).get("script"):
        node.provide_proxy(data["proxy"]["script"])
    inv = node.inventory(data)
    code, doc, err = node.run("up", str(inv), "--skip-checks")
    assert not canaries(node), f"injected command ran during up: {canaries(node)}"
    if code == 2:  # refused at load, naming the field; nothing reached the node
        assert doc["problems"] and all(p["field"] and p["line"] for p in doc["problems"]), doc
        node.refused = doc["problems"]
        return 2
    status: dict = {}
    try:
        assert code == 0 and doc["ok"], f"up exit {code}: {json.dumps(doc)[:3000]}\n{err[-3000:]}"
        assert doc["smoke_text"].strip()
        code_s, status, err = node.run("status", str(inv))
        assert code_s == 0 and status["ok"], json.dumps(status)[:3000]
        assert not canaries(node), f"injected command ran during status: {canaries(node)}"
        if expect:
            check_on_node(node, inv, data, status, expect)
    finally:
        code_t, td, err = node.run("teardown", str(inv))
        assert code_t == 0 and td["ok"], json.dumps(td)[:3000] + err[-2000:]
    assert not canaries(node), f"injected command ran during teardown: {canaries(node)}"
    nothing_left(node, status)
    return 0


ROTATIONS = 2


@pytest.mark.parametrize("rotation", range(ROTATIONS))
def test_classic_payloads_are_carried_exactly_and_never_run(node, rotation):
    """Every payload in its own env, container env, setup and kv extra field; the one-per-field
    ones (flags, served name, model path, engine id) get half of them, concatenated. Rotation 0
    also carries values just under docs/limits.md's bound (MAX_VALUE_BYTES per value; the docker
    run line and each setup command under MAX_COMMAND_BYTES) in env, container env, setup and a
    flag: they reach the node whole."""
    from orchestrator.inventory import MAX_VALUE_BYTES

    values = [payload(i) for i in range(len(PAYLOADS))]
    if rotation == 0:
        tail = payload(0) + payload(1) + payload(2)
        values.append(("x" * MAX_VALUE_BYTES)[:MAX_VALUE_BYTES - len(tail.encode())] + tail)
    single = "".join(values[rotation:len(PAYLOADS):ROTATIONS])
    data, expect = inject(node.base, values, single)
    if rotation == 0:
        data["args"]["allowed-origins"] = values[-1]
    assert cycle(node, data, expect) == 0, node.refused  # every one of them is a legal value


def test_too_long_a_value_is_refused_at_load_naming_the_field(node):
    from orchestrator.inventory import MAX_VALUE_BYTES

    data = json.loads(json.dumps(node.base))
    data["env"] = {"LONG": "x" * (MAX_VALUE_BYTES + 1)}
    inv = node.inventory(data)
    code, doc, _ = node.run("up", str(inv), "--skip-checks")
    assert code == 2 and [p["field"] for p in doc["problems"]] == ["env.LONG"], doc


def test_an_api_key_with_metacharacters_is_sent_exactly(node):
    """The smoke and warm-up requests carry the key the ranks check (a 401 would fail up), however
    `up` passes it to the ranks; a key no HTTP header can carry is refused at load."""
    key = f"k$(touch {CANARY})`touch {CANARY}`';\"|&<>*~#!%"
    data = json.loads(json.dumps(node.base))
    # one serve group, no proxy: the upstream P/D proxy authenticates to its backends with its
    # own OPENAI_API_KEY environment variable, which is not this test's subject
    del data["proxy"], data["kv_transfer"]
    data["groups"] = [{"name": "s", "role": "serve", "nodes": ["n0"], "devices": [0]}]
    data["args"] = {"api-key": key}
    assert cycle(node, data, {}) == 0
    for bad in ("a\nb", "ключ", " lead", "\x1b[31m"):
        data["args"] = {"api-key": bad}
        code, doc, _ = node.run("up", str(node.inventory(data)), "--skip-checks")
        assert code == 2 and [p["field"] for p in doc["problems"]] == ["args.api-key"], (bad, doc)
    assert not canaries(node)


def test_a_flag_look_alike_value_never_becomes_a_flag(node):
    """`enforce-eager: "--port=9999"` (a flag that takes no value): as its own argv word vLLM
    would read `--port=9999` as the port flag. It is passed joined (`--enforce-eager=--port=9999`),
    so vLLM refuses the value instead: up fails (exit 1) and nothing ever listens on 9999."""
    data = json.loads(json.dumps(node.base))
    data["args"] = {"enforce-eager": "--port=9999"}
    data["readiness"] = {"timeout": 20, "restarts": 0, "smoke": False}
    inv = node.inventory(data)
    plan = json.loads(deploy("plan", str(inv), "--json").stdout)
    assert all("--port=9999" not in r["argv"] and "--enforce-eager=--port=9999" in r["argv"] for r in plan["ranks"])
    code, doc, err = node.run("up", str(inv), "--skip-checks")
    assert code == 1 and all("--enforce-eager" in m for m in doc["failed_groups"].values()), doc["failed_groups"]
    code_t, td, _ = node.run("teardown", str(inv))
    assert code_t == 0 and td["ok"]
    nothing_left(node, {})
    assert not canaries(node)


NAMED = [("name", ["container", "name"]), ("image", ["container", "image"]), ("mount", ["container", "mounts", 0]),
         ("env_file", ["container", "env_files", 0]), ("model", ["model", "path"]), ("served", ["model", "served_name"]),
         ("proxy", ["proxy", "script"]), ("group", ["groups", 0, "name"])]


CARRIED = {"model", "served", "proxy"}  # argv words: legal values there are the carry tests' subject


@pytest.mark.parametrize("value", ["x; touch {c}", "$(touch {c})`touch {c}`", "--privileged", "a\nb", "../../etc'ünï"])
def test_hostile_names_paths_and_images_are_refused_at_load_naming_the_field(node, value):
    """Names, the image and paths that name files or argv positions: `up` refuses each (exit 2,
    the field named, before any node is contacted) unless it is a legal argv word there (model
    path, served name, proxy script: carried exactly, see above); never run."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    value = value.format(c=CANARY)
    for what, path in NAMED:
        data = json.loads(json.dumps(node.base))
        data["container"]["env_files"] = ["/etc/profile"]
        cur = data
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = f"{value}:/x" if what == "mount" else value
        inv = node.inventory(data)
        plan = CliRunner().invoke(main, ["plan", str(inv), "--json"])
        if plan.exit_code == 0:
            assert what in CARRIED, (what, value)
            continue
        r = CliRunner().invoke(main, ["up", str(inv), "--json", "--skip-checks"])
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        doc = json.loads(r.stdout)
        assert r.exit_code == 2, (what, value, doc)
        assert any(p["field"].startswith(".".join(map(str, path[:2]))) and p["line"] for p in doc["problems"]), doc
    assert not canaries(node)


SHELLY = st.text(alphabet=st.sampled_from(list("$`'\"\\;&|<>(){}[]*?~#!\n\t\r =-_aZ09./:%^,ü模😀\u202e")),
                 min_size=1, max_size=30)


@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=SHELLY)
def test_random_metacharacter_strings_reach_the_node_exactly(node, value):
    values = [f"{value}$(touch {CANARY}){value}", value]
    data, expect = inject(node.base, values, f"{value}`touch {CANARY}`")
    assert cycle(node, data, expect) in (0, 2)
