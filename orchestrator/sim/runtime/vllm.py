"""The fake `vllm serve` of a simulated vLLM-Ascend container (stdlib only, python3.11).

It behaves where an orchestrator can get it wrong (docs/simulator-runtime.md has every rule and the
source of every line it prints):

- parses the serve flags deploy and the seed guides use and rejects what vLLM / vLLM-Ascend reject,
  with their messages (vllm_args.py); checks the CANN environment, the driver mount, the model path;
- binds its HTTP port at once (--host 0.0.0.0 means the simulated node's own address, never the real
  wildcard: every simulated node shares this machine) but listens only when ready, so connects are
  refused while it loads; logs `Starting vLLM API server 0 on http://...` and
  `Application startup complete.`;
- spawns one VLLM::EngineCore child per local DP rank (vllm_engine.py) in its own process group; a
  DP group meets over real TCP on --data-parallel-address:--data-parallel-rpc-port (nnodes:
  --master-addr:--master-port, vllm_rdzv.py), and nobody is ready until the whole group is; the
  front end gives up after VLLM_ENGINE_READY_TIMEOUT_S x time_factor and leaves its engines running;
- serves /health (503 once its engine died, then exits after the 5 s watchdog unless
  VLLM_KEEP_ALIVE_ON_ENGINE_DEATH), /v1/models, /v1/completions, /v1/chat/completions (JSON or SSE),
  /metrics; P/D: a producer returns kv_transfer_params, a consumer requires them;
- runtime faults from the node's runtime/config.json: crash-at-start, crash-after:N, never-ready,
  master-unreachable (the group master it hosts answers only its own engines),
  slow-start:S, engine-death (also while running);
- SIGTERM/SIGINT: graceful (engines stopped, claims released, ports closed, exit 0). SIGKILL of this
  process alone leaves its engines running and holding their HBM, as real vLLM does (vllm#55510).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, _HERE)  # the sibling modules: DIR/runtime/ on a node, this package in tests
if os.environ.get("DEPLOY_SIM_ROOT"):  # a copy or stub elsewhere (the image's proxy path) finds them there
    sys.path.append(os.path.join(os.environ["DEPLOY_SIM_ROOT"], "runtime"))

import vllm_args  # noqa: E402
import vllm_http as http  # noqa: E402
import vllm_openai as oai  # noqa: E402
from vllm_node import VLLM_VERSION, Log, Node, parse_visible, plog_time, print_traceback  # noqa: E402
from vllm_rdzv import Rendezvous  # noqa: E402

ENGINE_PY = os.path.join(os.path.dirname(os.path.realpath(vllm_args.__file__)), "vllm_engine.py")
_API = "/vllm-workspace/vllm/vllm/entrypoints/openai/api_server.py"
_UTILS = "/vllm-workspace/vllm/vllm/v1/engine/utils.py"
_CLIENT = "/vllm-workspace/vllm/vllm/v1/engine/core_client.py"
_TORCH = "/usr/local/python3.11.14/lib/python3.11/site-packages/torch/__init__.py"
_STRIPPED_ENV = ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME")
# rank 0's VLLM::DPCoordinator process: idle here (the rendezvous stays in the front end), but a
# process of the rank's group that outlives a SIGKILL of the front end like the engine cores
_COORDINATOR = """import signal, sys
try:
    open("/proc/self/comm", "w").write("VLLM::DPCoordinator"[:15])
except OSError:
    pass
def _stop(*_):
    sys.exit(0)
signal.signal(signal.SIGTERM, _stop)
signal.signal(signal.SIGINT, _stop)
while True:
    signal.pause()
"""


def _top() -> list[tuple[str, int, str, str]]:
    return [("/usr/local/python3.11.14/bin/vllm", 8, "<module>", "sys.exit(main())"),
            ("/vllm-workspace/vllm/vllm/entrypoints/cli/main.py", 73, "main", "args.dispatch_function(args)")]


def _max_model_len(text: str | None) -> int:
    if not text:
        return 32768
    t = text.strip()
    mult = {"k": 1000, "K": 1024, "m": 1_000_000, "M": 1 << 20}.get(t[-1:], 1)
    return int(float(t[:-1] if mult != 1 else t) * mult)


class Frontend:
    def __init__(self, args, argv: list[str]):
        self.args = args
        self.argv = argv
        self.env = dict(os.environ)
        self.pid = os.getpid()
        self.node = Node()
        self.headless = bool(args.headless)
        self.log = Log("" if self.headless else f"(APIServer pid={self.pid}) ")
        self.started = time.monotonic()
        self.tf = self.node.time_factor
        self.children: list[dict] = []
        self.coordinator: subprocess.Popen | None = None
        self.orphans = False
        self.rdzv: Rendezvous | None = None
        self.sock: socket.socket | None = None
        self.server: http.Server | None = None
        self.ready = False
        self.dead = False
        self.garbage = False
        self.stop: asyncio.Event | None = None  # made in main(), on the running loop
        self.exit_code = 0
        self.cfg: vllm_args.ServeConfig | None = None
        self.devices: list[list[int]] = []
        self.listen_host = "0.0.0.0"
        self.metrics: oai.Metrics | None = None
        self.ready_limit = 600

    # start-up checks -------------------------------------------------------------------------
    def fail(self, last: str, frames: list | None = None, lines: list[str] | None = None) -> int:
        print_traceback((frames if frames is not None else _top()), last)
        for line in lines or []:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return 1

    def check_environment(self) -> int | None:
        """What the image's set_env.sh scripts provide (docker exec does not read ~/.bashrc)."""
        env = self.env
        if not (env.get("ASCEND_TOOLKIT_HOME") or env.get("ASCEND_HOME_PATH")):
            self._pre_error("ImportError: libhccl.so: cannot open shared object file: No such file or directory")
            return self.fail("RuntimeError: Failed to load the backend extension: torch_npu. You can disable extension "
                             "auto-loading with TORCH_DEVICE_BACKEND_AUTOLOAD=0.",
                             _top()[:1] + [(_TORCH, 2756, "_import_device_backends", "raise RuntimeError(")])
        if not self.node.mounted("/usr/local/Ascend/driver/lib64"):
            self._pre_error("ImportError: libascend_hal.so: cannot open shared object file: No such file or directory")
            return self.fail("RuntimeError: Failed to load the backend extension: torch_npu. You can disable extension "
                             "auto-loading with TORCH_DEVICE_BACKEND_AUTOLOAD=0.",
                             _top()[:1] + [(_TORCH, 2756, "_import_device_backends", "raise RuntimeError(")])
        if not env.get("ATB_HOME_PATH"):
            return self.fail("ImportError: libatb.so: cannot open shared object file: No such file or directory",
                             _top() + [("/vllm-workspace/vllm-ascend/vllm_ascend/utils.py", 315,
                                        "enable_custom_op", "import vllm_ascend.vllm_ascend_C  # type: ignore")])
        return None

    def _pre_error(self, last: str) -> None:
        print_traceback([(_TORCH, 2750, "_import_device_backends", "entrypoint = backend_extension.load()"),
                         ("/usr/local/python3.11.14/lib/python3.11/site-packages/torch_npu/__init__.py", 19,
                          "<module>", "from torch_npu import _C")], last)
        sys.stderr.write("\nThe above exception was the direct cause of the following exception:\n\n")

    def check_model(self, model: str) -> int | None:
        if os.path.isdir(model) and os.path.isfile(os.path.join(model, "config.json")):
            return None
        if os.path.isdir(model):
            return self.fail(f"ValueError: Invalid repository ID or local directory specified: '{model}'.\n"
                             f"Please verify the following requirements:\n1. Provide a valid Hugging Face repository "
                             f"ID.\n2. Specify a local directory that contains a recognized configuration file.\n"
                             f"   - For Hugging Face models: ensure the presence of a 'config.json'.\n"
                             f"   - For Mistral models: ensure the presence of a 'params.json'.")
        return self.fail(f"huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
                         f"'namespace/repo_name': '{model}'. Use `repo_type` argument if needed.",
                         _top() + [("/usr/local/python3.11.14/lib/python3.11/site-packages/huggingface_hub/utils/"
                                    "_validators.py", 154, "validate_repo_id", "raise HFValidationError(")])

    def engine_devices(self, cfg: vllm_args.ServeConfig) -> tuple[list[list[int]], int | None]:
        """Physical devices of each local engine; ASCEND_RT_VISIBLE_DEVICES indexes the container's
        devices (its logical ids). Prints the runtime's error and returns rc 1 when it cannot."""
        cdevs = self.node.container_devices()
        raw = self.env.get("ASCEND_RT_VISIBLE_DEVICES")
        try:
            visible = parse_visible(raw)
        except ValueError:
            visible = None
            raw_bad = True
        else:
            raw_bad = False
        per = cfg.world_per_engine // cfg.nnodes if cfg.nnodes > 1 else cfg.world_per_engine
        count = 1 if cfg.nnodes > 1 else cfg.dp_local
        logical = visible if visible is not None else list(range(len(cdevs)))
        if cfg.env_local_rank and len(logical) >= (cfg.env_local_rank + 1) * per:
            # VLLM_DP_* launch with the node's devices all visible: the engine takes its local slice
            logical = logical[cfg.env_local_rank * per:]
        bad = raw_bad or any(i < 0 or i >= len(cdevs) for i in logical)
        unordered = not bad and logical != sorted(logical)
        if bad or unordered:
            sys.stdout.write(f"[ERROR] RUNTIME({self.pid},python3):{plog_time()} [runtime.cc:5632]{self.pid} "
                             f"GetVisibleDevices:[INIT][DEFAULT]set ASCEND_RT_VISIBLE_DEVICES:[{raw}] error, "
                             f"input data rang[0-{len(cdevs)})\n")
            reason = (f"set ASCEND_RT_VISIBLE_DEVICES:{raw} error, it must be configured in ascending order"
                      if unordered else f"Set visible device failed, invalid device={raw}, input visible devices:"
                      f"{raw}")
            return [], self.engine_init_failed(
                "RuntimeError: init:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:292 NPU function error: "
                "aclrtGetDeviceCount(&device_count), error code is 207004",
                [f"[ERROR] {time.strftime('%Y-%m-%d-%H:%M:%S')} (PID:{self.pid}, Device:-1, RankID:-1) ERR00100 "
                 "PTA call acl api failed",
                 "[Error]: The device is unavailable.",
                 "        Check whether the device is running properly.",
                 f"EE1001: [PID: {self.pid}] {plog_time()} The argument is invalid.Reason: {reason}"])
        out = []
        for i in range(count):
            ids = logical[i * per:(i + 1) * per]
            if len(ids) < per:
                return [], self.engine_init_failed(
                    "RuntimeError: Initialize:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:217 NPU function "
                    "error: c10_npu::SetDevice(device_id_), error code is 107001",
                    [f"EE1001: [PID: {self.pid}] {plog_time()} The argument is invalid.Reason: rtSetDevice execute "
                     f"failed, reason=[device id error][FUNC:FuncErrorReason] (local world size {per * count} > "
                     f"visible device count {len(logical)})"])
            out.append([cdevs[j] for j in ids])
        return out, None

    def engine_init_failed(self, last: str, lines: list[str], failed: dict | None = None) -> int:
        print_traceback([("/vllm-workspace/vllm-ascend/vllm_ascend/worker/worker.py", 406, "_init_device",
                          "torch.npu.set_device(device)")], last)
        for line in lines:
            sys.stderr.write(line + "\n")
        names = failed or {f"EngineCore_DP{(self.cfg.dp_start if self.cfg else 0)}": 1}
        return self.fail(f"RuntimeError: Engine core initialization failed. See root cause above. Failed core "
                         f"proc(s): {names}", _top() + [(_UTILS, 775, "wait_for_engine_startup", "raise RuntimeError(")])

    # main ------------------------------------------------------------------------------------
    def run(self) -> int:
        args = self.args
        self.log.info("api_server.py:1839" if not self.headless else "serve.py:190",
                      f"vLLM API server version {VLLM_VERSION}")
        self.log.info("utils.py:233", f"non-default args: {self.non_default()}")
        rc = self.check_environment()
        if rc is not None:
            return rc
        try:  # vllm/envs.py: int(os.getenv("VLLM_ENGINE_READY_TIMEOUT_S", "600"))
            self.ready_limit = int(self.env.get("VLLM_ENGINE_READY_TIMEOUT_S", "600"))
        except ValueError:
            return self.fail(f"ValueError: invalid literal for int() with base 10: "
                             f"{self.env['VLLM_ENGINE_READY_TIMEOUT_S']!r}")
        try:
            cfg = vllm_args.resolve(args, self.env)
        except vllm_args.ServeError as e:
            return self.fail(f"{e.kind}: {e.message}", e.where or None)
        self.cfg = cfg
        rc = self.check_model(cfg.model)
        if rc is not None:
            return rc
        devices, rc = self.engine_devices(cfg)
        if rc is not None:
            return rc
        self.devices = devices
        if not self.headless:
            rc = self.bind_http()
            if rc is not None:
                return rc
        try:
            return asyncio.run(self.main())
        except KeyboardInterrupt:
            return 0

    def non_default(self) -> dict:
        defaults = vars(vllm_args.build_parser().parse_args([]))
        return {k: v for k, v in vars(self.args).items() if defaults.get(k) != v}

    def bind_http(self) -> int | None:
        host = self.args.host
        if host in (None, "", "0.0.0.0", "::"):
            addr = self.node.address
        elif host == "localhost":
            addr = "127.0.0.1"
        else:
            addr = host
        frames = _top() + [(_API, 1905, "run_server", "listen_address, sock = setup_server(args)"),
                           (_API, 1874, "setup_server", "sock = create_server_socket(sock_addr)"),
                           (_API, 1810, "create_server_socket", "sock.bind(addr)")]
        if addr not in (self.node.address, "127.0.0.1"):
            return self.fail("OSError: [Errno 99] Cannot assign requested address", frames)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, self.args.port))
        except OSError as e:
            sock.close()
            return self.fail(f"OSError: [Errno {e.errno}] {e.strerror}", frames)
        self.sock = sock
        self.listen_host = host or "0.0.0.0"
        return None

    def group(self) -> tuple[dict | None, bool]:
        """(group spec shared by our engines, whether this process hosts the group's handshake)."""
        cfg = self.cfg
        assert cfg is not None
        a = self.args
        if cfg.nnodes > 1:
            return {"kind": "nnodes", "size": cfg.nnodes, "leader": [a.master_addr, a.master_port],
                    "headless": self.headless}, cfg.node_rank == 0
        if cfg.dp_size > 1:
            return {"kind": "dp", "size": cfg.dp_size,
                    "leader": [a.data_parallel_address or "127.0.0.1", a.data_parallel_rpc_port or 29550],
                    "headless": self.headless}, cfg.dp_start == 0 and not self.headless
        return None, False

    def kv_ports(self, dp_rank: int, lo: int, hi: int) -> list[list[int]]:
        cfg = self.cfg
        assert cfg is not None
        kv = cfg.kv or {}
        connector = str(kv.get("kv_connector", ""))
        if "Mooncake" not in connector:
            return []
        layerwise = "Layerwise" in connector
        binds = cfg.is_consumer if layerwise else cfg.is_producer
        if not binds:
            return []
        try:
            base = int(kv.get("kv_port", 14579))
        except (TypeError, ValueError):
            base = 14579
        side = base + dp_rank * cfg.tp * cfg.pp * cfg.pcp
        out = []
        for idx in range(lo, hi):
            tp_rank = idx % cfg.tp
            pcp_rank = (idx // cfg.tp) % cfg.pcp
            pp_rank = idx // (cfg.tp * cfg.pcp)
            out.append([side + idx, tp_rank, pp_rank, pcp_rank])
        return out

    def pd_tp(self) -> dict:
        """prefill/decode tp_size of a Mooncake P2P connector's extra config (its worker checks them)."""
        cfg = self.cfg
        assert cfg is not None
        connector = str((cfg.kv or {}).get("kv_connector", ""))
        if "Mooncake" not in connector or "Layerwise" in connector:
            return {}
        p, d = cfg.extra("prefill") or {}, cfg.extra("decode") or {}
        if isinstance(p, dict) and isinstance(d, dict) and "tp_size" in p and "tp_size" in d:
            return {"prefill_tp": p["tp_size"], "decode_tp": d["tp_size"]}
        return {}

    def spawn_engines(self, group: dict | None) -> None:
        cfg = self.cfg
        assert cfg is not None
        faults = self.node.faults()
        env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
        for i, devs in enumerate(self.devices):
            if cfg.nnodes > 1:
                index = cfg.node_rank
                per = cfg.world_per_engine // cfg.nnodes
                lo, hi, dp_rank = index * per, (index + 1) * per, 0
                title = f"VLLM::Worker_TP{lo}" if cfg.node_rank else "VLLM::EngineCore_DP0"
                name = f"Worker_TP{lo}" if cfg.node_rank else "EngineCore_DP0"
            else:
                index = dp_rank = cfg.dp_start + i
                lo, hi = 0, cfg.world_per_engine
                title, name = f"VLLM::EngineCore_DP{dp_rank}", f"EngineCore_DP{dp_rank}"
            gloo_port = self.args.master_port if cfg.nnodes > 1 else 29500
            spec = {"name": name, "title": title, "index": index, "devices": devs, "group": group,
                    "util": self.args.gpu_memory_utilization, "time_factor": self.tf,
                    "startup_s": self.node.startup_s, "slow_s": float(faults.get("slow-start") or 0),
                    "never_ready": "never-ready" in faults, "crash_at_start": "crash-at-start" in faults,
                    "kv_ports": self.kv_ports(dp_rank, lo, hi), "engine_id": str((cfg.kv or {}).get("engine_id", "")),
                    "gloo_port": gloo_port, "connector": (cfg.kv or {}).get("kv_connector"),
                    "kv_role": (cfg.kv or {}).get("kv_role"), **self.pd_tp()}
            r, w = os.pipe()
            env_i = dict(env, DEPLOY_SIM_ENGINE_SPEC=json.dumps(spec), DEPLOY_SIM_STATUS_FD=str(w))
            proc = subprocess.Popen([sys.executable, ENGINE_PY], env=env_i, pass_fds=[w], stdin=subprocess.DEVNULL)
            os.close(w)
            os.set_blocking(r, False)
            self.children.append({"proc": proc, "fd": r, "buf": b"", "name": name, "index": index,
                                  "ready": False, "state": "starting"})

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop = stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        cfg = self.cfg
        assert cfg is not None
        group, leader = self.group()
        if leader:
            assert group is not None
            host, port = group["leader"]
            bind = self.node.address if host in ("0.0.0.0", "") else host
            path = f"tcp://{host}:{port}"
            if bind not in (self.node.address, "127.0.0.1", "localhost"):
                return self.fail(f"zmq.error.ZMQError: Cannot assign requested address (addr='{path}')",
                                 _top() + [(_UTILS, 702, "launch_core_engines",
                                            "with zmq_socket_ctx(local_handshake_address, zmq.ROUTER,")])
            local = None
            if "master-unreachable" in self.node.faults():  # only our own engines get through
                local = {cfg.node_rank} if cfg.nnodes > 1 else {cfg.dp_start + i for i in range(len(self.devices))}
            self.rdzv = Rendezvous(group["size"], self.check_children, local)
            try:
                await self.rdzv.start(bind, port)
            except OSError:
                return self.fail(f"zmq.error.ZMQError: Address already in use (addr='{path}')",
                                 _top() + [(_UTILS, 702, "launch_core_engines",
                                            "with zmq_socket_ctx(local_handshake_address, zmq.ROUTER,")])
        if self.headless:
            if cfg.nnodes > 1:
                self.log.info("serve.py:225", f"Launching vLLM (v{VLLM_VERSION}) headless multiproc executor, with "
                              f"head node address {self.args.master_addr}:{self.args.master_port} for "
                              "torch.distributed process group.")
            elif group is not None:
                self.log.info("serve.py:236", f"Launching {cfg.dp_local} data parallel engine(s) in headless mode, "
                              f"with head node address tcp://{group['leader'][0]}:{group['leader'][1]}.")
        if leader and cfg.nnodes == 1 and cfg.dp_size > 1:
            self.coordinator = subprocess.Popen(  # noqa: ASYNC220 (a spawn; it does not wait)
                [sys.executable, "-c", _COORDINATOR], stdin=subprocess.DEVNULL)
            self.log.info("utils.py:835", f"Started DP Coordinator process (PID: {self.coordinator.pid})")
        self.spawn_engines(group)
        for c in self.children:
            loop.add_reader(c["fd"], self.on_status, c)
        ticker = asyncio.create_task(self.tick())
        ticker.add_done_callback(self._tick_done)
        try:
            await stop.wait()
        finally:
            ticker.cancel()
        return await self.shutdown()

    # engine status ---------------------------------------------------------------------------
    def on_status(self, c: dict) -> None:
        try:
            data = os.read(c["fd"], 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(c["fd"])
            os.close(c["fd"])
            c["fd"] = None
            if c["state"] not in ("dead", "failed"):
                c["state"] = "gone"
            self.check_children()
            return
        c["buf"] += data
        while b"\n" in c["buf"]:
            line, _, c["buf"] = c["buf"].partition(b"\n")
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            op = msg.get("op")
            if op == "ready":
                c["ready"] = True
                c["state"] = "ready"
                self.garbage = self.garbage or bool(msg.get("garbage"))
            elif op in ("failed", "dead"):
                c["state"] = op
        self.check_children()

    def check_children(self) -> None:
        if self.stop is None or self.stop.is_set():
            return
        bad = [c for c in self.children if c["state"] in ("failed", "dead", "gone")]
        if bad and not self.ready:
            failed = {}
            for c in bad:
                rc = c["proc"].poll()
                if rc is None:
                    try:
                        rc = c["proc"].wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        rc = 1
                failed[c["name"]] = rc
            self.terminate_children()
            self.exit_code = self.fail(
                f"RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): "
                f"{failed}", _top() + [(_UTILS, 775, "wait_for_engine_startup", "raise RuntimeError(")])
            self.stop.set()
            return
        if bad and self.ready and not self.dead:
            self.engine_died()
            return
        if not self.ready and all(c["ready"] for c in self.children) and self.group_ready():
            asyncio.get_running_loop().create_task(self.become_ready())

    def group_ready(self) -> bool:
        if self.rdzv is None:
            return True
        return self.rdzv.pending(set())[1] == 0

    async def become_ready(self) -> None:
        if self.ready:
            return
        self.ready = True
        if self.headless:
            return
        assert self.sock is not None
        self.server = http.Server(self.sock, self.handle)
        await self.server.start()
        cfg = self.cfg
        assert cfg is not None
        self.metrics = oai.Metrics(cfg.served_names[0], [c["index"] for c in self.children],
                                   self.args.max_num_seqs or 256)
        self.log.info("api_server.py:1912", f"Starting vLLM API server 0 on http://{self.listen_host}:{self.args.port}")
        for route in ("/health", "/metrics", "/ping", "/version", "/v1/models", "/v1/completions",
                      "/v1/chat/completions"):
            self.log.info("launcher.py:37", f"Route: {route}, Methods: {'POST' if 'completions' in route else 'GET'}")
        self.log.raw(f"INFO:     Started server process [{self.pid}]")
        self.log.raw("INFO:     Waiting for application startup.")
        self.log.raw("INFO:     Application startup complete.")

    def engine_died(self) -> None:
        self.dead = True
        self.log.error("async_llm.py:480", "AsyncLLM output_handler failed.")
        print_traceback([("/vllm-workspace/vllm/vllm/v1/engine/async_llm.py", 439, "output_handler",
                          "outputs = await engine_core.get_output_async()"),
                         (_CLIENT, 845, "get_output_async", "raise self._format_exception(outputs) from None")],
                        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace "
                        "(above) for the root cause.", self.log.prefix)
        if self.env.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH", "0") not in ("", "0", "false", "False"):
            return
        asyncio.get_running_loop().call_later(max(1.0, 5.0 * self.tf), self.watchdog_exit)

    def watchdog_exit(self) -> None:
        self.log.error("api_server.py:1031", "Engine is dead; shutting down the server (watchdog).")
        self.exit_code = 1
        self.terminate_children()
        assert self.stop is not None
        self.stop.set()

    def _tick_done(self, task: asyncio.Task) -> None:
        """A bug in the ticker must not leave a rank without its timeouts and faults: fail loudly."""
        if not task.cancelled() and task.exception() is not None:
            import traceback
            traceback.print_exception(task.exception())
            self.exit_code = 1
            assert self.stop is not None
            self.stop.set()

    async def tick(self) -> None:
        """Once a second: faults, the ready timeout, the wait log. Sleeps in between (64 ranks idle)."""
        ready_limit = float(self.ready_limit)
        next_log = time.monotonic() + max(1.0, 10.0 * self.tf)
        step = max(0.05, min(1.0, 10.0 * self.tf, ready_limit * self.tf / 4))
        killed = False
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            self.node.reload_config()
            faults = self.node.faults()
            crash = faults.get("crash-after")
            if crash is not None and now - self.started >= float(crash or 0):
                self.log.error("core.py:933", "EngineCore encountered a fatal error.")
                print_traceback([("/vllm-workspace/vllm/vllm/v1/engine/core.py", 924, "run_engine_core",
                                  "engine_core.run_busy_loop()")],
                                f"RuntimeError: Worker failed with error 'rank crashed (deploy sim fault "
                                f"crash-after:{crash})'", self.log.prefix)
                for proc in [c["proc"] for c in self.children] + [self.coordinator]:
                    try:
                        if proc is not None:
                            proc.kill()
                    except OSError:
                        pass
                os._exit(1)
            if self.ready and "engine-death" in faults and not killed and not self.dead:
                killed = True
                for c in self.children:
                    try:
                        c["proc"].send_signal(signal.SIGUSR1)
                    except OSError:
                        pass
            if not self.ready:
                if now - self.started >= ready_limit * self.tf:
                    self.ready_timeout(ready_limit)
                    return
                if now >= next_log:
                    next_log = now + max(1.0, 10.0 * self.tf)
                    local = sum(1 for c in self.children if not c["ready"])
                    remote = 0
                    if self.rdzv is not None:
                        remote = self.rdzv.pending({c["index"] for c in self.children})[1]
                    self.log.info("utils.py:792", f"Waiting for {local} local, {remote} remote core engine proc(s) "
                                  "to start.")
            for c in self.children:  # a child that died without a word (SIGKILL)
                if c["state"] in ("starting", "ready") and c["proc"].poll() is not None:
                    c["state"] = "gone"
                    self.check_children()

    def ready_timeout(self, limit: float) -> None:
        """core_client.py: the front end gives up; its engine processes keep running (orphans)."""
        lim = int(limit)
        self.exit_code = self.fail(
            f"TimeoutError: Timed out waiting for engine core processes to start. This is often caused by slow weight "
            f"loading for large models. Waited {lim}s (configured by VLLM_ENGINE_READY_TIMEOUT_S). To increase the "
            f"timeout, set the environment variable: VLLM_ENGINE_READY_TIMEOUT_S=<seconds>",
            _top() + [(_CLIENT, 640, "__init__", "raise TimeoutError(")])
        for c in self.children:
            c["orphan"] = True
        self.orphans = True
        assert self.stop is not None
        self.stop.set()

    def terminate_children(self, sig: int = signal.SIGTERM) -> None:
        if self.coordinator is not None and not self.orphans:
            try:
                self.coordinator.send_signal(sig)
            except OSError:
                pass
        for c in self.children:
            if c.get("orphan"):
                continue
            try:
                c["proc"].send_signal(sig)
            except OSError:
                pass

    async def shutdown(self) -> int:
        graceful = self.exit_code == 0
        if self.server is not None:
            if graceful:
                self.log.info("launcher.py:80", "Shutting down FastAPI HTTP server.")
            await self.server.close()
            self.log.raw("INFO:     Shutting down")
            self.log.raw("INFO:     Waiting for application shutdown.")
            self.log.raw("INFO:     Application shutdown complete.")
            self.log.raw(f"INFO:     Finished server process [{self.pid}]")
        elif self.sock is not None:
            self.sock.close()
        if self.rdzv is not None:
            self.rdzv.close()
        self.terminate_children()
        deadline = time.monotonic() + 5.0
        for c in self.children:
            if c.get("orphan"):
                continue
            await _end_by(c["proc"], deadline)
        if self.coordinator is not None and not self.orphans:
            await _end_by(self.coordinator, deadline)
        if self.headless and graceful:
            self.log.info("serve.py:262", "Shutting down.")
        return self.exit_code

    # HTTP ------------------------------------------------------------------------------------
    async def handle(self, req: http.Request) -> http.Response:
        resp = await self.route(req)
        if not self.args.disable_uvicorn_access_log:
            self.log.raw(f'INFO:     {self.node.address}:0 - "{req.method} {req.path} HTTP/1.1" {resp.status} '
                         f'{http.REASONS.get(resp.status, "")}')
        return resp

    async def route(self, req: http.Request) -> http.Response:
        path, method = req.path, req.method
        if path in ("/health", "/ping"):
            return http.Response(503 if self.dead else 200, b"", None)
        if path == "/version":
            return http.json_response({"version": VLLM_VERSION})
        if path == "/metrics" and self.metrics is not None:
            return http.Response(200, self.metrics.text().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/reset_prefix_cache" and method == "POST":
            return http.Response(200, b"", None)
        if path.startswith("/v1") and self.cfg is not None and self.cfg.api_keys:
            if req.headers.get("authorization") not in {f"Bearer {k}" for k in self.cfg.api_keys}:
                return http.json_response({"error": "Unauthorized"}, 401)
        if path == "/v1/models":
            if method != "GET":
                return http.json_response({"detail": "Method Not Allowed"}, 405)
            return http.json_response(self.models())
        if path in ("/v1/completions", "/v1/chat/completions"):
            if method != "POST":
                return http.json_response({"detail": "Method Not Allowed"}, 405)
            return await self.generate(req, chat=path.endswith("chat/completions"))
        return http.json_response({"detail": "Not Found"}, 404)

    def models(self) -> dict:
        cfg = self.cfg
        assert cfg is not None
        created = int(time.time())
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": cfg.model,
             "parent": None, "max_model_len": _max_model_len(self.args.max_model_len),
             "permission": [{"id": f"modelperm-{self.pid}", "object": "model_permission", "created": created,
                             "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                             "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                             "organization": "*", "group": None, "is_blocking": False}]}
            for name in cfg.served_names]}

    async def generate(self, req: http.Request, chat: bool) -> http.Response:
        cfg, m = self.cfg, self.metrics
        assert cfg is not None and m is not None
        try:
            body = req.json()
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as e:
            return http.json_response(oai.error_body(f"Invalid JSON body: {e}", "BadRequestError", 400), 400)
        model = body.get("model") or cfg.served_names[0]
        if model not in cfg.served_names:
            return http.json_response(oai.error_body(f"The model `{model}` does not exist.", "NotFoundError", 404,
                                                     "model"), 404)
        if self.dead:
            return http.json_response(oai.error_body("EngineCore encountered an issue. See stack trace (above) for "
                                                     "the root cause.", "InternalServerError", 500), 500)
        rid = oai.request_id(chat, req.headers.get("x-request-id"))
        kvp = body.get("kv_transfer_params") if isinstance(body.get("kv_transfer_params"), dict) else None
        out_kv = None
        connector = str((cfg.kv or {}).get("kv_connector", ""))
        if cfg.kv is not None and cfg.kv_role == "kv_consumer":
            if kvp and kvp.get("metaserver"):
                err = await self.layerwise_pull(kvp, chat, req.headers.get("x-request-id"))
                if err:
                    return http.json_response(oai.error_body(err, "InternalServerError", 500), 500)
            elif not (kvp and kvp.get("do_remote_prefill")):
                return http.json_response(oai.error_body(
                    "This instance is a KV consumer (kv_role kv_consumer): the request needs kv_transfer_params from "
                    "a prefill instance (do_remote_prefill). Send it through the P/D proxy.", "BadRequestError", 400),
                    400)
            else:
                await self.pull_kv(kvp, rid)
        if cfg.is_producer and kvp and kvp.get("do_remote_decode") and "Layerwise" not in connector:
            c0 = self.children[0]["index"] if self.children else 0
            side = int((cfg.kv or {}).get("kv_port", 14579)) + c0 * cfg.tp * cfg.pp * cfg.pcp
            out_kv = {"do_remote_prefill": True, "do_remote_decode": False,
                      "remote_block_ids": list(range(1, 1 + max(1, oai.count_prompt_tokens(body) // 128 + 1))),
                      "remote_engine_id": str(cfg.kv.get("engine_id", "")) if cfg.kv else "",
                      "remote_request_id": f"{rid}-0" if not chat else rid, "remote_host": self.node.address,
                      "remote_port": side, "remote_pcp_size": cfg.pcp,
                      "remote_dcp_size": self.args.decode_context_parallel_size, "remote_ptp_size": cfg.tp,
                      "last_token_id": 1, "remote_multi_nodes_meta_mapping": {}}
        prompt = oai.prompt_text(body)
        p = oai.count_prompt_tokens(body)
        n = oai.max_tokens(body, _max_model_len(self.args.max_model_len), p)
        toks = oai.tokens_for(prompt, n, self.garbage)
        token_s = float(self.node.config.get("token_s", 0.0))
        m.prompt_tokens += p
        if not body.get("stream"):
            m.running += 1
            try:
                if token_s:
                    await asyncio.sleep(token_s * len(toks))
            finally:
                m.running -= 1
            m.generation_tokens += len(toks)
            m.success += 1
            return http.json_response(oai.full_response(chat, rid, model, toks, p, out_kv))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = oai.sse_events(chat, rid, model, toks, p, include_usage)

        async def stream():
            m.running += 1
            try:
                for ev in events:
                    if self.dead:
                        return
                    yield ev
                    if token_s:
                        await asyncio.sleep(token_s)
                m.generation_tokens += len(toks)
                m.success += 1
            finally:
                m.running -= 1
        return http.Response(200, content_type="text/event-stream; charset=utf-8", stream=stream())

    async def layerwise_pull(self, kvp: dict, chat: bool, xrid: str | None) -> str | None:
        """MooncakeLayerwiseConnector consumer: post our side to the proxy's metaserver, which then
        runs the prefill; the decode goes on once that answers."""
        cfg = self.cfg
        assert cfg is not None
        url = str(kvp["metaserver"])
        rest = url.split("://", 1)[-1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        c0 = self.children[0]["index"] if self.children else 0
        payload = {"request_id": f"chatcmpl-{xrid}" if chat else f"cmpl-{xrid}-0", "do_remote_decode": True,
                   "do_remote_prefill": False, "remote_engine_id": str((cfg.kv or {}).get("engine_id", "")),
                   "remote_host": self.node.address,
                   "remote_port": int((cfg.kv or {}).get("kv_port", 14579)) + c0 * cfg.tp * cfg.pcp,
                   "remote_tp_size": cfg.tp}
        try:
            resp = await http.request(host, int(port), "POST", "/" + path, json.dumps(payload).encode(), timeout=None)
            await resp.read()
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            self.log.error("mooncake_layerwise_connector.py:1190", f"Failed to post to metaserver {url}: {e}")
            return f"Failed to post to metaserver {url}"
        if resp.status != 200:
            return f"metaserver {url} answered {resp.status}"
        return None

    async def pull_kv(self, kvp: dict, rid: str) -> None:
        """Reach the producer's side channel (remote_host:remote_port) as the Mooncake consumer does;
        a wrong or dead peer is logged (then vLLM recomputes the prefill locally)."""
        host, port = kvp.get("remote_host"), kvp.get("remote_port")
        if not host or not port:
            return
        engine = None
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(str(host), int(port)), 2.0)
            try:
                engine = (await asyncio.wait_for(r.readline(), 2.0)).decode().strip()
            finally:
                w.close()
        except (TimeoutError, OSError, ValueError):
            engine = None
        if engine is None or (kvp.get("remote_engine_id") is not None and engine != str(kvp["remote_engine_id"])):
            self.log.raw(f"E{time.strftime('%Y%m%d %H:%M:%S')} ascend_direct_transport.cpp:377] Failed to connect "
                         f"to target: {host}:{port}, status: 103900")
            self.log.error("mooncake_connector.py:727", f"Mooncake transfer failed for request {rid}, ret: -1")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-v"]):
        print(VLLM_VERSION)
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...")
        return 0 if argv else 2
    if argv[0] != "serve":
        sys.stderr.write("usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...\n"
                         f"vllm: error: argument subparser: invalid choice: '{argv[0]}' (choose from 'chat', "
                         "'complete', 'serve', 'bench', 'collect-env', 'run-batch')\n")
        return 2
    parser = vllm_args.build_parser()
    args = parser.parse_args(vllm_args.normalize(argv[1:]))
    return Frontend(args, argv).run()


async def _end_by(proc: subprocess.Popen, deadline: float) -> None:
    """Wait for a child until the deadline, then kill it: Popen gives no exit event to await."""
    while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()


if __name__ == "__main__":
    sys.exit(main())

