"""CPU and memory of an idle 64-rank 2P1D simulation (issue 9 item 5: < 10 % CPU, < 4 GiB RSS).

    python bench/sim_runtime.py [--sshd embedded|openssh] [--window 20] [--startup 1]

Starts `deploy sim` with 4 A3 nodes shaped like the V3.1 2P1D guide at 64 ranks: prefill groups
p0 and p1 (one node each, dp 16, tp 1) and decode group d over d0 and d1 (dp 32, 16 per node,
tp 1), proxy on p0. Brings it up by hand with tests/test_sim_runtime_e2e.py's Deployment (the
`docker run` and the scripts of `deploy plan --script NODE`, over `deploy exec`), waits until every rank's /health
is 200 and the proxy answers, then measures every process of the sim (found by DEPLOY_SIM_ROOT,
as `sim down` finds them) over an idle window: CPU time (utime + stime from /proc/PID/stat) and
memory (sum of RSS, and of PSS, which counts shared pages once). Then `sim down`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_sim_runtime_e2e import Deployment, deploy

from orchestrator.sim.processes import sim_processes

NAME = "bench64"
INVENTORY = f"""\
name: {NAME}
soc: a3
nodes:
  p0: {{host: 10.9.0.1, nic: eth0}}
  p1: {{host: 10.9.0.2, nic: eth0}}
  d0: {{host: 10.9.0.3, nic: eth0}}
  d1: {{host: 10.9.0.4, nic: eth0}}
container: {{image: quay.io/ascend/vllm-ascend:v0.11.0rc1-a3, mounts: ["/mnt/weights:/mnt/weights"]}}
model: {{path: /mnt/weights/DeepSeek-V3.1-w8a8, served_name: deepseek_v3}}
args: {{trust-remote-code: true}}
kv_transfer: {{connector: MooncakeConnectorV1}}
groups:
  - {{name: p0, role: prefill, nodes: [p0], dp: 16, tp: 1, port: 7100, dp_rpc_port: 12321, kv_port: 36000}}
  - {{name: p1, role: prefill, nodes: [p1], dp: 16, tp: 1, port: 7100, dp_rpc_port: 12321, kv_port: 37000}}
  - {{name: d, role: decode, nodes: [d0, d1], dp: 32, dp_local: 16, tp: 1, port: 7200, dp_rpc_port: 12421,
      kv_port: 38000}}
proxy: {{node: p0, port: 1999}}
"""
TICK = os.sysconf("SC_CLK_TCK")


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except Exception:
        return 0


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total


def memory_kb(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sshd", default="embedded", choices=["embedded", "openssh"])
    ap.add_argument("--window", type=float, default=20.0, help="idle seconds measured")
    ap.add_argument("--startup", default="1")
    args = ap.parse_args()
    t0 = time.monotonic()
    d = Deployment(args.sshd, INVENTORY, startup=args.startup, time_factor="1")
    try:
        d.bring_up(["d0", "d1", "p0", "p1"])  # the decode group's master first
        plan = json.loads(deploy("plan", d.inventory, "--json").stdout)
        urls = [f"http://{r['host']}:{r['port']}/health" for r in plan["ranks"] if r.get("port")]
        urls.append(f"http://{plan['proxy']['host']}:{plan['proxy']['port']}/healthcheck")
        deadline = time.monotonic() + 600
        while (waiting := [u for u in urls if get(u) != 200]) and time.monotonic() < deadline:
            time.sleep(1)
        assert not waiting, f"not healthy: {waiting[:5]}"
        ready = time.monotonic() - t0
        time.sleep(2)  # let start-up settle
        pids = sim_processes(d.root)
        c0, w0 = cpu_ticks(pids), time.monotonic()
        time.sleep(args.window)
        pids1 = sim_processes(d.root)
        c1, w1 = cpu_ticks(pids1), time.monotonic()
        rss, pss = memory_kb(pids1)
        cpu = (c1 - c0) / TICK / (w1 - w0)
        ncpu = os.cpu_count() or 1
        print(f"ranks {len(plan['ranks'])}, processes {len(pids1)}, all healthy {ready:.1f} s after sim up "
              f"({args.sshd})")
        print(f"idle CPU over {w1 - w0:.0f} s: {cpu * 100:.1f} % of one core ({cpu * 100 / ncpu:.1f} % of {ncpu} cores)")
        print(f"memory: RSS sum {rss / 1024 / 1024:.2f} GiB, PSS sum {pss / 1024 / 1024:.2f} GiB")
    finally:
        d.down()


if __name__ == "__main__":
    main()
