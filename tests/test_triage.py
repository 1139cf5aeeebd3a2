"""The triage table against the real log lines of the references and the simulator's lines.

Why: a signature that silently stops matching the real text is worse than none (the operator is
told nothing while the bring-up hangs). Every case feeds a line quoted in
the project's reference notes on vllm-ascend failures, upstream bring-up and HCCL error codes (elisions "…"
of the references filled with plausible values) or printed by the fake vllm
(orchestrator/sim/runtime/vllm*.py, docs/simulator-runtime.md), and checks the finding named and
the values pulled out of it. A healthy start-up log must give no finding, and
docs/troubleshooting.md must be what the table renders.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import time

import pytest
import test_sim_vllm as _simv
from test_sim_vllm import _ext_rank, _llmdd_rank, _table, http_get, kv, wait_healthy

from orchestrator import triage
from orchestrator.triage import SIGNATURES, Finding, match, render_markdown

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (label, log text, expected id, expected fields: Finding attributes or values[...] keys)
CASES: list[tuple[str, str, str, dict]] = [
    # --- EI0016 TLS mismatch -----------------------------------------------------------------
    ("tls-real",
     'EI0016: [PID: 1292363] 2025-04-08-18:07:20.444.436 Value Disable for config "tls" is invalid. Expected '
     'Value:"All ranks are consistent. Current status : rankList for enabled tls:[10.78.106.107/0]; rankList for '
     'disabled tls:[10.78.106.107/1, 10.78.106.108/0, 10.78.106.108/1]; rankList for query failure tls:".',
     "hccl-tls-mismatch", {"device": 0, "ip": "10.78.106.107", "values.odd_state": "enabled"}),
    ("tls-sim",
     '(EngineCore_DP0 pid=4242) EI0016: [PID: 4242] 2026-12-01-09:30:00.123.456 Value Enable for config "tls" is '
     'invalid. Expected Value:"All ranks are consistent. Current status : rankList for enabled tls:[127.0.1.1/0, '
     '127.0.1.1/1, 127.0.1.2/0]; rankList for disabled tls:[127.0.1.2/1]; rankList for query failure tls:".',
     "hccl-tls-mismatch", {"device": 1, "ip": "127.0.1.2", "values.odd_state": "disabled"}),
    ("tls-no-code",  # ascend-tools.md §6 quotes it without the code prefix
     'Value Disable for config "tls" is invalid. Expected Value:"All ranks are consistent. Current status : '
     'rankList for enabled tls:[10.78.106.107/0]; rankList for disabled tls:[...]; rankList for query failure tls:".',
     "hccl-tls-mismatch", {}),
    # --- EI0006 / EI0015 ---------------------------------------------------------------------
    ("ei0006-486",
     "EI0006: [PID: 1292363] 2025-04-08-18:07:20.444.436 Getting socket times out. Reason: Remote Rank did not "
     "send the data in time. Please check the reason for the rank being stuck\n"
     "        Solution: 1. Check the rank service processes with other errors or no errors in the sim.2. If "
     "this error is reported for all NPUs, check whether the time difference between the earliest and latest "
     "errors is greater than the connect timeout interval (120s by default). If so, adjust the timeout interval "
     "by using the HCCL_CONNECT_TIMEOUT environment variable.3. Check the connectivity of the communication link "
     "between nodes. (For example, run the 'hccn_tool -i $devid -tls -g' command to check the TLS status of each "
     "NPU).",
     "hccl-socket-timeout", {"pid": 1292363}),
    ("ei0006-5461",
     "[ERROR] Get_Socket_Timeout(EI0006): Reason: 1. The remote does not initiate a connect request. 3. The "
     "communication link is disconnected. (For example, the IP addresses are not on the same network segment or "
     "the TLS configurations are inconsistent.)",
     "hccl-socket-timeout", {}),
    ("ei0006-solution-only",  # a tail that cut the EI0006 line itself keeps its Solution text
     "        Solution: 1. Check the rank service processes with other errors or no errors in the cluster.2. If this "
     "error is reported for all NPUs, check whether the time difference between the earliest and latest errors is "
     "greater than the connect timeout interval (120s by default). If so, adjust the timeout interval by using the "
     "HCCL_CONNECT_TIMEOUT environment variable.3. Check the connectivity",
     "hccl-socket-timeout", {}),
    ("ei0006-9447",
     "Communication_Error_Get_Socket(EI0006): Reason: No abnormal periods were discovered. please prioritize "
     "investigating the consistency of cluster script behaviors.",
     "hccl-socket-timeout", {}),
    ("ei0006-plog",
     "[ERROR] HCCL(3051,python3):2025-11-04-09:12:33.101.202 [Wait][LinkEstablish]wait socket establish timeout, "
     "role[1] rank[1] timeout[120 s]",
     "hccl-socket-timeout", {"values.timeout_s": "120", "values.rank": "1"}),
    ("ei0006-link-table",  # plog LINK_ERROR_INFO row (#9447): dest_ip(user_rank) | dest_port | src | ... | TlsStatus
     "| dest_ip(user_rank) | dest_port | src_ip(user_rank) | src_port | MyRole | Status | TlsStatus |\n"
     "| 192.0.2.199(0) | 16666 | 192.0.3.198(1) | 0 | client | time out | DISABLE |",
     "hccl-socket-timeout", {"ip": "192.0.2.199", "port": 16666, "values.tls": "DISABLE"}),
    ("ei0015-real",
     "EI0015: [PID: 77] 2025-05-01-12:00:00.000.000 Failed to collect cluster information of the communicator "
     "based on rootInfo detection. Reason: connect server[10.0.0.1 : 60000] failed",
     "hccl-rootinfo-timeout", {"ip": "10.0.0.1", "port": 60000}),
    ("ei0015-sim",
     "(EngineCore_DP1 pid=5151) EI0015: [PID: 5151] 2026-12-01-09:30:00.123.456 Failed to collect cluster "
     "information of the communicator based on rootInfo detection. Reason: topo exchange agent get socket timeout! "
     "timeout[120]",
     "hccl-rootinfo-timeout", {"values.timeout_s": "120"}),
    ("ei0001-real", "EI0001: Value 1000 for environment variable HCCL_RDMA_SL is invalid. Expected value : range[0, 7].",
     "hccl-env-invalid", {"values.var": "HCCL_RDMA_SL", "values.value": "1000"}),
    ("ei0001-sim",
     "(EngineCore_DP0 pid=5150) EI0001: [PID: 5150] 2026-12-01-09:30:00.123.456 Value 10.9.9.9 for environment "
     "variable HCCL_IF_IP is invalid. Expected value: an IP address of this host.",
     "hccl-env-invalid", {"values.var": "HCCL_IF_IP", "values.value": "10.9.9.9",
                          "values.expected": "an IP address of this host"}),
    # --- gloo ----------------------------------------------------------------------------------
    ("gloo-warn-real",
     "[W ProcessGroupGloo.cpp:715] Warning: Unable to resolve hostname to a (local) address. Using the loopback "
     "address as fallback. Manually set the network interface to bind to with GLOO_SOCKET_IFNAME. "
     "(function operator())",
     "gloo-loopback", {}),
    ("gloo-mesh-real",
     "RuntimeError: Gloo connectFullMesh failed with [../third_party/gloo/gloo/transport/tcp/pair.cc:144] no error "
     "... Connection refused, remote=[127.0.0.1]",
     "gloo-loopback", {"ip": "127.0.0.1"}),
    ("gloo-sim",
     "(EngineCore_DP0 pid=88) [W1201 09:30:00.123456789 ProcessGroupGloo.cpp:715] Warning: Unable to resolve "
     "hostname to a (local) address. Using the loopback address as fallback. Manually set the network interface to "
     "bind to with GLOO_SOCKET_IFNAME. (function operator())\n"
     "(EngineCore_DP0 pid=88) RuntimeError: Gloo connectFullMesh failed with [/pytorch/third_party/gloo/gloo/"
     "transport/tcp/pair.cc:152] timed out connecting: SO_ERROR: Connection refused, remote=[127.0.0.1]:29500",
     "gloo-loopback", {"ip": "127.0.0.1", "port": 29500}),
    ("gloo-nic-sim",
     "(EngineCore_DP0 pid=88) RuntimeError: [enforce fail at ../third_party/gloo/gloo/transport/tcp/device.cc:83] "
     "ifa != nullptr. Unable to find address for: eth9",
     "gloo-nic-missing", {"values.nic": "eth9"}),
    # --- ports ---------------------------------------------------------------------------------
    ("kv-zmq-real",
     "Mooncake KVCacheSendingThread exception: Address already in use (addr='tcp://141.61.39.105:20002')",
     "kv-side-channel-in-use", {"ip": "141.61.39.105", "port": 20002}),
    ("kv-zmq-sim",
     "(EngineCore_DP0 pid=91) ERROR 12-01 09:30:00 [mooncake_connector.py:314] Mooncake KVCacheSendingThread "
     "encountered exception. Thread: tp_rank=0, pp_rank=0, listening_path=tcp://127.0.1.1:30000. Error: Address "
     "already in use (addr='tcp://127.0.1.1:30000')\n"
     "(EngineCore_DP0 pid=91) zmq.error.ZMQError: Address already in use (addr='tcp://127.0.1.1:30000')",
     "kv-side-channel-in-use", {"ip": "127.0.1.1", "port": 30000}),
    ("zmq-rpc-sim", "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.1.1:13389')",
     "zmq-address-in-use", {"ip": "127.0.1.1", "port": 13389}),
    ("zmq-assign-sim", "zmq.error.ZMQError: Cannot assign requested address (addr='tcp://10.9.9.9:13389')",
     "zmq-cannot-assign", {"ip": "10.9.9.9", "port": 13389}),
    ("http-sim", "OSError: [Errno 98] Address already in use", "http-port-in-use", {}),
    ("http-uvicorn",
     "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already in use",
     "http-port-in-use", {"ip": "0.0.0.0", "port": 8000}),
    ("hccl-listen-real",
     "[ERROR] HCCL(3051,python3):2025-11-04-09:12:33.101.202 [HcclSocket][Listen] socket listen on ip[192.168.1.8] "
     "and specific port[16666] fail, the port is being used by other process",
     "hccl-port-busy", {"ip": "192.168.1.8", "port": 16666}),
    ("ei0019-real",
     "EI0019: Failed to enable listening for the host network adapter socket. Reason: The IP address 192.168.1.100 "
     "and port 50001 have already been bound.",
     "hccl-port-busy", {"ip": "192.168.1.100", "port": 50001}),
    # --- memory / buffers -----------------------------------------------------------------------
    ("hbm-real",
     "ValueError: Free memory on device (8.0/64.0 GiB) on startup is less than desired GPU memory utilization "
     "(0.9, 57.6 GiB)",
     "hbm-held", {"values.free_gib": "8.0", "values.want_gib": "57.6"}),
    ("hbm-sim",
     "(EngineCore_DP0 pid=93) ValueError: Free memory on device (6.07/60.7 GiB) on startup is less than desired GPU "
     "memory utilization (0.9, 54.63 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
     "processes.",
     "hbm-held", {"values.free_gib": "6.07", "values.total_gib": "60.7", "values.util": "0.9"}),
    ("buffsize-real",
     "[ERROR] 2025-12-01 EZ9999: Inner Error! HCCL_BUFFSIZE is too SMALL, maxBs = 256, h = 7168, epWorldSize = 32, "
     "localMoeExpertNum = 8, tokenNeedSizeDispatch = 7296, tokenNeedSizeCombine = 14336, k = 8, "
     "NEEDED_HCCL_BUFFSIZE(((maxBs * tokenNeedSizeDispatch) + (maxBs * tokenNeedSizeCombine * k) + 3MB) * 2) = "
     "609MB, HCCL_BUFFSIZE=200MB.",
     "hccl-buffsize-small", {"values.needed_mb": "609", "values.current_mb": "200", "values.suggest_mb": "640"}),
    ("buffsize-old", "EZ9999: The DDR address of the MTE instruction is out of range.", "hccl-buffsize-small", {}),
    # --- timeouts --------------------------------------------------------------------------------
    ("ready-real-old", "TimeoutError: Timed out waiting for engines to send initial message on input socket.",
     "engine-ready-timeout", {}),
    ("ready-sim",
     "TimeoutError: Timed out waiting for engine core processes to start. This is often caused by slow weight "
     "loading for large models. Waited 600s (configured by VLLM_ENGINE_READY_TIMEOUT_S). To increase the timeout, "
     "set the environment variable: VLLM_ENGINE_READY_TIMEOUT_S=<seconds>",
     "engine-ready-timeout", {"values.waited_s": "600"}),
    ("handshake-sim",
     "(EngineCore_DP1 pid=95) RuntimeError: Did not receive response from front-end process within 5 minutes",
     "frontend-handshake-timeout", {"values.minutes": "5"}),
    ("dist-sim",
     "(EngineCore_DP0 pid=96) torch.distributed.DistNetworkError: The client socket has timed out after 600000ms "
     "while trying to connect to (127.0.1.1, 13345).",
     "dist-connect-timeout", {"ip": "127.0.1.1", "port": 13345}),
    ("tcpstore-sim",
     "(EngineCore_DP2 pid=97) [W1201 09:30:00.123456789 TCPStore.cpp:125] [c10d] recvValue failed on "
     "SocketImpl(fd=42, addr=[127.0.1.2]:43042, remote=[127.0.1.1]:13345): Failed to recv, got 0 bytes. Connection "
     "was likely closed. Did the remote server shutdown or crash?",
     "tcpstore-closed", {"ip": "127.0.1.1", "port": 13345}),
    ("rpc-real", "ERROR 08-28 06:06:54 [core.py:502] TimeoutError: RPC call to execute_model timed out.",
     "rpc-timeout", {"values.method": "execute_model"}),
    ("rpc-shm-real",  # vllm-ascend #2264: shm_broadcast acquire_read raises a bare TimeoutError
     "ERROR 08-07 07:04:32 [core.py:588]     raise TimeoutError\nERROR 08-07 07:04:32 [core.py:588] TimeoutError\n"
     "ERROR 08-07 07:04:32 [core.py:588] ",
     "rpc-timeout", {}),
    # --- configuration -----------------------------------------------------------------------------
    ("kvcfg-dp-sim",
     "ValueError: KV transfer 'decode' config has a conflicting data parallel size. Expected 16, but got 32.",
     "kv-extra-config-mismatch", {"values.role": "decode", "values.key": "dp_size", "values.expected": "16",
                                  "values.got": "32"}),
    ("kvcfg-tp-sim",
     "ValueError: KV transfer 'prefill' config has a conflicting tensor parallel size. Expected 8, but got 4.",
     "kv-extra-config-mismatch", {"values.role": "prefill", "values.key": "tp_size"}),
    ("kv-tp-order-sim",
     "(EngineCore_DP0 pid=98) ValueError: prefill_tp_size: 1 must be greater than or equal to the decode_tp_size: 2",
     "kv-tp-order", {"values.prefill_tp": "1", "values.decode_tp": "2"}),
    ("ranktabl-real",
     "[RanktablCheck] 'device ip' is not set correctly, must be set when multi Server or HCCL INTRA ROCE ENABLE "
     "enabled",
     "hccn-conf-missing", {}),
    ("ranktabl-sim",
     "(EngineCore_DP0 pid=99) [ERROR] HCCL(99,python3):2026-12-01-09:30:00.123.456 [topoinfo_ranktableParser_pub.cc:"
     "1224][99][RanktablCheck] 'device ip' is not set correctly, must be set when multi Server or HCCL INTRA ROCE "
     "ENABLE enabled",
     "hccn-conf-missing", {"pid": 99}),
    ("server-id-real", "Can't read the target server_id 141.61.39.105 and device_rank 3 from rank table",
     "ranktable-server-id", {"ip": "141.61.39.105", "values.device_rank": "3"}),
    ("ranktable-unset-sim",
     "(EngineCore_DP0 pid=103) AssertionError: Please set path of rank_table to env variable "
     "DISAGGREGATED_PREFILL_RANK_TABLE_PATH", "ranktable-missing", {}),
    ("ranktable-absent-sim",
     "(EngineCore_DP0 pid=103) FileNotFoundError: [Errno 2] No such file or directory: "
     "'/var/tmp/deploy/pd/ranktable.json'", "ranktable-missing", {"values.path": "/var/tmp/deploy/pd/ranktable.json"}),
    ("ei0004-sim",
     "(EngineCore_DP0 pid=103) RuntimeError: EI0004: Failed to parse the ranktable file /var/tmp/deploy/pd/"
     "ranktable.json. Reason: server_count [3] is not equal to the number of servers in the table [2] [sim]",
     "ranktable-invalid", {"values.path": "/var/tmp/deploy/pd/ranktable.json"}),
    ("server-id-sim",
     "(EngineCore_DP0 pid=103) ValueError: Can't read the target server_id 127.0.1.2 and device_rank 0 from rank "
     "table", "ranktable-server-id", {"ip": "127.0.1.2", "values.device_rank": "0"}),
    ("devid-real", "ranktable config devId[1], but local devId[3]", "ranktable-devid-mismatch",
     {"device": 1, "values.local": "3"}),
    ("driver-real", "this package does not support hrtRaAiQpCreate for device, please change new package",
     "driver-too-old", {}),
    ("visible-sim",
     "[ERROR] RUNTIME(2818,python3):2026-12-01-09:30:00.123.456 [runtime.cc:5632]2818 GetVisibleDevices:[INIT]"
     "[DEFAULT]set ASCEND_RT_VISIBLE_DEVICES:[4] error, input data rang[0-2)",
     "visible-devices-invalid", {"values.visible": "4", "values.range": "0-2"}),
    ("cann-sim", "ImportError: libhccl.so: cannot open shared object file: No such file or directory",
     "cann-env-missing", {"values.lib": "libhccl.so"}),
    ("model-sim",
     "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
     "'/weights/missing'. Use `repo_type` argument if needed.",
     "model-path-missing", {"values.model": "/weights/missing"}),
    # --- Mooncake transfers ---------------------------------------------------------------------------
    ("mc-103900-real",
     "E1106 10:20:30.123456 12345 ascend_direct_transport.cpp:377] Failed to connect to target: 141.61.39.106:20033, "
     "status: 103900\nERROR 11-06 10:20:30 [mooncake_connector.py:727] Mooncake transfer failed for request "
     "cmpl-6f1c-0, ret: -1",
     "mooncake-connect-failed", {"ip": "141.61.39.106", "port": 20033, "values.status": "103900"}),
    ("mc-103900-sim",
     "(APIServer pid=100) E20261201 09:30:00 ascend_direct_transport.cpp:377] Failed to connect to target: "
     "127.0.1.1:30000, status: 103900\n(APIServer pid=100) ERROR 12-01 09:30:00 [mooncake_connector.py:727] Mooncake "
     "transfer failed for request cmpl-abc-0, ret: -1",
     "mooncake-connect-failed", {"ip": "127.0.1.1", "port": 30000}),
    ("mc-transfer-only", "ERROR 11-06 10:20:30 [mooncake_connector.py:727] Mooncake transfer failed for request "
     "cmpl-6f1c-0, ret: -1", "mooncake-connect-failed", {"values.request": "cmpl-6f1c-0"}),
    ("mc-103902-real",
     "Connect timeout to: 141.61.39.106:20033, you can increase the timeout duration to reduce the failure rate by "
     "configuring the ASCEND_CONNECT_TIMEOUT environment variable\nTransfer slice failed with status: 103902",
     "mooncake-connect-timeout", {"ip": "141.61.39.106", "port": 20033}),
    # --- engine death (process alive, /health 503) and the generic fallback ---------------------------
    ("dead-sim",
     "(EngineCore_DP0 pid=101) ERROR 12-01 09:30:00 [core.py:933] EngineCore encountered a fatal error.\n"
     "(EngineCore_DP0 pid=101) RuntimeError: ACL stream synchronize failed, error code:507018 (deploy sim fault "
     "engine-death)\n"
     "(APIServer pid=100) ERROR 12-01 09:30:00 [async_llm.py:480] AsyncLLM output_handler failed.\n"
     "(APIServer pid=100) vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack "
     "trace (above) for the root cause.",
     "engine-dead", {}),
    ("dead-health", 'INFO:     127.0.0.1:51234 - "GET /health HTTP/1.1" 503 Service Unavailable', "engine-dead", {}),
    ("dead-real", "ERROR 05-16 03:38:10 [core.py:398] EngineCore encountered a fatal error.", "engine-dead", {}),
    ("init-failed-sim",
     "(EngineCore_DP0 pid=102) RuntimeError: engine core crashed at start-up (deploy sim fault crash-at-start)\n"
     "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): "
     "{'EngineCore_DP0': 1}",
     "engine-init-failed", {"values.procs": "{'EngineCore_DP0': 1}"}),
]


def _get(f: Finding, key: str):
    if key.startswith("values."):
        return f.values.get(key[len("values."):])
    return getattr(f, key)


@pytest.mark.parametrize("label,text,sid,fields", CASES, ids=[c[0] for c in CASES])
def test_real_lines(label, text, sid, fields):
    found = match(text)
    assert found, f"{label}: nothing matched"
    first = found[0]
    assert first.id == sid, [f.id for f in found]
    for key, want in fields.items():
        assert _get(first, key) == want, (key, first)
    assert first.line and first.line in text and len(first.line) <= triage.LINE_MAX
    sig = next(s for s in SIGNATURES if s.id == sid)
    for name in triage._FIELD.findall(sig.cause + sig.fix):  # no "<ip>" left in what the operator reads
        assert f"<{name}>" not in first.cause + first.fix, (name, first)
    json.dumps(first.to_json())


def test_every_signature_has_a_case_and_a_matching_example():
    covered = {c[2] for c in CASES}
    ids = [s.id for s in SIGNATURES]
    assert len(ids) == len(set(ids)), "signature ids must be unique"
    assert set(ids) <= covered, set(ids) - covered
    for s in SIGNATURES:
        assert all(re.fullmatch(r"[a-z0-9-]+", s.id) for s in SIGNATURES)
        found = match(s.example)
        assert found and found[0].id == s.id, (s.id, [f.id for f in found])
        assert s.cause and s.fix and s.source


HEALTHY = """\
(APIServer pid=3101) INFO 12-01 09:30:00 [api_server.py:1885] vLLM API server version 0.11.0
(APIServer pid=3101) INFO 12-01 09:30:00 [utils.py:233] non-default args: {'model': '/weights/DeepSeek-V3.1', \
'host': '0.0.0.0', 'port': 8000, 'data_parallel_size': 2, 'kv_transfer_config': {'kv_connector': \
'MooncakeConnectorV1', 'kv_port': '30000'}}
(APIServer pid=3101) INFO 12-01 09:30:01 [utils.py:835] Started DP Coordinator process (PID: 3150)
(APIServer pid=3101) INFO 12-01 09:30:11 [utils.py:792] Waiting for 1 local, 1 remote core engine proc(s) to start.
(EngineCore_DP0 pid=3120) INFO 12-01 09:30:12 [default_loader.py:267] Loading weights took 2.01 seconds
(EngineCore_DP0 pid=3120) INFO 12-01 09:30:13 [mooncake_connector.py:303] KVCacheSendingThread started listening \
on path: tcp://127.0.1.1:30000. Thread: tp_rank=0, pp_rank=0, pcp_rank=0
(APIServer pid=3101) INFO 12-01 09:30:14 [api_server.py:1912] Starting vLLM API server 0 on http://0.0.0.0:8000
(APIServer pid=3101) INFO 12-01 09:30:14 [launcher.py:37] Route: /health, Methods: GET
(APIServer pid=3101) INFO 12-01 09:30:14 [launcher.py:37] Route: /v1/completions, Methods: POST
(APIServer pid=3101) INFO:     Started server process [3101]
(APIServer pid=3101) INFO:     Waiting for application startup.
(APIServer pid=3101) INFO:     Application startup complete.
(APIServer pid=3101) INFO:     127.0.0.1:51234 - "GET /health HTTP/1.1" 200 OK
(APIServer pid=3101) INFO:     127.0.0.1:51236 - "POST /v1/completions HTTP/1.1" 200 OK
INFO 12-01 09:30:00 [serve.py:236] Launching 2 data parallel engine(s) in headless mode, with head node address \
tcp://127.0.1.1:13389.
"""


def test_healthy_startup_log_gives_no_finding():
    assert match(HEALTHY) == []


def test_healthy_log_with_a_failure_appended_names_only_the_failure():
    found = match(HEALTHY + "RuntimeError: Did not receive response from front-end process within 5 minutes\n")
    assert [f.id for f in found] == ["frontend-handshake-timeout"]


def test_most_specific_first_and_fallback_silent():
    # the sim's TLS failure ends with the generic engine-init line: only the root cause is reported
    log = ("(EngineCore_DP0 pid=7) RuntimeError: InitHcclComm:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:135 "
           "HCCL function error: HcclCommInitRootInfoConfig(numRanks, &rootInfo, rank, config, &(comm->hcclComm_)), "
           "error code is 1\n" + CASES[1][1] + "\n"
           "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): "
           "{'EngineCore_DP0': 1}\n")
    assert [f.id for f in match(log)] == ["hccl-tls-mismatch"]
    # the kv side channel line supersedes the generic ZMQ line of the same traceback ...
    cases = dict((c[0], c[1]) for c in CASES)
    assert [f.id for f in match(cases["kv-zmq-sim"])] == ["kv-side-channel-in-use"]
    # ... but not a ZMQ failure on another port (the DP RPC port)
    both = [f.id for f in match(cases["kv-zmq-sim"] + "\n" + cases["zmq-rpc-sim"])]
    assert both == ["kv-side-channel-in-use", "zmq-address-in-use"]


def test_each_signature_once_latest_occurrence_and_limit():
    loop = "\n".join(
        f"[W1201 09:30:0{i}.1 TCPStore.cpp:125] [c10d] recvValue failed on SocketImpl(fd=4{i}, addr=[10.0.0.2]:1, "
        f"remote=[10.0.0.1]:1334{i}): Failed to recv, got 0 bytes. Connection was likely closed. Did the remote "
        "server shutdown or crash?" for i in range(5))
    found = match(loop)
    assert [f.id for f in found] == ["tcpstore-closed"] and found[0].port == 13344
    everything = "\n".join(c[1] for c in CASES)
    assert len(match(everything)) == 5
    many = match(everything, limit=100)
    assert len({f.id for f in many}) == len(many)
    order = [s.id for s in SIGNATURES]
    assert [order.index(f.id) for f in many] == sorted(order.index(f.id) for f in many)
    assert match(everything, limit=0) == [] and match("") == []


@pytest.mark.parametrize("port,npus,inside", [(20002, None, True), (30000, None, True), (30000, 8, False),
                                              (27999, 8, True), (36000, None, False), (13389, 16, False)])
def test_kv_port_inside_transfer_engine_range(port, npus, inside):
    line = f"zmq.error.ZMQError: Address already in use (addr='tcp://10.0.0.1:{port}')"
    (f,) = match(line, npus_per_node=npus)
    assert f.port == port
    assert ("random port range" in f.cause) == inside
    if inside:
        assert "kv_port >=" in f.fix and ("28000" in f.fix or "36000" in f.fix)
        assert "36000" in f.fix if npus in (None, 16) else "28000" in f.fix


def test_buffsize_fix_names_the_value_to_set():
    (f,) = match(dict((c[0], c[1]) for c in CASES)["buffsize-real"])
    assert "HCCL_BUFFSIZE=640" in f.fix and "200 MB" in f.cause and "609 MB" in f.cause


def test_tls_finding_names_the_odd_device():
    (f,) = match(CASES[1][1])
    assert "127.0.1.2 device 1" in f.cause and "-tls -s enable 0" in f.fix


def test_headline_names_node_and_device():
    cases = dict((c[0], c[1]) for c in CASES)
    (tls,) = match(cases["tls-sim"])
    assert tls.headline("d0", [0]).startswith("d0 (device 1 of 127.0.1.2): HCCL TLS switch differs")
    (hbm,) = match(cases["hbm-sim"])
    line = hbm.headline("n1", [2, 3])
    assert line.startswith("n1 (devices 2,3): NPU memory held") and "Fix: Find the holder with `npu-smi info`" in line
    (hs,) = match(cases["handshake-sim"])
    assert hs.headline("n2", [0]).startswith("n2: Engine core got no handshake")


def test_hbm_fix_points_at_npu_smi():
    (f,) = match(CASES[[c[0] for c in CASES].index("hbm-sim")][1])
    assert "npu-smi info" in f.fix and f.scope == "device"


def test_long_line_is_trimmed_around_the_match():
    line = "x" * 1000 + " OSError: [Errno 98] Address already in use " + "y" * 1000
    (f,) = match(line)
    assert len(f.line) == triage.LINE_MAX and "Address already in use" in f.line


def test_hostile_input_is_bounded():
    # one 4 MB line of signature prefixes: unbounded `.*` patterns would backtrack quadratically
    assert match("EI0016 Value x " * 300_000) == []
    # a huge tail: only the last SCAN_MAX characters are read, so the recent failure is still found
    (f,) = match("noise\n" * 400_000 + "OSError: [Errno 98] Address already in use\n")
    assert f.id == "http-port-in-use"
    assert match("OSError: [Errno 98] Address already in use\n" + "noise\n" * 400_000) == []


def test_ansi_colours_do_not_hide_a_line():
    (f,) = match("\x1b[1;31mOSError: [Errno 98] Address already in use\x1b[0m\r\n")
    assert f.id == "http-port-in-use" and "\x1b" not in f.line and not f.line.endswith("\r")


def test_docs_are_generated_from_the_table():
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert doc == render_markdown(), "regenerate: python -m orchestrator.triage > docs/troubleshooting.md"
    for s in SIGNATURES:
        assert f"## {s.id}" in doc and s.example in doc


# ---------------------------------------------------------------------------------------------------
# The simulator's fake vllm, run for real: its whole log (stdout + stderr, as `up` collects it) gives
# the finding, and a healthy start gives none. Guards against the table and the simulator drifting.

sim = _simv.cluster  # the fake vllm's own fixture (kills every process group it started)


def _ids(text: str) -> list[str]:
    return [f.id for f in match(text, limit=10)]


def test_sim_healthy_rank_and_its_requests_give_no_finding(sim):
    n = sim.node("n0", 1)
    p = sim.vllm(n, "--port", "7100", "-tp", "2", "--kv-transfer-config", kv("kv_producer", 36000, "0", p=(1, 2)),
                     ASCEND_RT_VISIBLE_DEVICES="0,1")
    wait_healthy(n.address, 7100)
    assert http_get(n.address, 7100, "/v1/models")[0] == 200
    text = p.wait_log("Application startup complete.")
    assert "Starting vLLM API server 0 on http://" in text
    assert match(text) == []


def test_sim_tls_mismatch_names_the_odd_device(sim):
    a, b = sim.node("d0", 1), sim.node("d1", 2, tls=1)
    r0 = _ext_rank(sim, a, 0, 2, a, 7100, 13000)
    r1 = _ext_rank(sim, b, 1, 2, a, 7101, 13000)
    assert r1.wait() == 1 and r0.wait() == 1
    for r in (r0, r1):
        (f,) = match(r.text())
        assert f.id == "hccl-tls-mismatch" and f.scope == "device"
        assert (f.ip, f.device) in {(a.address, 0), (b.address, 1)} and f.pid is None


def test_sim_hbm_held_and_port_bound(sim):
    n = sim.node("n0", 1)
    n.devices[0]["processes"] = [{"pid": os.getpid(), "name": "VLLM::EngineCore", "memory_mb": 60000}]
    n.devices[0]["hbm_used_mb"] = 63380
    n.write_state()
    p = sim.vllm(n, "--port", "7100", ASCEND_RT_VISIBLE_DEVICES="0")
    assert p.wait() == 1
    (f,) = match(p.text())
    assert f.id == "hbm-held" and f.values["free_gib"] == "2.11" and "npu-smi info" in f.fix
    s = socket.socket()
    s.bind((n.address, 7101))
    s.listen(1)
    try:
        p = sim.vllm(n, "--port", "7101", ASCEND_RT_VISIBLE_DEVICES="1")
        assert p.wait() == 1
        assert _ids(p.text()) == ["http-port-in-use"]
    finally:
        s.close()


def test_sim_kv_extra_config_mismatch(sim):
    n = sim.node("n0", 1)
    p = sim.vllm(n, "--port", "7100", "--data-parallel-size", "16", "--data-parallel-rank", "0",
                     "--data-parallel-address", n.address, "--data-parallel-rpc-port", "13000",
                     "--kv-transfer-config", kv("kv_consumer", 30200, "2", d=(32, 1)))
    assert p.wait() == 1
    (f,) = match(p.text())
    assert f.id == "kv-extra-config-mismatch"
    assert "kv_connector_extra_config.decode.dp_size to 16" in f.fix


def test_sim_gloo_loopback_and_handshake_and_ready_timeouts(sim):
    a, b = sim.node("d0", 1), sim.node("d1", 2)
    r0 = sim.vllm(a, "--port", "7100", "--data-parallel-size", "2", "--data-parallel-rank", "0",
                      "--data-parallel-address", a.address, "--data-parallel-rpc-port", "13000",
                      env=a.env(guard=False), log="nog-0.log")
    r1 = sim.vllm(b, "--port", "7101", "--data-parallel-size", "2", "--data-parallel-rank", "1",
                      "--data-parallel-address", a.address, "--data-parallel-rpc-port", "13000",
                      env=b.env(guard=False), log="nog-1.log")
    assert r0.wait() == 1 and r1.wait() == 1
    for r in (r0, r1):
        assert _ids(r.text()) == ["gloo-loopback"]
    # a rank whose front end (rank 0) never starts: the 5-minute handshake
    c = sim.node("d2", 3, time_factor=0.005)
    r = _ext_rank(sim, c, 1, 2, a, 7102, 13001)
    assert r.wait(timeout=15) == 1
    assert _ids(r.text()) == ["frontend-handshake-timeout"]
    # rank 0 alone: the front end's ready timeout
    d = sim.node("d3", 4, time_factor=0.002)
    r = _ext_rank(sim, d, 0, 2, d, 7103, 13002, VLLM_ENGINE_READY_TIMEOUT_S="600")
    assert r.wait(timeout=15) == 1
    f, *rest = match(r.text())  # its orphaned engine core then loops on the TCPStore: a consequence, after it
    assert f.id == "engine-ready-timeout" and f.values["waited_s"] == "600"
    assert [g.id for g in rest] in ([], ["tcpstore-closed"])


def test_sim_engine_death_while_running(sim):
    n = sim.node("n0", 1)
    p = sim.vllm(n, "--port", "7100", VLLM_KEEP_ALIVE_ON_ENGINE_DEATH="1")
    wait_healthy(n.address, 7100)
    n.set_faults("engine-death")
    deadline = time.monotonic() + 10
    while http_get(n.address, 7100, "/health")[0] != 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    text = p.wait_log("EngineDeadError")
    assert _ids(text) == ["engine-dead"] and p.p.poll() is None


def test_sim_llmdatadist_rank_table_failures(sim, tmp_path):
    n = sim.node("p0", 1)
    wrong = tmp_path / "ranktable-wrong.json"
    wrong.write_text(json.dumps(_table(n, "10.99.99.99")))
    r = _llmdd_rank(sim, n, wrong)
    assert r.wait() == 1
    (f,) = match(r.text())
    assert f.id == "ranktable-server-id" and f.ip == n.address and f.values["device_rank"] == "0"
    count = tmp_path / "ranktable-count.json"
    count.write_text(json.dumps(_table(n, n.devices[0]["ip"], server_count="2")))
    r = _llmdd_rank(sim, n, count)
    assert r.wait() == 1
    assert _ids(r.text()) == ["ranktable-invalid"]
    r = _llmdd_rank(sim, n, tmp_path / "ranktable.json")
    assert r.wait() == 1
    assert _ids(r.text()) == ["ranktable-missing"]
