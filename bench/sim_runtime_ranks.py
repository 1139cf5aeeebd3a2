"""Benchmark (not a test): N fake `vllm serve` ranks idle, the resource bound of issue 9.

Starts one external-LB DP group of N ranks (default 64) over N/16 simulated nodes on loopback,
waits until every /health is 200, then measures over --seconds: the summed RSS and the CPU of every
process the ranks started (front ends and VLLM::EngineCore children), then stops them with SIGTERM
and checks that no HBM claim is left. Bound: under 10 % of one core and 4 GiB RSS in total.

    python3 bench/sim_runtime_ranks.py [--ranks 64] [--seconds 20]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "orchestrator" / "sim" / "runtime"


def group_pids(pgids: set[int]) -> list[int]:
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                st = open(f"/proc/{e}/stat").read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(st[2]) in pgids and st[0] not in ("Z", "X"):
                out.append(int(e))
    return out


def cpu_ticks(pids: list[int]) -> int:
    t = 0
    for p in pids:
        try:
            st = open(f"/proc/{p}/stat").read().rpartition(")")[2].split()
            t += int(st[11]) + int(st[12])
        except OSError:
            pass
    return t


def rss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            total += next(int(line.split()[1]) for line in open(f"/proc/{p}/status") if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sim-runtime-bench-"))
    subnet = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    nodes = []
    for i in range((a.ranks + 15) // 16):
        d = root / f"n{i}"
        (d / "runtime").mkdir(parents=True)
        devs = [{"id": k, "ip": f"10.{k}.{i}.11", "tls_switch": 0, "hbm_total_mb": 65536, "hbm_used_mb": 3380,
                 "processes": []} for k in range(16)]
        (d / "state.json").write_text(json.dumps({"name": f"n{i}", "address": f"{subnet}.{i + 1}", "nic": "eth0",
                                                  "devices": devs}))
        (d / "runtime" / "config.json").write_text(json.dumps({"startup_s": 1.0, "time_factor": 1.0}))
        (d / "etc").mkdir()
        (d / "etc" / "hccn.conf").write_text("".join(f"address_{x['id']}={x['ip']}\n" for x in devs))
        nodes.append((d, f"{subnet}.{i + 1}"))
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ.setdefault('GLOO_SOCKET_IFNAME', 'eth0')\n")
    procs = []
    t0 = time.monotonic()
    for r in range(a.ranks):
        d, addr = nodes[r // 16]
        env = dict(os.environ, DEPLOY_SIM_NODE=str(d), ASCEND_TOOLKIT_HOME="/x", ATB_HOME_PATH="/y",
                   ASCEND_RT_VISIBLE_DEVICES=str(r % 16), HCCL_IF_IP=addr, GLOO_SOCKET_IFNAME="eth0",
                   PYTHONPATH=str(site))
        argv = [sys.executable, str(RUNTIME / "vllm.py"), "serve", str(model), "--host", "0.0.0.0", "--port",
                str(7100 + r % 16), "--data-parallel-size", str(a.ranks), "--data-parallel-rank", str(r),
                "--data-parallel-address", nodes[0][1], "--data-parallel-rpc-port", "13000",
                "--kv-transfer-config", json.dumps({"kv_connector": "MooncakeConnectorV1", "kv_role": "kv_consumer",
                                                    "kv_port": "36000", "engine_id": "0",
                                                    "kv_connector_extra_config": {"decode": {"dp_size": a.ranks,
                                                                                             "tp_size": 1}}})]
        procs.append(subprocess.Popen(argv, env=env, stdout=open(root / f"r{r}.log", "wb"), stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True))
    pending = set(range(a.ranks))
    while pending and time.monotonic() - t0 < 300:
        for r in list(pending):
            try:
                urllib.request.urlopen(f"http://{nodes[r // 16][1]}:{7100 + r % 16}/health", timeout=1)
                pending.discard(r)
            except OSError:
                pass
        time.sleep(0.5)
    ready_s = time.monotonic() - t0
    pgids = {p.pid for p in procs}
    time.sleep(2.0)
    pids = group_pids(pgids)
    c0, w0 = cpu_ticks(pids), time.monotonic()
    time.sleep(a.seconds)
    c1, w1 = cpu_ticks(pids), time.monotonic()
    hz = os.sysconf("SC_CLK_TCK")
    result = {"ranks": a.ranks, "healthy": a.ranks - len(pending), "ready_s": round(ready_s, 1),
              "processes": len(pids), "rss_mib": rss_kib(pids) // 1024,
              "idle_cpu_pct_of_one_core": round((c1 - c0) / hz / (w1 - w0) * 100, 2)}
    for p in procs:
        os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=30)
    time.sleep(0.5)
    left_claims = sum(len(list((d / "runtime" / "hbm").glob("*/*"))) for d, _ in nodes
                      if (d / "runtime" / "hbm").is_dir())
    result["processes_left"] = len(group_pids(pgids))
    result["claims_left"] = left_claims
    for g in pgids:
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(json.dumps(result))
    ok = (result["healthy"] == a.ranks and result["rss_mib"] < 4096 and result["idle_cpu_pct_of_one_core"] < 10
          and not result["processes_left"] and not left_claims)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
