"""check-network at scale: 64 simulated A3 nodes x 16 devices, the full planned ping set.

    python bench/check_network.py [--sshd openssh|embedded] [--prefill-nodes 16]

Starts `deploy sim` (real SSH servers on loopback), runs the real CLI
`deploy check-network --json` as a whole process, reports its wall time, the pings it ran, and
the SSH connections each node accepted (counted from the sshd logs), then stops the sim.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml


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
                       "dp": 16 * decode_group_nodes, "tp": 1, "kv_port": 40000})
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sshd", default="openssh", choices=["openssh", "embedded"])
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--prefill-nodes", type=int, default=16)
    ap.add_argument("--decode-group-nodes", type=int, default=8)
    ap.add_argument("--no-ping", action="store_true")
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
    print(f"sim up: {a.nodes} A3 nodes ({a.sshd}) in {time.perf_counter() - t0:.1f}s")
    inv = up.stdout.strip().splitlines()[-1]
    try:
        t0 = time.perf_counter()
        p = deploy("check-network", inv, "--json", *(["--no-ping"] if a.no_ping else []))
        wall = time.perf_counter() - t0
        rep = json.loads(p.stdout)
        print(f"check-network: exit {p.returncode}, {wall:.2f}s wall, {len(rep['nodes'])} nodes, "
              f"{len(rep['checks'])} checks, {len(rep['pings'])} pings ({sum(not x['ok'] for x in rep['pings'])} failed)")
        conns = Counter()
        for log in sim.glob("nodes/*/sshd/*.log"):
            conns[log.parent.parent.name] = len(re.findall(r"Accepted publickey", log.read_text(errors="replace")))
        per = Counter(conns.values())
        print(f"SSH connections per node (sshd logs): {dict(per)}" if conns else "SSH connections: no sshd logs (embedded)")
    finally:
        deploy("sim", "down", "--dir", str(sim))


if __name__ == "__main__":
    main()
