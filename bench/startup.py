"""CLI start-up: `deploy --help` and `deploy plan <example>` against `python3 -c 'import asyncssh'`.

    python bench/startup.py [--rounds 21] [--example inventories/dsv31-a3-2p1d.yaml] [--json FILE]

Issue 13's target: process start to exit of each deploy command ≤ 1.5 × that of importing
asyncssh, on the same machine. Every command is a whole process started with `posix_spawn` by
this interpreter (not a pyenv shim, which alone costs more than the commands), stdout/stderr to
/dev/null (so `plan` renders its rich table for a non-terminal, as when piped), with this
checkout first on PYTHONPATH. One warm-up round (page cache, .pyc) is not counted; then
`rounds` rounds in which every command runs once, the order rotating every round so that other
work on a shared machine falls on all of them alike. Reported: median wall (spawn to `wait4`),
median CPU (user + sys of the process), the ratio of the medians to the baseline's, and the
load the machine showed (load average, and the share of the CPUs busy during the rounds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "import asyncssh"


def commands(example: str) -> dict[str, list[str]]:
    py = sys.executable
    return {
        BASELINE: [py, "-c", "import asyncssh"],
        "deploy --help": [py, "-m", "orchestrator", "--help"],
        f"deploy plan {Path(example).name}": [py, "-m", "orchestrator", "plan", example],
        f"deploy plan --json {Path(example).name}": [py, "-m", "orchestrator", "plan", "--json",
                                                      example],
    }


def busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, CPU s, exit status) of one process."""
    actions = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
    t0 = time.monotonic()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status, ru = os.wait4(pid, 0)
    return time.monotonic() - t0, ru.ru_utime + ru.ru_stime, os.waitstatus_to_exitcode(status)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--example", default=str(REPO / "inventories" / "dsv31-a3-2p1d.yaml"))
    ap.add_argument("--json", dest="json_out", help="also write every run here")
    a = ap.parse_args()

    cmds = commands(a.example)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    names = list(cmds)
    for name in names:  # warm-up
        _, _, rc = run(cmds[name], env)
        if rc != 0:
            print(f"{name}: exit {rc}", file=sys.stderr)
            return 1
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    load_before = float(Path("/proc/loadavg").read_text().split()[0])
    busy0, total0 = busy_seconds()
    for rnd in range(a.rounds):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            wall, cpu, rc = run(cmds[name], env)
            if rc != 0:
                print(f"{name}: exit {rc}", file=sys.stderr)
                return 1
            runs[name].append((wall, cpu))
    busy1, total1 = busy_seconds()
    load_after = float(Path("/proc/loadavg").read_text().split()[0])
    ours = sum(c for rs in runs.values() for _, c in rs)
    cpus = os.cpu_count() or 1
    others = max(0.0, (busy1 - busy0) - ours) / max(1e-9, (total1 - total0) / cpus)

    med = {n: (statistics.median(w for w, _ in rs), statistics.median(c for _, c in rs))
           for n, rs in runs.items()}
    base_wall, base_cpu = med[BASELINE]
    print(f"{a.rounds} interleaved rounds, {cpus} CPUs, Python {sys.version.split()[0]}; load "
          f"average {load_before:.1f} before, {load_after:.1f} after; other work kept "
          f"{others:.2f} of {cpus} cores busy meanwhile\n")
    print("| command | median wall s (min–max) | × import asyncssh | median CPU s | × import asyncssh | target |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for n, rs in runs.items():
        wall, cpu = med[n]
        walls = [w for w, _ in rs]
        ratio = wall / base_wall
        target = "" if n == BASELINE else ("met" if ratio <= 1.5 else "MISSED") + " (≤ 1.5× wall)"
        print(f"| `{n}` | {wall:.3f} ({min(walls):.3f}–{max(walls):.3f}) | {ratio:.2f} | "
              f"{cpu:.3f} | {cpu / base_cpu:.2f} | {target} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({
            "rounds": a.rounds, "cpus": cpus, "python": sys.version, "load_before": load_before,
            "load_after": load_after, "other_cores_busy": others,
            "commands": cmds, "runs": runs, "medians": med}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
