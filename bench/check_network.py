"""check-network at scale against the manual way, in one run with interleaved rounds.

    python bench/check_network.py [--nodes 64] [--rounds 2] [--latencies 0,0.5] [--sshd openssh]

Starts `deploy sim` (real SSH servers on loopback) with A3 P/D nodes (16 devices each), then per
simulated ping latency (`sim up --ping-latency`, changed in place between the phases):
- latency 0 (CPU-bound), every round in a rotated order: `deploy check-network --json` (full),
  the manual baseline (bench/check_network_baseline.py: the seeds' loops, then the old ordered
  pings one after another per node), `check-network --no-ping`, the baseline's loops alone;
- other latencies: check-network full and `--no-ping` (the baseline's sequential pings would take
  minutes: 768 pings a prefill node at 0.5 s), against the limit
  1.2 x (most pings any one device sends x latency) + the collection round.
Every figure is a whole process's wall (Python start-up included on both sides). SSH connections
per check-network run are counted per node from the sshd logs (before/after), the machine's
load average is printed with every run. Prints a table and writes all figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def inventory(nodes: int, prefill_nodes: int, decode_group_nodes: int) -> dict:
    """A3 P/D like the V3.1 2P1D guide, scaled: one-node prefill groups (dp 2, tp 8) and
    decode groups of `decode_group_nodes` nodes (dp 16 per node, tp 1)."""
    names = [f"p{i}" for i in range(prefill_nodes)] + [f"d{i}" for i in range(nodes - prefill_nodes)]
    groups = [{"name": f"p{i}", "role": "prefill", "nodes": [f"p{i}"], "dp": 2, "tp": 8, "kv_port": 40000}
              for i in range(prefill_nodes)]
    decode = names[prefill_nodes:]
    for g in range(0, len(decode), decode_group_nodes):
        members = decode[g:g + decode_group_nodes]
        groups.append({"name": f"d{g // decode_group_nodes}", "role": "decode", "nodes": members,
                       "dp": 16 * len(members), "tp": 1, "kv_port": 40000})
    return {
        "name": "bench-cn", "soc": "a3",
        "nodes": {n: {"host": f"10.{i // 250}.{i % 250}.1", "nic": "eth0"} for i, n in enumerate(names)},
        "container": {"image": "quay.io/ascend/vllm-ascend:v0.18.0-a3"},
        "model": {"path": "/weights/DeepSeek-V3.1-w8a8-mtp-QuaRot"},
        "kv_transfer": {"connector": "MooncakeConnectorV1"},
        "groups": groups, "proxy": {"node": "p0", "port": 1999},
    }


def deploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True)


def connections(sim: Path) -> Counter:
    """node -> SSH sessions its sshd has accepted so far (OpenSSH logs; empty for embedded)."""
    out: Counter = Counter()
    for log in sim.glob("nodes/*/sshd/*.log"):
        out[log.parent.parent.name] += len(re.findall(r"Accepted publickey", log.read_text(errors="replace")))
    return out


def set_latency(sim: Path, seconds: float) -> None:
    """What `sim up --ping-latency S` sets, changed on the running sim (every node's state)."""
    from orchestrator.sim.state import load_state, node_lock, save_state

    for ndir in sorted((sim / "nodes").iterdir()):
        with node_lock(ndir):
            st = load_state(ndir)
            st.ping_latency_s = seconds
            save_state(ndir, st)


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess, float]:
    """(wall, the process, its CPU seconds: the client's own, not the nodes')."""
    c0, t0 = os.times(), time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    wall, c1 = time.perf_counter() - t0, os.times()
    return wall, p, (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)


def run_check(inv: str, sim: Path, no_ping: bool) -> dict:
    before = connections(sim)
    wall, p, cpu = timed([sys.executable, "-m", "orchestrator", "check-network", inv, "--json",
                     *(["--no-ping"] if no_ping else [])])
    rep = json.loads(p.stdout)
    delta = connections(sim) - before
    per_dev = Counter((x["src"], x["src_device"]) for x in rep["pings"])
    return {"what": "check-network --no-ping" if no_ping else "check-network", "wall": wall, "client_cpu": cpu,
            "exit": p.returncode, "pings": len(rep["pings"]), "failed": sum(not x["ok"] for x in rep["pings"]),
            "busy_retries": sum(x["busy_retries"] for x in rep["pings"]),
            "max_per_device": max(per_dev.values(), default=0), "checks": len(rep["checks"]),
            "ssh_per_node": sorted(set(delta[n] for n in rep["nodes"])) if before or delta else None}


def run_baseline(inv: str, sim: Path, collect_only: bool, shell: str) -> dict:
    wall, p, cpu = timed([sys.executable, str(REPO / "bench" / "check_network_baseline.py"), inv,
                     "--sim-dir", str(sim), "--shell", shell, *(["--collect-only"] if collect_only else [])])
    if p.returncode:
        sys.exit(f"baseline failed: {p.stderr}")
    res = json.loads(p.stdout)
    name = "baseline loops only" if collect_only else "baseline"
    return {"what": name + ("" if shell == "bash" else f" ({shell})"), "wall": wall, "client_cpu": cpu,
            "inner_wall": res["wall"],
            "pings": res["pings"], "bytes": res["bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sshd", default="openssh", choices=["openssh", "embedded"])
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--prefill-nodes", type=int, default=16)
    ap.add_argument("--decode-group-nodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latencies", default="0,0.5", help="comma-separated seconds per simulated ping")
    ap.add_argument("--baseline-shell", default="bash", choices=["bash", "sh"])
    ap.add_argument("--out", default=None, help="write every figure here as JSON")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cn-", dir="/tmp"))
    work.chmod(0o755)
    src = work / "inventory.yaml"
    src.write_text(yaml.safe_dump(inventory(a.nodes, a.prefill_nodes, a.decode_group_nodes), sort_keys=False))
    sim = work / "sim"
    t0 = time.perf_counter()
    up = deploy("sim", "up", str(src), "--dir", str(sim), "--sshd", a.sshd)
    if up.returncode:
        sys.exit(f"sim up failed: {up.stderr}")
    print(f"sim up: {a.nodes} A3 nodes ({a.sshd}) in {time.perf_counter() - t0:.1f}s; load {os.getloadavg()}",
          flush=True)
    inv = up.stdout.strip().splitlines()[-1]
    rows: list[dict] = []
    try:
        for lat in (float(x) for x in a.latencies.split(",")):
            set_latency(sim, lat)
            runs = [lambda: run_check(inv, sim, False), lambda: run_check(inv, sim, True)]
            if lat == 0:
                runs[1:1] = [lambda: run_baseline(inv, sim, False, a.baseline_shell)]
                runs.append(lambda: run_baseline(inv, sim, True, a.baseline_shell))
            for r in range(a.rounds):
                for k in range(len(runs)):
                    fn = runs[(k + r) % len(runs)]  # rotated: no kind always runs first
                    load = os.getloadavg()[0]
                    row = fn() | {"latency": lat, "round": r + 1, "load1": load}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        deploy("sim", "down", "--dir", str(sim))
    summarize(rows)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


def summarize(rows: list[dict]) -> None:
    def best(what: str, lat: float) -> float | None:
        walls = [r["wall"] for r in rows if r["what"] == what and r["latency"] == lat]
        return min(walls) if walls else None

    for lat in sorted({r["latency"] for r in rows}):
        full, noping = best("check-network", lat), best("check-network --no-ping", lat)
        print(f"latency {lat:g} s: check-network {full:.2f} s, --no-ping {noping:.2f} s (best of rounds)")
        if lat == 0:
            base = [r["what"] for r in rows if r["what"].startswith("baseline") and "loops" not in r["what"]]
            if base:
                bw = best(base[0], 0)
                bc = best(base[0].replace("baseline", "baseline loops only"), 0)
                print(f"  baseline {bw:.2f} s, its loops alone {bc:.2f} s")
                print(f"  full / baseline = {full / bw:.2f} (target <= 0.75); "
                      f"--no-ping / baseline loops = {noping / bc:.2f} (target <= 1.05)")
        else:
            most = max(r["max_per_device"] for r in rows if r["what"] == "check-network" and r["latency"] == lat)
            limit = 1.2 * most * lat + noping
            print(f"  most pings one device sends: {most}; limit 1.2 x {most} x {lat:g} + {noping:.2f} = "
                  f"{limit:.2f} s; full / limit = {full / limit:.2f} (target <= 1)")


if __name__ == "__main__":
    main()
