"""The fake `VLLM::EngineCore` process: started by the fake `vllm serve` with the same python (so a
sitecustomize.py in the image's site-packages runs first, as in a real spawned engine core), in the
parent's process group, without the *_SOCKET_IFNAME variables (vLLM v1 DP's engine-core spawn drops
them; the V4-Pro guide restores them with a sitecustomize.py).

It does, in vLLM's order (EngineCoreProc.__init__ -> _init_data_parallel -> executor -> READY):
  1. handshake with the group's front end (rank 0 / the DP master / node-rank 0), HANDSHAKE_TIMEOUT
     5 minutes x time_factor -> "Did not receive response from front-end process within 5 minutes";
  2. the DP group (gloo): every member joins the rendezvous; nobody goes on until all have;
  3. device init: ASCEND_RT_VISIBLE_DEVICES already resolved by the parent, then the HBM check
     ("Free memory on device ...") and the claim (occupancy.claim, by this PID: an orphaned engine
     keeps holding the devices);
  4. HCCL on a multi-node group: TLS equal everywhere (EI0016 on every rank), HCCL_IF_IP a local
     address, device IPs in /etc/hccn.conf (else the RanktablCheck line, and garbage output);
  5. weight loading (runtime startup_s + slow-start), Mooncake producer side channels bound on
     kv_port + dp_rank*tp*pp*pcp + device index ("Address already in use" on overlap);
  6. READY to the parent (status pipe) and to the group's front end.
Then it idles in select() until SIGTERM (claims released, exit 0), a fault, or its master going away
(headless: loops on the TCPStore recvValue line, as in vllm#32136).
Config comes in DEPLOY_SIM_ENGINE_SPEC (JSON), the status pipe in DEPLOY_SIM_STATUS_FD.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import NoReturn

_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, _HERE)  # the sibling modules: DIR/runtime/ on a node, this package in tests
if os.environ.get("DEPLOY_SIM_ROOT"):  # a copy or stub elsewhere (the image's proxy path) finds them there
    sys.path.append(os.path.join(os.environ["DEPLOY_SIM_ROOT"], "runtime"))

from vllm_node import Log, Node, occupancy, plog_time, print_traceback, torch_time  # noqa: E402

_CORE = "/vllm-workspace/vllm/vllm/v1/engine/core.py"
_WORKER = "/vllm-workspace/vllm-ascend/vllm_ascend/worker/worker.py"
_MC = "/vllm-workspace/vllm-ascend/vllm_ascend/distributed/kv_transfer/kv_p2p/mooncake_connector.py"
_SOCKET_IFNAMES = ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "HCCL_SOCKET_IFNAME")


def set_comm(title: str) -> None:
    """prctl(PR_SET_NAME): comm is cut to 15 bytes, so `VLLM::EngineCore_DP0` shows as
    `VLLM::EngineCor` in ps/top/pgrep, as with the real setproctitle'd engine."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, title.encode()[:15] + b"\0", 0, 0, 0)
    except Exception:  # pragma: no cover - no libc: the same through procfs
        try:
            with open("/proc/self/comm", "w") as f:
                f.write(title[:15])
        except OSError:
            pass


class Exit(Exception):
    def __init__(self, code: int):
        self.code = code


class Engine:
    def __init__(self, spec: dict):
        self.spec = spec
        self.pid = os.getpid()
        self.name = spec["name"]
        self.log = Log(f"({self.name} pid={self.pid}) ")
        self.node = Node()
        self.devices: list[int] = spec["devices"]
        self.group: dict | None = spec.get("group")
        self.tf = float(spec.get("time_factor", 1.0))
        self.status = None
        fd = os.environ.get("DEPLOY_SIM_STATUS_FD")
        if fd is not None:
            try:
                self.status = os.fdopen(int(fd), "w", buffering=1)
            except OSError:
                self.status = None
        self.sock: socket.socket | None = None
        self.rbuf = b""
        self.listeners: list[socket.socket] = []
        self.claimed = False
        self.garbage = False
        self.members: list[dict] = []
        self.ready = False

    # plumbing --------------------------------------------------------------------------------
    def tell_parent(self, msg: dict) -> None:
        if self.status is None:
            return
        try:
            self.status.write(json.dumps(msg) + "\n")
        except (OSError, ValueError):
            self.status = None  # the front end is gone (SIGKILL): an orphan keeps running

    def fail(self, last: str, frames=None, lines: list[str] | None = None, code: int = 1) -> NoReturn:
        self.log.error("core.py:1011", "EngineCore failed to start.")
        print_traceback(frames or [(_CORE, 1002, "run_engine_core", "engine_core = DPEngineCoreProc(*args, **kwargs)")],
                        last, self.log.prefix)
        for line in lines or []:
            sys.stderr.write(self.log.prefix + line + "\n")
        sys.stderr.flush()
        self.tell_parent({"op": "failed", "error": last})
        raise Exit(code)

    def send(self, msg: dict) -> None:
        assert self.sock is not None
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def recv(self, deadline: float | None) -> dict | None:
        """One message from the group's front end; None on EOF/reset. socket.timeout past deadline."""
        assert self.sock is not None
        while b"\n" not in self.rbuf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError()
                self.sock.settimeout(min(left, 3600.0))
            else:
                self.sock.settimeout(None)
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, OSError) as e:
                if isinstance(e, socket.timeout):
                    raise
                return None
            if not data:
                return None
            self.rbuf += data
            if len(self.rbuf) > 4 * 1024 * 1024:
                return None
        line, _, self.rbuf = self.rbuf.partition(b"\n")
        return json.loads(line)

    # phases ----------------------------------------------------------------------------------
    def run(self) -> None:
        spec = self.spec
        if spec.get("crash_at_start"):
            self.fail("RuntimeError: engine core crashed at start-up (deploy sim fault crash-at-start)")
        self.own = self.own_info()
        if self.group is not None:
            self.handshake()
            self.join()
        else:
            self.members = [self.own]
        # the group's HCCL checks first: every member has the member list at once, so a TLS
        # mismatch is seen (EI0016) by every rank before one's exit tears the group down; the
        # device memory check that follows takes the node lock one engine at a time
        self.hccl_checks()
        self.check_memory_and_claim()
        if spec.get("connector") == "LLMDataDistCMgrConnector":
            self.llmdatadist_table()
        ptp, dtp = spec.get("prefill_tp"), spec.get("decode_tp")
        if ptp is not None and dtp is not None and ptp < dtp:
            self.fail(f"ValueError: prefill_tp_size: {ptp} must be greater than or equal to the decode_tp_size: {dtp}",
                      [(_CORE, 1002, "run_engine_core", "engine_core = DPEngineCoreProc(*args, **kwargs)"),
                       (_MC, 2056, "__init__", "raise ValueError(")])
        load = float(spec.get("startup_s", 2.0)) + float(spec.get("slow_s", 0.0))
        self.log.info("default_loader.py:267", f"Loading weights took {load:.2f} seconds")
        self.sleep(load)
        if spec.get("never_ready"):
            self.log.info("core.py:98", "Initializing a V1 LLM engine (v0.11.0) with config: ...")
            while True:  # fault never-ready: initialisation never finishes
                self.idle(None)
        self.bind_side_channels()
        self.log.info("core.py:210", "init engine (profile, create kv cache, warmup model) took "
                      f"{load:.2f} seconds")
        if self.sock is not None:
            self.send({"op": "ready", "index": spec["index"]})
        self.ready = True
        self.tell_parent({"op": "ready", "garbage": self.garbage})
        while True:
            self.idle(None)

    def own_info(self) -> dict:
        env = os.environ
        gloo = env.get("GLOO_SOCKET_IFNAME")
        devs = []
        for d in self.devices:
            info = self.node.devices.get(d, {})
            devs.append({"id": d, "ip": info.get("ip"), "tls": int(info.get("tls_switch", 0) or 0)})
        return {"index": self.spec["index"], "node": self.node.name, "address": self.node.address,
                "devices": devs, "gloo": "loopback" if not gloo else "ok", "gloo_ifname": gloo,
                "hccl_if_ip": env.get("HCCL_IF_IP"), "pid": self.pid}

    def handshake(self) -> None:
        """Connect to the group's front end and get its init message within the handshake limit."""
        g = self.group
        assert g is not None
        host, port = g["leader"]
        limit = 300.0 * self.tf
        deadline = time.monotonic() + limit
        while True:
            try:
                s = socket.create_connection((host, port), timeout=min(1.0, max(0.05, deadline - time.monotonic())))
                self.sock = s
                self.send({"op": "hello", "index": self.spec["index"], "size": g.get("size")})
                msg = self.recv(deadline)
                if msg is not None and msg.get("op") == "init":
                    return
                s.close()
                self.sock = None
            except TimeoutError:
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
            except OSError:
                pass
            if time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        if g.get("kind") == "nnodes" and g.get("headless"):
            self.fail(f"torch.distributed.DistNetworkError: The client socket has timed out after "
                      f"{int(limit * 1000)}ms while trying to connect to ({host}, {port}).",
                      [("/usr/local/python3.11.14/lib/python3.11/site-packages/torch/distributed/rendezvous.py",
                        189, "_create_c10d_store", "return TCPStore(")])
        self.fail("RuntimeError: Did not receive response from front-end process within 5 minutes",
                  [(_CORE, 1002, "run_engine_core", "engine_core = DPEngineCoreProc(*args, **kwargs)"),
                   (_CORE, 1240, "__init__", "with self._perform_handshakes(handshake_address, identity,"),
                   (_CORE, 1316, "startup_handshake", "raise RuntimeError(")])

    def join(self) -> None:
        """The DP process group: gloo device creation, then wait for every member."""
        gloo = self.own["gloo_ifname"]
        nic = self.node.nic
        if gloo and nic and gloo != nic:
            self.fail(f"RuntimeError: [enforce fail at ../third_party/gloo/gloo/transport/tcp/device.cc:83] "
                      f"ifa != nullptr. Unable to find address for: {gloo}",
                      [(_CORE, 1363, "_init_data_parallel", "self.dp_group = vllm_config.parallel_config."
                        "stateless_init_dp_group()")])
        self.send({"op": "join", "info": self.own})
        while True:
            msg = self.recv(None)
            if msg is None:
                self.master_lost(ready=False)
                return
            if msg.get("op") == "group":
                self.members = msg["members"]
                return

    def multi_node(self) -> bool:
        return len({m["address"] for m in self.members}) > 1

    def check_memory_and_claim(self) -> None:
        util = float(self.spec.get("util", 0.9))
        comm = self.spec["title"][:15]
        with occupancy.node_lock(self.node.dir):
            held_by: dict[int, int] = {}
            for dev, pid, mb, _name in occupancy.holders(self.node.dir, self.devices):
                if pid != self.pid:
                    held_by[dev] = held_by.get(dev, 0) + mb
            claim_mb = None
            for d in self.devices:
                total, base = self.node.hbm(d)
                avail_total = total - base
                free = avail_total - held_by.get(d, 0)
                requested = avail_total * util
                if free < requested:
                    gib = lambda mb: round(mb / 1024, 2)  # noqa: E731
                    self.fail(f"ValueError: Free memory on device ({gib(free)}/{gib(avail_total)} GiB) on startup is "
                              f"less than desired GPU memory utilization ({util}, {gib(requested)} GiB). Decrease GPU "
                              f"memory utilization or reduce GPU memory used by other processes.",
                              [(_CORE, 1002, "run_engine_core", "engine_core = DPEngineCoreProc(*args, **kwargs)"),
                               (_WORKER, 254, "init_device", "self.device = self._init_device()"),
                               (_WORKER, 428, "_init_device", "raise ValueError(")])
                mb = int(requested)
                claim_mb = mb if claim_mb is None else min(claim_mb, mb)
            if self.devices:
                occupancy.claim(self.node.dir, self.devices, self.pid, claim_mb or 0, comm)
                self.claimed = True

    def hccl_checks(self) -> None:
        if self.group is None:
            return
        multi = self.multi_node()
        if multi and any(m["gloo"] == "loopback" for m in self.members):
            port = int(self.spec.get("gloo_port", 29500))
            if self.own["gloo"] == "loopback":
                sys.stderr.write(f"{self.log.prefix}[W{torch_time()} ProcessGroupGloo.cpp:715] Warning: Unable to "
                                 "resolve hostname to a (local) address. Using the loopback address as fallback. "
                                 "Manually set the network interface to bind to with GLOO_SOCKET_IFNAME. "
                                 "(function operator())\n")
            self.fail(f"RuntimeError: Gloo connectFullMesh failed with "
                      f"[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:152] timed out connecting: SO_ERROR: "
                      f"Connection refused, remote=[127.0.0.1]:{port}",
                      [(_CORE, 1363, "_init_data_parallel",
                        "self.dp_group = vllm_config.parallel_config.stateless_init_dp_group()")])
        if not multi:
            if os.environ.get("HCCL_INTRA_ROCE_ENABLE") == "1":
                self.ranktable_check()
            return
        tls = {(m["address"], d["id"]): d["tls"] for m in self.members for d in m["devices"]}
        if len(set(tls.values())) > 1:
            on = [f"{a}/{d}" for (a, d), v in sorted(tls.items()) if v]
            off = [f"{a}/{d}" for (a, d), v in sorted(tls.items()) if not v]
            mine = "Enable" if self.own["devices"] and self.own["devices"][0]["tls"] else "Disable"
            self.fail("RuntimeError: InitHcclComm:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:135 HCCL function "
                      "error: HcclCommInitRootInfoConfig(numRanks, &rootInfo, rank, config, &(comm->hcclComm_)), "
                      "error code is 1",
                      [(_WORKER, 254, "init_device", "init_worker_distributed_environment(self.vllm_config, ...)")],
                      [f"[ERROR] {plog_time()} (PID:{self.pid}, Device:0, RankID:-1) ERR02200 DIST call hccl api "
                       "failed.",
                       f"EI0016: [PID: {self.pid}] {plog_time()} Value {mine} for config \"tls\" is invalid. Expected "
                       f"Value:\"All ranks are consistent. Current status : rankList for enabled tls:[{', '.join(on)}]; "
                       f"rankList for disabled tls:[{', '.join(off)}]; rankList for query failure tls:\"."])
        bad = [m for m in self.members if m.get("hccl_if_ip") and m["hccl_if_ip"] != m["address"]]
        if bad:
            timeout = os.environ.get("HCCL_CONNECT_TIMEOUT", "120")
            if any(m["index"] == self.own["index"] and m["address"] == self.own["address"] for m in bad):
                line = (f"EI0001: [PID: {self.pid}] {plog_time()} Value {self.own['hccl_if_ip']} for environment "
                        "variable HCCL_IF_IP is invalid. Expected value: an IP address of this host.")
            else:
                line = (f"EI0015: [PID: {self.pid}] {plog_time()} Failed to collect cluster information of the "
                        "communicator based on rootInfo detection. Reason: topo exchange agent get socket timeout! "
                        f"timeout[{timeout}]")
            self.fail("RuntimeError: InitHcclComm:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:135 HCCL function "
                      "error: HcclGetRootInfo(&rootInfo), error code is 1",
                      [(_WORKER, 254, "init_device", "init_worker_distributed_environment(self.vllm_config, ...)")],
                      [line])
        self.ranktable_check()

    def ranktable_check(self) -> None:
        conf = self.node.hccn_addresses()
        for d in self.own["devices"]:
            if conf is None or d["ip"] is None or conf.get(d["id"]) != d["ip"]:
                sys.stdout.write(f"{self.log.prefix}[ERROR] HCCL({self.pid},python3):{plog_time()} "
                                 f"[topoinfo_ranktableParser_pub.cc:1224][{self.pid}][RanktablCheck] 'device ip' is "
                                 "not set correctly, must be set when multi Server or HCCL INTRA ROCE ENABLE enabled\n")
                sys.stdout.flush()
                self.garbage = True
                return

    def llmdatadist_table(self) -> None:
        """What the LLMDataDist connector (v0.11 and older) reads at start-up: the P/D rank table
        at DISAGGREGATED_PREFILL_RANK_TABLE_PATH. Its role's list must hold every device of this
        engine on this server (server_id = the host IP), with the device's live IP (A3: the vNIC),
        and server_count must equal the servers the lists name."""
        _LL = "/vllm-workspace/vllm-ascend/vllm_ascend/distributed/llmdatadist_c_mgr_connector.py"
        frames = [(_CORE, 1002, "run_engine_core", "engine_core = DPEngineCoreProc(*args, **kwargs)"),
                  (_LL, 180, "read_agent_metadata", "global_rank_table = self.read_offline_rank_table()")]
        path = os.environ.get("DISAGGREGATED_PREFILL_RANK_TABLE_PATH")
        if not path:
            self.fail("AssertionError: Please set path of rank_table to env variable "
                      "DISAGGREGATED_PREFILL_RANK_TABLE_PATH", frames)
        try:
            with open(path) as f:
                table = json.load(f)
        except FileNotFoundError:
            self.fail(f"FileNotFoundError: [Errno 2] No such file or directory: '{path}'", frames)
        except (OSError, ValueError) as e:
            self.fail(f"json.decoder.JSONDecodeError: {e}", frames)
        lists = [e for k in ("prefill_device_list", "decode_device_list") for e in table.get(k, []) or []]
        servers = {e.get("server_id") for e in lists}
        if str(table.get("server_count")) != str(len(servers)):
            self.fail(f"RuntimeError: EI0004: Failed to parse the ranktable file {path}. Reason: server_count "
                      f"[{table.get('server_count')}] is not equal to the number of servers in the table "
                      f"[{len(servers)}] [sim]", frames)
        mine = table.get("prefill_device_list" if self.spec.get("kv_role") == "kv_producer"
                         else "decode_device_list", []) or []
        a3 = self.node.soc == "a3"
        for rank, d in enumerate(self.devices):
            info = self.node.devices.get(d, {})
            want_ip = info.get("vnic_ip") if a3 else info.get("ip")
            hit = [e for e in mine if e.get("server_id") == self.node.address and str(e.get("device_id")) == str(d)]
            if not hit or hit[0].get("device_ip") != want_ip:
                self.fail(f"ValueError: Can't read the target server_id {self.node.address} and device_rank {rank} "
                          "from rank table", frames)

    def bind_side_channels(self) -> None:
        for port, tp_rank, pp_rank, pcp_rank in self.spec.get("kv_ports", []):
            path = f"tcp://{self.node.address}:{port}"
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.node.address, port))
                s.listen(16)
            except OSError:
                s.close()
                self.log.error("mooncake_connector.py:314",
                               f"Mooncake KVCacheSendingThread encountered exception. Thread: tp_rank={tp_rank:d}, "
                               f"pp_rank={pp_rank:d}, listening_path={path}. Error: Address already in use (addr='{path}')")
                print_traceback([(_MC, 310, "run", "with zmq_ctx(zmq.ROUTER, path) as sock:  # type: ignore"),
                                 ("/usr/local/python3.11.14/lib/python3.11/site-packages/zmq/sugar/socket.py", 311,
                                  "bind", "super().bind(addr)")],
                                f"zmq.error.ZMQError: Address already in use (addr='{path}')", self.log.prefix)
                continue
            self.log.info("mooncake_connector.py:303",
                          f"KVCacheSendingThread started listening on path: {path}. Thread: tp_rank={tp_rank}, "
                          f"pp_rank={pp_rank}, pcp_rank={pcp_rank}")
            self.listeners.append(s)

    # waiting ---------------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.idle(left)

    def idle(self, timeout: float | None) -> None:
        """Wait for events: side-channel connections, the front end's socket closing."""
        sel = selectors.DefaultSelector()
        try:
            if self.sock is not None:
                sel.register(self.sock, selectors.EVENT_READ, "leader")
            for s in self.listeners:
                sel.register(s, selectors.EVENT_READ, "kv")
            if not sel.get_map():
                time.sleep(timeout if timeout is not None else 3600.0)
                return
            for key, _ in sel.select(timeout):
                if key.data == "kv":
                    try:
                        conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                        conn.sendall(f"{self.spec.get('engine_id', '')}\n".encode())
                        conn.close()
                    except OSError:
                        pass
                else:
                    try:
                        data = self.sock.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:
                        self.sock.close()  # type: ignore[union-attr]
                        self.sock = None
                        self.master_lost(ready=self.ready)
                    else:
                        self.rbuf += data
        finally:
            sel.close()

    def master_lost(self, ready: bool) -> None:
        """The group's front end went away. A serving engine does not notice (vllm#55510: engine
        cores outlive a killed API server, still holding their devices); a headless rank, and every
        rank still starting (waiting in the DP group), loops on the TCPStore line forever (vllm#32136)."""
        g = self.group or {}
        host, port = g.get("leader", ("", 0))
        if ready and not g.get("headless"):
            self.sock = None
            return
        self.sock = None
        fd = 40 + int(self.spec.get("index", 0))
        while True:
            sys.stderr.write(f"{self.log.prefix}[W{torch_time()} TCPStore.cpp:125] [c10d] recvValue failed on "
                             f"SocketImpl(fd={fd}, addr=[{self.node.address}]:{43000 + fd}, remote=[{host}]:{port}): "
                             "Failed to recv, got 0 bytes. Connection was likely closed. Did the remote server "
                             "shutdown or crash?\n")
            sys.stderr.flush()
            self.idle_plain(max(1.0, 10.0 * self.tf))

    def idle_plain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.idle(left)

    def release(self) -> None:
        if self.claimed:
            try:
                occupancy.release(self.node.dir, self.pid)
            except OSError:
                pass
            self.claimed = False
        for s in self.listeners:
            s.close()
        self.listeners = []


def _on_signal(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a group kill and the parent's TERM both arrive
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Exit(0)


def _on_fatal(signum, frame):
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    raise Exit(-1)


def main() -> int:
    spec = json.loads(os.environ.pop("DEPLOY_SIM_ENGINE_SPEC"))
    set_comm(spec["title"])
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGUSR1, _on_fatal)
    engine = Engine(spec)
    code = 0
    try:
        engine.run()
    except Exit as e:
        code = e.code
        if code == -1:  # the engine-death fault: a fatal error in the busy loop
            engine.log.error("core.py:933", "EngineCore encountered a fatal error.")
            print_traceback([(_CORE, 924, "run_engine_core", "engine_core.run_busy_loop()"),
                             (_CORE, 951, "run_busy_loop", "self._process_engine_step()")],
                            "RuntimeError: ACL stream synchronize failed, error code:507018 (deploy sim fault "
                            "engine-death)", engine.log.prefix)
            engine.tell_parent({"op": "dead"})
            code = 1
    finally:
        engine.release()
    return code


if __name__ == "__main__":
    sys.exit(main())
