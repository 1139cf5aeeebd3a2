"""Benchmark: `deploy up` of a 4-node, 64-rank P/D deployment on the simulator, and teardown to
verified-free. Not a test: run by hand, it prints its figures.

    python bench/up.py [--sshd openssh|embedded] [--startup 2.0] [--runs 2]

Inventory: 4 simulated A3 nodes x 16 devices; prefill group p (DP32 x TP1 over p0, p1) and
decode group d (DP32 x TP1 over d0, d1): 64 `vllm serve` ranks, a proxy on p0.

Figures:
- up wall: the whole `deploy up --json` process (imports, check-network, containers, launch,
  readiness, proxy, smoke);
- slowest rank's own start-up: max over ranks of (ready - started) from the ledger, i.e. from
  the moment deploy started the process to the first /health 200 deploy saw (so it includes up
  to one readiness poll of detection lag);
- deploy adds = up wall - slowest rank's start-up (target < 5 s);
- teardown wall: `deploy teardown --json` to its per-node proof (target < 5 s);
- per step seconds from the JSON, to see where the time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INVENTORY = """\
name: bench-up-64
soc: a3
nodes:
  p0: {host: 10.0.0.1, nic: eth0}
  p1: {host: 10.0.0.2, nic: eth0}
  d0: {host: 10.0.0.3, nic: eth0}
  d1: {host: 10.0.0.4, nic: eth0}
container: {image: quay.io/ascend/vllm-ascend:v0.18.0-a3, mounts: ["/weights:/weights"]}
model: {path: /weights/DeepSeek-V3.1-w8a8-mtp-QuaRot, served_name: deepseek_v3}
kv_transfer: {connector: MooncakeConnectorV1}
groups:
  - {name: p, role: prefill, nodes: [p0, p1], dp: 32, tp: 1, kv_port: 40000, port: 7100}
  - {name: d, role: decode, nodes: [d0, d1], dp: 32, tp: 1, kv_port: 40100, port: 7100}
proxy: {node: p0, port: 1999}
readiness: {timeout: 600}
"""


def cli(*args: str, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=1800)
    return time.monotonic() - t0, p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sshd", default="openssh" if Path("/usr/sbin/sshd").exists() else "embedded")
    ap.add_argument("--startup", default="2.0", help="seconds each simulated rank takes to load")
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-up-", dir="/tmp"))
    work.chmod(0o755)
    env = {"DEPLOY_STATE_DIR": str(work / "state")}
    try:
        (work / "inv.yaml").write_text(INVENTORY)
        _, p = cli("sim", "up", str(work / "inv.yaml"), "--dir", str(work / "sim"), "--sshd", a.sshd,
                   "--startup", a.startup, env=env)
        if p.returncode:
            print(p.stderr)
            return 1
        inv = p.stdout.strip().splitlines()[-1]
        print(f"sim: 4 A3 nodes ({a.sshd}), 64 ranks, startup {a.startup}s per rank")
        for run in range(1, a.runs + 1):
            t_up, p = cli("up", inv, "--json", env=env)
            doc = json.loads(p.stdout)
            if not doc["ok"]:
                print(json.dumps(doc, indent=1)[:3000])
                return 1
            ledger = json.loads((work / "state" / "bench-up-64" / "ledger.json").read_text())
            own = max(r["ready"] - r["started"] for r in ledger["ranks"].values() if r.get("ready"))
            steps = {}
            for s in doc["steps"]:
                steps[s["step"]] = steps.get(s["step"], 0.0) + s["seconds"]
            t_td, p2 = cli("teardown", inv, "--json", env=env)
            td = json.loads(p2.stdout)
            print(f"run {run}: up {t_up:.2f}s, slowest rank's own start-up {own:.2f}s, deploy adds "
                  f"{t_up - own:.2f}s; teardown to verified-free {t_td:.2f}s (clean: {td['ok']})")
            print("   up steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items()))
            tds = {s["step"]: s["seconds"] for s in td["steps"]}
            print("   teardown steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in tds.items()))
        return 0
    finally:
        cli("sim", "down", "--dir", str(work / "sim"), env=env)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
