"""Shared by run.py (main environment) and the tool scripts (their own venvs): stdlib only.

The workload, identical for every tool: connect to every host, run

    sh -c 'echo hello; uname -r; cat /etc/hostname'

once per host (the exact command string the sim's sshd receives; `deploy exec` builds the same
string from its argv with shlex.join), and check that every host answered `hello` and the
kernel release. The simulated nodes are this machine, so the expected release is our own.
"""
from __future__ import annotations

import json
import os
import shlex
import sys

SCRIPT = "echo hello; uname -r; cat /etc/hostname"
ARGV = ["sh", "-c", SCRIPT]
COMMAND = shlex.join(ARGV)  # sh -c 'echo hello; uname -r; cat /etc/hostname'


def load_hosts(path: str) -> dict:
    """hosts.json written by run.py: {hosts: [addr...], names: [...], user, port,
    identity_file, known_hosts}."""
    with open(path) as f:
        return json.load(f)


def expected_release() -> str:
    return os.uname().release


def check_outputs(per_host: dict[str, tuple[int | None, str]], hosts: list[str]) -> dict:
    """per_host: host -> (exit status, stdout). Every host must answer exactly once with
    rc 0, `hello` and our kernel release (and a non-empty hostname line)."""
    release = expected_release()
    bad = {}
    for h in hosts:
        if h not in per_host:
            bad[h] = "no answer"
            continue
        rc, out = per_host[h]
        lines = out.splitlines()
        if rc != 0:
            bad[h] = f"rc={rc}"
        elif len(lines) != 3 or lines[0] != "hello" or lines[1] != release or not lines[2]:
            bad[h] = f"unexpected output {out[:80]!r}"
    extra = sorted(set(per_host) - set(hosts))
    return {"ok": not bad and not extra, "hosts_ok": len(hosts) - len(bad),
            "hosts": len(hosts), "bad": dict(list(bad.items())[:5]), "extra": extra[:5]}


def emit(per_host: dict[str, tuple[int | None, str]]) -> None:
    """What the library-tool scripts print: one JSON object, host -> [rc, stdout]."""
    print(json.dumps({h: [rc, out] for h, (rc, out) in per_host.items()}))


def parse_emitted(stdout: str) -> dict[str, tuple[int | None, str]]:
    line = stdout.strip().splitlines()[-1] if stdout.strip() else "{}"
    return {h: (rc, out) for h, (rc, out) in json.loads(line).items()}


def check_emitted(stdout: str, stderr: str, cfg: dict) -> dict:
    """run.py's check for tools that print their results with `emit`."""
    return check_outputs(parse_emitted(stdout), cfg["hosts"])


def run_tool(main) -> None:
    """A tool script's entry: hosts file in argv[1], results emitted, exit 0 only if all ok."""
    cfg = load_hosts(sys.argv[1])
    results = main(cfg)
    emit(results)
    sys.exit(0 if check_outputs(results, cfg["hosts"])["ok"] else 1)
