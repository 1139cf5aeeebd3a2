"""The fake `vllm serve` (orchestrator/sim/runtime/vllm.py) as a user of it sees it: real processes on
loopback addresses, a node folder with a state.json like `deploy sim up` writes, small start-up
times and time factor so the 5-minute / 600-second limits arrive in about a second.

Asserted: exit codes, the exact lines vLLM / vLLM-Ascend / HCCL print, HTTP codes and bodies,
which processes are left (checked in /proc, not by trusting our own kill) and the HBM claims.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.sim.runtime import occupancy

RUNTIME = Path(__file__).resolve().parent.parent / "orchestrator" / "sim" / "runtime"
VLLM = RUNTIME / "vllm.py"
PROXY = RUNTIME / "proxy.py"

# A sitecustomize.py like deploy's socket_env_guard: restores the *_SOCKET_IFNAME variables the
# engine-core spawn drops, from DEPLOY_SOCKET_ENV.
SITECUSTOMIZE = '''import json as _j, os as _o
for _k, _v in _j.loads(_o.environ.get("DEPLOY_SOCKET_ENV") or "{}").items():
    _o.environ.setdefault(_k, _v)
'''


def _subnet() -> str:
    return f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"


class SimNode:
    """A simulated node folder: state.json (hardware truth), runtime/config.json, hccn.conf, a model."""

    def __init__(self, root: Path, name: str, address: str, *, ndev: int = 8, nic: str = "eth0", tls: int = 0,
                 startup_s: float = 0.3, time_factor: float = 0.01, hccn: bool = True, **config):
        self.root, self.name, self.address, self.nic = root, name, address, nic
        self.dir = root / "nodes" / name
        (self.dir / "runtime").mkdir(parents=True)
        (self.dir / "etc").mkdir()
        index = int(address.rsplit(".", 1)[1])
        self.devices = [{"id": d, "npu": d, "chip": 0, "ip": f"10.{d}.{index}.11", "tls_switch": tls,
                         "hbm_total_mb": 65536, "hbm_used_mb": 3380, "processes": []} for d in range(ndev)]
        self.write_state()
        self.hccn = self.dir / "etc" / "hccn.conf"
        if hccn:
            self.hccn.write_text("".join(f"address_{d['id']}={d['ip']}\nnetmask_{d['id']}=255.255.0.0\n"
                                         for d in self.devices))
        self.config = {"startup_s": startup_s, "time_factor": time_factor, "faults": [], **config}
        self.write_config()
        self.model = root / "weights" / "model"
        self.model.mkdir(parents=True, exist_ok=True)
        (self.model / "config.json").write_text('{"model_type": "deepseek_v3"}')
        self.site = root / "site"
        self.site.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE)

    def write_state(self) -> None:
        state = {"name": self.name, "address": self.address, "nic": self.nic, "soc": "a2", "devices": self.devices}
        (self.dir / "state.json").write_text(json.dumps(state))

    def write_config(self) -> None:
        tmp = self.dir / "runtime" / "config.json.tmp"
        tmp.write_text(json.dumps(self.config))
        os.replace(tmp, self.dir / "runtime" / "config.json")

    def set_faults(self, *faults: str) -> None:
        self.config["faults"] = list(faults)
        self.write_config()

    def env(self, guard: bool = True, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOY_SIM", "VLLM_", "ASCEND_RT"))}
        env.update({"DEPLOY_SIM_NODE": str(self.dir), "DEPLOY_SIM_HCCN_CONF": str(self.hccn),
                    "ASCEND_TOOLKIT_HOME": "/usr/local/Ascend/ascend-toolkit/latest",
                    "ATB_HOME_PATH": "/usr/local/Ascend/nnal/atb/latest/atb/cxx_abi_1",
                    "HCCL_IF_IP": self.address, "GLOO_SOCKET_IFNAME": self.nic, "TP_SOCKET_IFNAME": self.nic,
                    "HCCL_SOCKET_IFNAME": self.nic,
                    "DEPLOY_SOCKET_ENV": json.dumps({"GLOO_SOCKET_IFNAME": self.nic, "TP_SOCKET_IFNAME": self.nic,
                                                     "HCCL_SOCKET_IFNAME": self.nic})})
        if guard:
            env["PYTHONPATH"] = str(self.site)
        else:
            env.pop("PYTHONPATH", None)
        env.update(extra)
        return env

    def holders(self, devices: list[int] | None = None) -> list[tuple[int, int, int, str]]:
        return occupancy.holders(self.dir, devices)


class Proc:
    """A program started like deploy starts a rank: its own session and process group, output to a log."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.f = open(log, "wb")
        self.p = subprocess.Popen(argv, env=env, stdout=self.f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        self.pid = self.p.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in {self.log}:\n{self.text()[-3000:]}")

    def wait(self, timeout: float = 15.0) -> int:
        return self.p.wait(timeout=timeout)

    def group_members(self) -> list[int]:
        return group_pids(self.pid)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.f.close()


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                rest = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if rest and rest[0] not in (b"Z", b"X") and int(rest[2]) == pgid:
            out.append(int(entry))
    return out


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


@pytest.fixture
def cluster(tmp_path):
    """Makes SimNodes and starts programs; kills every process group it started at the end."""
    procs: list[Proc] = []
    subnet = _subnet()

    class Cluster:
        root = tmp_path

        def node(self, name: str, index: int, **kw) -> SimNode:
            return SimNode(tmp_path, name, f"{subnet}.{index}", **kw)

        def vllm(self, node: SimNode, *args: str, env: dict[str, str] | None = None, log: str | None = None,
                 **env_extra: str) -> Proc:
            e = env if env is not None else node.env(**env_extra)
            p = Proc([sys.executable, str(VLLM), "serve", str(node.model), "--host", "0.0.0.0", *args], e,
                     tmp_path / (log or f"{node.name}-{len(procs)}.log"))
            procs.append(p)
            return p

        def proxy(self, node: SimNode, *args: str, script: Path = PROXY, **env_extra: str) -> Proc:
            p = Proc([sys.executable, str(script), *args], node.env(**env_extra), tmp_path / f"proxy-{len(procs)}.log")
            procs.append(p)
            return p

    yield Cluster()
    for p in procs:
        p.kill_group()


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(host: str, port: int, path: str, body: dict, timeout: float = 10.0,
              headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://{host}:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def wait_healthy(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_get(host, port, "/health", 1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{host}:{port} never healthy")


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in pids if occupancy.alive(p)]:
            return
        time.sleep(0.05)
    raise AssertionError(f"still alive: {[p for p in pids if occupancy.alive(p)]}")


def kv(role: str, port: int, engine: str, p=(1, 1), d=(1, 1), connector: str = "MooncakeConnectorV1") -> str:
    return json.dumps({"kv_connector": connector, "kv_role": role, "kv_port": str(port), "engine_id": engine,
                       "kv_connector_extra_config": {"prefill": {"dp_size": p[0], "tp_size": p[1]},
                                                     "decode": {"dp_size": d[0], "tp_size": d[1]}}})


# -------------------------------------------------------------------------------------------------
# command line and start-up rejections


def test_unknown_flag_is_rejected_like_vllm_argparse(cluster):
    n = cluster.node("n0", 1)
    p = cluster.vllm(n, "--port", "7100", "--bogus-flag", "1")
    assert p.wait() == 2
    text = p.text()
    assert "usage: vllm serve [model_tag] [options]" in text
    assert "vllm serve: error: unrecognized arguments: --bogus-flag 1" in text


def test_every_plan_of_the_shipped_inventories_is_accepted():
    """What `deploy plan` emits for inventories/*.yaml parses and passes vLLM's serve-time rules (a
    seed whose kv_connector_extra_config disagrees with its sizes would be refused here), and the
    proxy line parses too."""
    sys.path.insert(0, str(RUNTIME))
    import proxy as fake_proxy
    import vllm_args
    repo = RUNTIME.parent.parent.parent
    seen = 0
    for inv in sorted((repo / "inventories").glob("*.yaml")):
        out = subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(inv), "--json"], cwd=repo,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
        assert out.returncode == 0, out.stderr
        plan = json.loads(out.stdout)
        for rank in plan["ranks"]:
            assert rank["argv"][:2] == ["vllm", "serve"]
            args = vllm_args.build_parser().parse_args(vllm_args.normalize(rank["argv"][2:]))
            vllm_args.resolve(args, rank["env"])  # the env-driven DP reads its place from there
            seen += 1
        if plan.get("proxy"):
            argv = plan["proxy"]["argv"]
            layerwise = "layerwise" in argv[1]
            assert not isinstance(fake_proxy.parse_args(argv[2:], layerwise, fake_proxy.Log("t")), int)
    assert seen >= 10


@pytest.mark.parametrize("argv, line", [
    (["--data-parallel-size", "16", "--data-parallel-rank", "0", "--data-parallel-address", "{a}",
      "--data-parallel-rpc-port", "13000", "--kv-transfer-config", kv("kv_consumer", 30200, "2", d=(32, 1))],
     "ValueError: KV transfer 'decode' config has a conflicting data parallel size. Expected 16, but got 32."),
    (["--tensor-parallel-size", "2", "--kv-transfer-config", kv("kv_producer", 30000, "0", p=(1, 8))],
     "ValueError: KV transfer 'prefill' config has a conflicting tensor parallel size. Expected 2, but got 8."),
    (["--headless", "--data-parallel-size", "4", "--data-parallel-size-local", "2", "--data-parallel-start-rank",
      "2", "--data-parallel-hybrid-lb"],
     "ValueError: data_parallel_hybrid_lb is not applicable in headless mode"),
    (["--data-parallel-size", "4", "--data-parallel-rank", "1", "--data-parallel-start-rank", "0"],
     "ValueError: Cannot use more than one data parallel load balancing mode. Choose one of: "
     "--data-parallel-multi-port-external-lb, --data-parallel-external-lb (or --data-parallel-rank), "
     "--data-parallel-hybrid-lb (or --data-parallel-start-rank)."),
    (["--headless", "--api-server-count", "2", "--data-parallel-size", "2"],
     "ValueError: --api-server-count=2 cannot be used with --headless (no API servers are started in headless "
     "mode)."),
])
def test_vllm_rejections_with_the_real_messages(cluster, argv, line):
    n = cluster.node("n0", 1)
    p = cluster.vllm(n, "--port", "7100", *[a.replace("{a}", n.address) for a in argv])
    assert p.wait() == 1
    assert line in p.text()
    assert not n.holders()


def test_mooncake_prefill_tp_below_decode_tp_fails_in_the_engine(cluster):
    n = cluster.node("n0", 1)
    q = cluster.vllm(n, "--port", "7101", "-tp", "2", "--kv-transfer-config",
                     kv("kv_consumer", 30100, "1", p=(1, 1), d=(1, 2)))
    assert q.wait() == 1
    assert "ValueError: prefill_tp_size: 1 must be greater than or equal to the decode_tp_size: 2" in q.text()
    assert "RuntimeError: Engine core initialization failed." in q.text()
    assert not n.holders()


def test_visible_devices_the_container_lacks(cluster, tmp_path):
    n = cluster.node("n0", 1)
    container = tmp_path / "containers" / "vllm-x"
    container.mkdir(parents=True)
    (container / "config.json").write_text(json.dumps([{"HostConfig": {"Devices": [
        {"PathOnHost": "/dev/davinci4", "PathInContainer": "/dev/davinci4", "CgroupPermissions": "rwm"},
        {"PathOnHost": "/dev/davinci5", "PathInContainer": "/dev/davinci5", "CgroupPermissions": "rwm"}],
        "Binds": ["/usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/", "/etc/hccn.conf:/etc/hccn.conf"]}}]))
    env = n.env(DEPLOY_SIM_CONTAINER=str(container), ASCEND_RT_VISIBLE_DEVICES="4")
    env["DEPLOY_SIM_HCCN_CONF"] = str(n.hccn)
    p = Proc([sys.executable, str(VLLM), "serve", str(n.model), "--port", "7100"], env, tmp_path / "v.log")
    try:
        assert p.wait() == 1
        text = p.text()
        assert "set ASCEND_RT_VISIBLE_DEVICES:[4] error, input data rang[0-2)" in text
        assert "RuntimeError: Engine core initialization failed. See root cause above." in text
    finally:
        p.kill_group()
    # the container's logical device 1 is its second device, /dev/davinci5
    env["ASCEND_RT_VISIBLE_DEVICES"] = "1"
    p = Proc([sys.executable, str(VLLM), "serve", str(n.model), "--host", "0.0.0.0", "--port", "7100"], env,
             tmp_path / "v2.log")
    try:
        wait_healthy(n.address, 7100)
        assert [h[0] for h in n.holders()] == [5]
    finally:
        p.kill_group()


def test_port_already_bound(cluster):
    n = cluster.node("n0", 1)
    s = socket.socket()
    s.bind((n.address, 7100))
    s.listen(1)
    try:
        p = cluster.vllm(n, "--port", "7100")
        assert p.wait() == 1
        assert "OSError: [Errno 98] Address already in use" in p.text()
    finally:
        s.close()


def test_missing_cann_environment_and_model_path(cluster):
    n = cluster.node("n0", 1)
    env = n.env()
    del env["ASCEND_TOOLKIT_HOME"]
    p = cluster.vllm(n, "--port", "7100", env=env)
    assert p.wait() == 1
    assert "ImportError: libhccl.so: cannot open shared object file: No such file or directory" in p.text()
    assert "RuntimeError: Failed to load the backend extension: torch_npu." in p.text()
    env = n.env()
    p = Proc([sys.executable, str(VLLM), "serve", "/weights/absent-model", "--port", "7100"], env,
             cluster.root / "m.log")
    try:
        assert p.wait() == 1
        assert ("huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
                "'namespace/repo_name': '/weights/absent-model'. Use `repo_type` argument if needed.") in p.text()
    finally:
        p.kill_group()


# -------------------------------------------------------------------------------------------------
# one rank: start-up, serving, signals, HBM


def test_single_rank_binds_early_serves_and_stops_cleanly(cluster):
    n = cluster.node("n0", 1, startup_s=1.5)
    p = cluster.vllm(n, "--port", "7100", "--served-model-name", "ds", "--tensor-parallel-size", "2",
                     "--gpu-memory-utilization", "0.9", ASCEND_RT_VISIBLE_DEVICES="2,3")
    p.wait_log("non-default args")
    time.sleep(0.3)
    assert refused(n.address, 7100), "connections must be refused while loading"
    with pytest.raises(OSError):  # bound: another process cannot take the port meanwhile
        s = socket.socket()
        try:
            s.bind((n.address, 7100))
        finally:
            s.close()
    wait_healthy(n.address, 7100)
    text = p.text()
    assert "Starting vLLM API server 0 on http://0.0.0.0:7100" in text
    assert "Application startup complete." in text
    members = p.group_members()
    engines = [m for m in members if m != p.pid]
    assert len(engines) == 1 and comm(engines[0]) == "VLLM::EngineCor"
    held = n.holders()
    assert [(d, pid) for d, pid, _mb, _name in held] == [(2, engines[0]), (3, engines[0])]
    assert held[0][2] == int((65536 - 3380) * 0.9) and held[0][3] == "VLLM::EngineCor"
    status, body = http_get(n.address, 7100, "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["ds"]
    status, body = http_post(n.address, 7100, "/v1/completions", {"model": "ds", "prompt": "hello", "max_tokens": 4})
    first = json.loads(body)
    assert status == 200 and first["usage"]["completion_tokens"] == 4
    again = json.loads(http_post(n.address, 7100, "/v1/completions",
                                 {"model": "ds", "prompt": "hello", "max_tokens": 4})[1])
    assert again["choices"][0]["text"] == first["choices"][0]["text"] != ""
    status, body = http_post(n.address, 7100, "/v1/completions", {"model": "other", "prompt": "x"})
    assert status == 404 and json.loads(body)["error"]["message"] == "The model `other` does not exist."
    status, body = http_get(n.address, 7100, "/metrics")
    metrics = body.decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f'{name}{{engine="0",model_name="ds"}} 0.0' in metrics
    assert 'vllm:generation_tokens_total{engine="0",model_name="ds"} 8.0' in metrics
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait() == 0
    wait_gone(members)
    assert not n.holders()
    assert refused(n.address, 7100)


def test_openai_client_streamed_and_not(cluster):
    openai = pytest.importorskip("openai")
    n = cluster.node("n0", 1)
    cluster.vllm(n, "--port", "7100", "--served-model-name", "ds", "--api-key", "sk-test")
    wait_healthy(n.address, 7100)
    assert http_get(n.address, 7100, "/v1/models")[0] == 401
    client = openai.OpenAI(base_url=f"http://{n.address}:7100/v1", api_key="sk-test", max_retries=0, timeout=10)
    assert [m.id for m in client.models.list()] == ["ds"]
    whole = client.completions.create(model="ds", prompt="The quick brown fox", max_tokens=6)
    parts = list(client.completions.create(model="ds", prompt="The quick brown fox", max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in parts) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason == "length" and whole.usage.completion_tokens == 6
    chat = client.chat.completions.create(model="ds", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    stream = client.chat.completions.create(model="ds", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 5
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://{n.address}:7100/v1", api_key="wrong", max_retries=0).models.list()


def test_sigkill_of_the_rank_leaves_an_orphan_holding_hbm_and_a_new_rank_is_refused(cluster):
    n = cluster.node("n0", 1)
    p = cluster.vllm(n, "--port", "7100", "--gpu-memory-utilization", "0.9", ASCEND_RT_VISIBLE_DEVICES="0")
    wait_healthy(n.address, 7100)
    engine = [m for m in p.group_members() if m != p.pid][0]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    time.sleep(0.5)
    assert occupancy.alive(engine) and comm(engine) == "VLLM::EngineCor"
    assert [(d, pid) for d, pid, _mb, _name in n.holders([0])] == [(0, engine)]
    assert refused(n.address, 7100), "the API server's port is freed at once"
    again = cluster.vllm(n, "--port", "7100", "--gpu-memory-utilization", "0.9", ASCEND_RT_VISIBLE_DEVICES="0")
    assert again.wait() == 1
    assert ("ValueError: Free memory on device (6.07/60.7 GiB) on startup is less than desired GPU memory "
            "utilization (0.9, 54.63 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
            "processes.") in again.text()
    os.killpg(p.pid, signal.SIGKILL)  # teardown by process group reaches the orphan
    wait_gone([engine])
    assert not n.holders([0])


def test_orphan_of_a_dp_rank_refuses_its_devices_when_the_group_is_restarted(cluster):
    """A DP rank reaches its device init only once its whole DP group has formed (vLLM inits the DP
    group before the workers): restarting the group, not the one rank, meets the orphan's HBM."""
    n = cluster.node("p0", 1)

    def rank(r: int, log: str) -> Proc:
        return cluster.vllm(n, "--port", str(7100 + r), "--data-parallel-size", "2", "--data-parallel-rank", str(r),
                            "--data-parallel-address", n.address, "--data-parallel-rpc-port", "12321", "-tp", "4",
                            log=log, ASCEND_RT_VISIBLE_DEVICES="0,1,2,3" if r == 0 else "4,5,6,7")
    r0, r1 = rank(0, "r0.log"), rank(1, "r1.log")
    wait_healthy(n.address, 7100)
    wait_healthy(n.address, 7101)
    engine0 = [p for p in r0.group_members() if comm(p) == "VLLM::EngineCor"]
    os.kill(r0.pid, signal.SIGKILL)
    time.sleep(1.0)
    assert {pid for _d, pid, _mb, _n in n.holders([0, 1, 2, 3])} == set(engine0), "the orphan keeps rank 0's HBM"
    assert http_get(n.address, 7101, "/health")[0] == 200, "rank 1 does not notice"
    alone = rank(0, "r0-alone.log")  # rank 0 restarted alone: its DP group cannot form (rank 1 is in the old one)
    assert alone.wait() == 1
    assert "TimeoutError: Timed out waiting for engine core processes to start." in alone.text()
    assert "Free memory" not in alone.text()
    os.kill(r1.pid, signal.SIGTERM)  # the whole group, then: stop rank 1, start both
    assert r1.wait() == 0
    again0, again1 = rank(0, "r0b.log"), rank(1, "r1b.log")
    assert again0.wait() == 1
    assert "ValueError: Free memory on device (6.07/60.7 GiB) on startup is less than desired GPU memory " \
           "utilization (0.9, 54.63 GiB)." in again0.text()
    assert "Free memory" not in again1.text()


def test_hardware_held_hbm_refuses_a_rank(cluster):
    n = cluster.node("n0", 1)
    n.devices[0]["processes"] = [{"pid": os.getpid(), "name": "VLLM::EngineCore", "memory_mb": 60000}]
    n.devices[0]["hbm_used_mb"] = 63380
    n.write_state()
    p = cluster.vllm(n, "--port", "7100", ASCEND_RT_VISIBLE_DEVICES="0")
    assert p.wait() == 1
    assert "ValueError: Free memory on device (2.11/60.7 GiB) on startup is less than desired GPU memory " \
           "utilization (0.9, 54.63 GiB)." in p.text()


# -------------------------------------------------------------------------------------------------
# DP groups over TCP


def _ext_rank(cluster, node, rank, size, leader, port, rpc, **env):
    return cluster.vllm(node, "--port", str(port), "--data-parallel-size", str(size), "--data-parallel-rank",
                        str(rank), "--data-parallel-address", leader.address, "--data-parallel-rpc-port", str(rpc),
                        "--served-model-name", "ds", log=f"{node.name}-r{rank}.log",
                        ASCEND_RT_VISIBLE_DEVICES=str(rank % 8), **env)


def test_external_dp_group_nobody_healthy_until_all_joined(cluster):
    a, b = cluster.node("d0", 1), cluster.node("d1", 2)
    r1 = _ext_rank(cluster, b, 1, 2, a, 7101, 13000)
    r1.wait_log("non-default args")
    time.sleep(1.0)
    assert refused(b.address, 7101)
    assert not b.holders(), "waiting in the DP group: no device initialised yet"
    r0 = _ext_rank(cluster, a, 0, 2, a, 7100, 13000)
    wait_healthy(a.address, 7100)
    wait_healthy(b.address, 7101)
    assert r1.p.poll() is None and r0.p.poll() is None
    assert [d for d, *_ in a.holders()] == [0] and [d for d, *_ in b.holders()] == [1]
    assert "Started DP Coordinator process (PID: " in r0.text()
    front = os.path.basename(sys.executable)[:15]  # the front end keeps the interpreter's name (python3, python)
    assert sorted(comm(p) for p in r0.group_members()) == sorted(["VLLM::DPCoordin", "VLLM::EngineCor", front])
    members = r0.group_members() + r1.group_members()
    for r in (r0, r1):
        os.kill(r.pid, signal.SIGTERM)
        assert r.wait() == 0
    wait_gone(members)
    assert not a.holders() and not b.holders()


def test_env_driven_dp_of_the_large_ep_guide(cluster):
    n = cluster.node("n0", 1)
    env = {"VLLM_DP_SIZE": "2", "VLLM_DP_MASTER_IP": n.address, "VLLM_DP_MASTER_PORT": "13500",
           "VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED": "1"}
    r1 = cluster.vllm(n, "--port", "7101", VLLM_DP_RANK="1", VLLM_DP_RANK_LOCAL="1", ASCEND_RT_VISIBLE_DEVICES="1",
                      **env)
    time.sleep(0.8)
    assert refused(n.address, 7101)
    cluster.vllm(n, "--port", "7100", VLLM_DP_RANK="0", VLLM_DP_RANK_LOCAL="0", ASCEND_RT_VISIBLE_DEVICES="0", **env)
    wait_healthy(n.address, 7100)
    wait_healthy(n.address, 7101)
    assert r1.p.poll() is None


def test_a_rank_restarted_alone_cannot_rejoin_its_formed_group(cluster):
    a, b = cluster.node("d0", 1, time_factor=1.0), cluster.node("d1", 2, time_factor=1.0)
    _ext_rank(cluster, a, 0, 2, a, 7100, 13000)
    r1 = _ext_rank(cluster, b, 1, 2, a, 7101, 13000)
    wait_healthy(b.address, 7101, timeout=60)  # the group forms at the normal pace (a loaded machine too)
    r1.kill_group()
    b.config["time_factor"] = 0.003  # only the restarted rank gets vLLM's limits scaled down
    b.write_config()
    again = _ext_rank(cluster, b, 1, 2, a, 7101, 13000)
    assert again.wait(timeout=15) == 1
    assert "TimeoutError: Timed out waiting for engine core processes to start." in again.text()
    assert "Starting vLLM API server" not in again.text()


def test_missing_rank_hangs_then_front_end_times_out_and_engine_keeps_running(cluster):
    a = cluster.node("d0", 1, time_factor=0.002)
    r0 = _ext_rank(cluster, a, 0, 2, a, 7100, 13000, VLLM_ENGINE_READY_TIMEOUT_S="600")
    text = r0.wait_log("remote core engine proc(s) to start.")
    assert "Waiting for 1 local, 1 remote core engine proc(s) to start." in text
    assert r0.wait(timeout=15) == 1
    assert ("TimeoutError: Timed out waiting for engine core processes to start. This is often caused by slow weight "
            "loading for large models. Waited 600s (configured by VLLM_ENGINE_READY_TIMEOUT_S). To increase the "
            "timeout, set the environment variable: VLLM_ENGINE_READY_TIMEOUT_S=<seconds>") in r0.text()
    left = sorted(comm(p) for p in group_pids(r0.pid))
    assert left == ["VLLM::DPCoordin", "VLLM::EngineCor"], "engine core and DP coordinator outlive the front end"


def test_rank_without_front_end_fails_the_handshake_after_5_minutes(cluster):
    a, b = cluster.node("d0", 1), cluster.node("d1", 2, time_factor=0.005)
    r1 = _ext_rank(cluster, b, 1, 2, a, 7101, 13000)
    assert r1.wait(timeout=15) == 1
    text = r1.text()
    assert "RuntimeError: Did not receive response from front-end process within 5 minutes" in text
    assert "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): " \
           "{'EngineCore_DP1': 1}" in text
    wait_gone(group_pids(r1.pid))


def test_tls_mismatch_gives_ei0016_on_every_node(cluster):
    a, b = cluster.node("d0", 1), cluster.node("d1", 2, tls=1)
    r0 = _ext_rank(cluster, a, 0, 2, a, 7100, 13000)
    r1 = _ext_rank(cluster, b, 1, 2, a, 7101, 13000)
    assert r1.wait() == 1 and r0.wait() == 1
    for r, mine in ((r0, "Disable"), (r1, "Enable")):
        text = r.text()
        assert f'Value {mine} for config "tls" is invalid. Expected Value:"All ranks are consistent. Current ' \
               f'status : rankList for enabled tls:[{b.address}/1]; rankList for disabled tls:[{a.address}/0]; ' \
               'rankList for query failure tls:".' in text
        assert "EI0016: [PID: " in text
    assert not a.holders() and not b.holders()


def test_hccn_conf_without_the_device_ips_gives_the_ranktable_line_and_garbage(cluster):
    a, b = cluster.node("d0", 1), cluster.node("d1", 2, hccn=False)
    r0 = _ext_rank(cluster, a, 0, 2, a, 7100, 13000)
    r1 = _ext_rank(cluster, b, 1, 2, a, 7101, 13000)
    wait_healthy(a.address, 7100)
    wait_healthy(b.address, 7101)
    line = "[RanktablCheck] 'device ip' is not set correctly, must be set when multi Server or HCCL INTRA ROCE " \
           "ENABLE enabled"
    assert line in r1.text() and line not in r0.text()
    good = json.loads(http_post(a.address, 7100, "/v1/completions", {"prompt": "hi", "max_tokens": 4})[1])
    bad = json.loads(http_post(b.address, 7101, "/v1/completions", {"prompt": "hi", "max_tokens": 4})[1])
    assert bad["choices"][0]["text"] == " ? ! ! !" != good["choices"][0]["text"]


def test_engine_cores_lose_socket_ifname_without_sitecustomize(cluster):
    a, b = cluster.node("d0", 1), cluster.node("d1", 2)
    e0, e1 = a.env(guard=False), b.env(guard=False)
    r0 = cluster.vllm(a, "--port", "7100", "--data-parallel-size", "2", "--data-parallel-rank", "0",
                      "--data-parallel-address", a.address, "--data-parallel-rpc-port", "13000", env=e0,
                      log="nog-0.log")
    r1 = cluster.vllm(b, "--port", "7101", "--data-parallel-size", "2", "--data-parallel-rank", "1",
                      "--data-parallel-address", a.address, "--data-parallel-rpc-port", "13000", env=e1,
                      log="nog-1.log")
    assert r0.wait() == 1 and r1.wait() == 1
    for r in (r0, r1):
        text = r.text()
        assert "Unable to resolve hostname to a (local) address. Using the loopback address as fallback. Manually " \
               "set the network interface to bind to with GLOO_SOCKET_IFNAME." in text
        assert "RuntimeError: Gloo connectFullMesh failed with" in text and "remote=[127.0.0.1]" in text


def test_gloo_socket_ifname_naming_another_nic(cluster):
    a, b = cluster.node("d0", 1), cluster.node("d1", 2)
    env = b.env(DEPLOY_SOCKET_ENV=json.dumps({"GLOO_SOCKET_IFNAME": "eth9"}))
    _ext_rank(cluster, a, 0, 2, a, 7100, 13000)
    r1 = cluster.vllm(b, "--port", "7101", "--data-parallel-size", "2", "--data-parallel-rank", "1",
                      "--data-parallel-address", a.address, "--data-parallel-rpc-port", "13000", env=env)
    assert r1.wait() == 1
    assert "ifa != nullptr. Unable to find address for: eth9" in r1.text()


def test_hccl_if_ip_not_of_the_node(cluster):
    a, b = cluster.node("d0", 1), cluster.node("d1", 2)
    r0 = _ext_rank(cluster, a, 0, 2, a, 7100, 13000)
    r1 = _ext_rank(cluster, b, 1, 2, a, 7101, 13000, HCCL_IF_IP=a.address)
    assert r0.wait() == 1 and r1.wait() == 1
    assert f"Value {a.address} for environment variable HCCL_IF_IP is invalid." in r1.text()
    assert "topo exchange agent get socket timeout! timeout[120]" in r0.text()


def test_internal_dp_headless_loops_on_tcpstore_when_its_master_dies(cluster):
    a, b = cluster.node("n0", 1), cluster.node("n1", 2)
    common = ["--data-parallel-size", "2", "--data-parallel-size-local", "1", "--data-parallel-address", a.address,
              "--data-parallel-rpc-port", "13389", "--tensor-parallel-size", "4"]
    head = cluster.vllm(a, "--port", "8004", *common, log="head.log")
    worker = cluster.vllm(b, "--headless", "--data-parallel-start-rank", "1", *common, log="headless.log")
    wait_healthy(a.address, 8004)
    assert ("Launching 1 data parallel engine(s) in headless mode, with head node address "
            f"tcp://{a.address}:13389.") in worker.text()
    assert [d for d, *_ in b.holders()] == [0, 1, 2, 3]
    head.kill_group()
    worker.wait_log("Connection was likely closed. Did the remote server shutdown or crash?")
    time.sleep(1.5)
    assert worker.text().count("[c10d] recvValue failed on SocketImpl") >= 2
    assert worker.p.poll() is None and len(b.holders()) == 4, "stranded, still holding its devices"


def test_nnodes_head_waits_for_its_headless_node(cluster):
    a, b = cluster.node("p0", 1, ndev=16), cluster.node("p1", 2, ndev=16)
    common = ["--nnodes", "2", "--master-addr", a.address, "--master-port", "7001", "--tensor-parallel-size", "16",
              "--prefill-context-parallel-size", "2"]
    head = cluster.vllm(a, "--port", "8004", "--node-rank", "0", *common, log="head.log")
    time.sleep(1.0)
    assert refused(a.address, 8004)
    worker = cluster.vllm(b, "--headless", "--node-rank", "1", *common, log="worker.log")
    wait_healthy(a.address, 8004)
    assert f"headless multiproc executor, with head node address {a.address}:7001" in worker.text()
    assert len(a.holders()) == 16 and len(b.holders()) == 16
    assert head.p.poll() is None


# -------------------------------------------------------------------------------------------------
# P/D and Mooncake


def test_prefill_returns_kv_transfer_params_and_decode_requires_them(cluster):
    n = cluster.node("n0", 1)
    cluster.vllm(n, "--port", "7100", "--kv-transfer-config", kv("kv_producer", 30000, "0"),
                 ASCEND_RT_VISIBLE_DEVICES="0")
    cluster.vllm(n, "--port", "7200", "--kv-transfer-config", kv("kv_consumer", 30100, "1"),
                 ASCEND_RT_VISIBLE_DEVICES="1")
    wait_healthy(n.address, 7100)
    wait_healthy(n.address, 7200)
    status, body = http_post(n.address, 7100, "/v1/completions", {
        "prompt": "hello", "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True,
                                                                    "do_remote_prefill": False}})
    params = json.loads(body)["kv_transfer_params"]
    assert status == 200 and params["do_remote_prefill"] is True and params["remote_engine_id"] == "0"
    assert params["remote_host"] == n.address and params["remote_port"] == 30000
    assert http_post(n.address, 7200, "/v1/completions", {"prompt": "hello", "max_tokens": 3})[0] == 400
    status, body = http_post(n.address, 7200, "/v1/completions",
                             {"prompt": "hello", "max_tokens": 3, "kv_transfer_params": params})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3


def test_mooncake_side_channel_ranges_that_overlap(cluster):
    n = cluster.node("n0", 1)
    a = cluster.vllm(n, "--port", "7100", "-tp", "2", "--kv-transfer-config", kv("kv_producer", 30000, "0", p=(1, 2)),
                     ASCEND_RT_VISIBLE_DEVICES="0,1")
    wait_healthy(n.address, 7100)
    assert f"KVCacheSendingThread started listening on path: tcp://{n.address}:30001" in a.text()
    b = cluster.vllm(n, "--port", "7101", "-tp", "2", "--kv-transfer-config", kv("kv_producer", 30001, "1", p=(1, 2)),
                     ASCEND_RT_VISIBLE_DEVICES="2,3")
    wait_healthy(n.address, 7101)
    text = b.text()
    assert f"zmq.error.ZMQError: Address already in use (addr='tcp://{n.address}:30001')" in text
    assert f"KVCacheSendingThread started listening on path: tcp://{n.address}:30002" in text
    # a decode handed b's kv_transfer_params reaches a's listener on b's port: the transfer fails
    d = cluster.vllm(n, "--port", "7200", "--kv-transfer-config", kv("kv_consumer", 30100, "2", p=(1, 2)),
                     ASCEND_RT_VISIBLE_DEVICES="4")
    wait_healthy(n.address, 7200)
    params = json.loads(http_post(n.address, 7101, "/v1/completions", {
        "prompt": "x", "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}})[1])["kv_transfer_params"]
    assert params["remote_port"] == 30001 and params["remote_engine_id"] == "1"
    status, _ = http_post(n.address, 7200, "/v1/completions", {"prompt": "x", "max_tokens": 2,
                                                               "kv_transfer_params": params})
    assert status == 200
    assert f"Failed to connect to target: {n.address}:30001, status: 103900" in d.text()
    assert "Mooncake transfer failed for request" in d.text()


# -------------------------------------------------------------------------------------------------
# runtime faults


def test_fault_crash_at_start(cluster):
    n = cluster.node("n0", 1)
    n.set_faults("crash-at-start")
    p = cluster.vllm(n, "--port", "7100")
    assert p.wait() == 1
    assert "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): " \
           "{'EngineCore_DP0': 1}" in p.text()
    wait_gone(group_pids(p.pid))


def test_fault_crash_after_seconds(cluster):
    n = cluster.node("n0", 1)
    n.set_faults("crash-after:1")
    p = cluster.vllm(n, "--port", "7100")
    wait_healthy(n.address, 7100)
    assert p.wait() == 1
    wait_gone(group_pids(p.pid))
    assert not n.holders()


def test_fault_slow_start_adds_to_the_load_time(cluster):
    n = cluster.node("n0", 1, startup_s=0.2)
    n.set_faults("slow-start:1.5")
    p = cluster.vllm(n, "--port", "7100")
    wait_healthy(n.address, 7100)
    assert "Loading weights took 1.70 seconds" in p.text()


def test_fault_never_ready_times_out(cluster):
    n = cluster.node("n0", 1, time_factor=0.002)
    n.set_faults("never-ready")
    p = cluster.vllm(n, "--port", "7100")
    time.sleep(0.5)
    assert refused(n.address, 7100)
    assert p.wait() == 1
    assert "TimeoutError: Timed out waiting for engine core processes to start." in p.text()


def test_fault_engine_death_while_running(cluster):
    n = cluster.node("n0", 1)
    p = cluster.vllm(n, "--port", "7100", VLLM_KEEP_ALIVE_ON_ENGINE_DEATH="1")
    wait_healthy(n.address, 7100)
    n.set_faults("engine-death")
    deadline = time.monotonic() + 10
    while http_get(n.address, 7100, "/health")[0] != 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause." in p.text()
    # the engine sends its death, then releases its devices and exits (as vLLM's core.py does):
    # the front end can answer 503 a moment before the engine process is gone
    while group_pids(p.pid) != [p.pid]:
        assert time.monotonic() < deadline, f"the engine process outlived its death: {group_pids(p.pid)}"
        time.sleep(0.05)
    assert p.p.poll() is None, "process alive, engine gone"
    assert not n.holders()
    status, _ = http_post(n.address, 7100, "/v1/completions", {"prompt": "x"})
    assert status == 500


def test_engine_death_without_keep_alive_exits_after_the_watchdog(cluster):
    n = cluster.node("n0", 1)
    p = cluster.vllm(n, "--port", "7100")
    wait_healthy(n.address, 7100)
    n.set_faults("engine-death")
    assert p.wait(timeout=15) == 1
    assert refused(n.address, 7100)


def _llmdd_rank(cluster, node, table_path, **env):
    kv = {"kv_connector": "LLMDataDistCMgrConnector", "kv_role": "kv_producer", "kv_port": "20001",
          "engine_id": "0", "kv_connector_extra_config": {"prefill": {"dp_size": 1, "tp_size": 1},
                                                          "decode": {"dp_size": 1, "tp_size": 1}}}
    return cluster.vllm(node, "--port", "7100", "--kv-transfer-config", json.dumps(kv),
                        DISAGGREGATED_PREFILL_RANK_TABLE_PATH=str(table_path), ASCEND_RT_VISIBLE_DEVICES="0", **env)


def _table(node, device_ip, server_count="1"):
    return {"version": "1.2", "server_count": server_count, "status": "completed",
            "prefill_device_list": [{"server_id": node.address, "device_id": "0", "device_ip": device_ip,
                                     "cluster_id": "1"}], "decode_device_list": []}


def test_llmdatadist_rank_table_is_read_like_the_connector(cluster, tmp_path):
    """The fake reads the P/D rank table at start-up as the LLMDataDist connector does: a table
    that lacks this server's device (or has its wrong IP), or whose server_count disagrees, fails
    with the connector's line; deploy's generated table (tests/test_up_sim large-EP) passes."""
    n = cluster.node("p0", 1)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_table(n, n.devices[0]["ip"])))
    ok = _llmdd_rank(cluster, n, good)
    wait_healthy(n.address, 7100)
    ok.kill_group()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_table(n, "10.99.99.99")))
    r = _llmdd_rank(cluster, n, wrong)
    assert r.wait() == 1
    assert f"Can't read the target server_id {n.address} and device_rank 0 from rank table" in r.text()
    count = tmp_path / "count.json"
    count.write_text(json.dumps(_table(n, n.devices[0]["ip"], server_count="2")))
    r = _llmdd_rank(cluster, n, count)
    assert r.wait() == 1
    assert "EI0004: Failed to parse the ranktable file" in r.text() and "server_count" in r.text()
    r = _llmdd_rank(cluster, n, tmp_path / "absent.json")
    assert r.wait() == 1 and "No such file or directory" in r.text()
