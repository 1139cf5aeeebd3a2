"""`deploy exec` as a user runs it: the whole CLI process, in the main environment.

    python -m orchestrator exec SIM/inventory.yaml --json -- sh -c 'echo hello; uname -r; cat /etc/hostname'

Its settings are the inventory's: ssh.parallel 64 handshakes at a time, 8 per host, host_keys
accept-new against the sim's known_hosts (pre-filled, so every key is checked), connect_timeout 10.
It writes its per-node logs and result.json under $DEPLOY_STATE_DIR (run.py points that at the
bench work dir), as it always does.
"""
import json
import sys

import common


def argv(cfg: dict, python: str = sys.executable) -> list[str]:
    return [python, "-m", "orchestrator", "exec", cfg["inventory"], "--json", "--", *common.ARGV]


def check(stdout: str, stderr: str, cfg: dict) -> dict:
    doc = json.loads(stdout)
    addr = dict(zip(cfg["names"], cfg["hosts"]))
    per_host = {addr[n]: (r["rc"] if r["status"] == "ok" else None, r["stdout"])
                for n, r in doc["nodes"].items()}
    return common.check_outputs(per_host, cfg["hosts"])
