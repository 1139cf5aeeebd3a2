"""Fan-out benchmark: `deploy exec` against Fabric, pyinfra, parallel-ssh, Ansible and raw asyncssh.

    python bench/fanout/run.py [--sizes 10,50,100,200] [--reps 10=5,50=5,100=3,200=3]
                               [--tools deploy,asyncssh,...] [--cap ansible-command@200=2]

Run it with the main environment's python (the one `deploy` is installed in). It

1. creates bench/fanout/.venvs/<venv> for every tool that lacks one (pip install, see VENVS);
2. per host count: starts `deploy sim up --nodes N --soc a2 --sshd openssh` in a fresh
   /tmp/fanout-bench-* dir, runs every tool once untimed (warm-up: page cache, .pyc), then
   `reps` rounds in which every tool runs once (the order rotates each round), each run a whole
   process under measure.py (wall, CPU of the process tree); before/after each run it counts the
   "Accepted publickey" lines in every node's sshd.log, measures the sim's sshd CPU, and checks
   the tool's output (tools/common.py: every host answered `hello` and our kernel release); a
   run starts only once the machine is idle and is repeated if other work shared the CPUs
   meanwhile (wait_quiet, FOREIGN_*); stops the sim (`deploy sim down`, in a finally);
3. writes bench/fanout/results.json (every run, plus medians) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOOLS_DIR = HERE / "tools"
VENVS_DIR = HERE / ".venvs"
sys.path.insert(0, str(TOOLS_DIR))

import ansible_adhoc  # noqa: E402
import asyncssh_raw  # noqa: E402  (imports asyncssh at module level: present in the main env)
import common  # noqa: E402
import deploy_exec  # noqa: E402

sys.path.insert(0, str(HERE))
import fabric_group  # noqa: E402
import measure  # noqa: E402  (its /proc helpers; it also runs as a script)
import pssh_client  # noqa: E402
import pyinfra_exec  # noqa: E402

VENVS = {  # venv name -> pip requirements (the issue's specs)
    "asyncssh": ["asyncssh"],
    "parallel-ssh": ["parallel-ssh"],
    "fabric": ["fabric>=3"],
    "pyinfra": ["pyinfra>=3"],
    "ansible": ["ansible-core"],
}
DISTS = {"asyncssh": ["asyncssh", "cryptography"],
         "parallel-ssh": ["parallel-ssh", "ssh2-python", "gevent"],
         "fabric": ["fabric", "paramiko", "invoke", "cryptography"],
         "pyinfra": ["pyinfra", "paramiko", "gevent"],
         "ansible": ["ansible-core"]}
BASELINE, BASELINE_DEPLOY_ALGS, DEPLOY = "asyncssh", "asyncssh-deploy-algs", "deploy"
DEPLOY_COLD = "deploy-cold"
DEFAULT_REPS = {10: 5, 50: 5, 100: 3, 200: 3}
TIMEOUT = 900.0  # s per run


@dataclass
class Ctx:
    """One host count: the sim and the files every tool reads."""
    work: Path
    cfg: dict            # hosts.json contents + "inventory"
    hosts_json: Path
    files: dict = field(default_factory=dict)


@dataclass
class Tool:
    key: str
    label: str
    venv: str | None
    argv: Callable[[Ctx, Path], list[str]]  # (ctx, run dir) -> argv
    check: Callable[[str, str, dict], dict]
    env: Callable[[Ctx, Path], dict] = lambda ctx, rd: {}
    prepare: Callable[[Ctx], None] = lambda ctx: None


def vpy(venv: str) -> str:
    return str(VENVS_DIR / venv / "bin" / "python")


def _pyinfra_prepare(ctx: Ctx) -> None:
    ctx.files["pyinfra_inventory"] = ctx.work / "pyinfra_inventory.py"
    pyinfra_exec.write_inventory(ctx.cfg, str(ctx.files["pyinfra_inventory"]))


def _ansible_prepare(ctx: Ctx) -> None:
    ctx.files["ansible_inventory"] = ctx.work / "ansible_inventory.ini"
    ansible_adhoc.write_inventory(ctx.cfg, str(ctx.files["ansible_inventory"]))


def _ansible_env(variant: str) -> Callable[[Ctx, Path], dict]:
    def env(ctx: Ctx, rd: Path) -> dict:
        (rd / "cp").mkdir(exist_ok=True)
        (rd / "tmp").mkdir(exist_ok=True)
        return ansible_adhoc.env(variant, str(rd / "cp"), str(rd / "tmp"))
    return env


TOOLS = [
    Tool(DEPLOY, "deploy exec", None,
         lambda ctx, rd: deploy_exec.argv(ctx.cfg, sys.executable), deploy_exec.check,
         env=lambda ctx, rd: {"DEPLOY_STATE_DIR": str(ctx.work / "deploy-state")}),
    # the first exec on a new or changed inventory: nothing remembered, full validation
    Tool(DEPLOY_COLD, "deploy exec, first run (inventory not cached)", None,
         lambda ctx, rd: deploy_exec.argv(ctx.cfg, sys.executable), deploy_exec.check,
         env=lambda ctx, rd: {"DEPLOY_STATE_DIR": str(rd / "deploy-state")}),
    Tool(BASELINE, "raw asyncssh (default algs)", "asyncssh",
         lambda ctx, rd: [vpy("asyncssh"), str(TOOLS_DIR / "asyncssh_raw.py"),
                          str(ctx.hosts_json), "--algs", "default"], asyncssh_raw.check),
    Tool(BASELINE_DEPLOY_ALGS, "raw asyncssh (curve25519 + aes128-gcm)", "asyncssh",
         lambda ctx, rd: [vpy("asyncssh"), str(TOOLS_DIR / "asyncssh_raw.py"),
                          str(ctx.hosts_json), "--algs", "deploy"], asyncssh_raw.check),
    Tool("parallel-ssh", "parallel-ssh", "parallel-ssh",
         lambda ctx, rd: [vpy("parallel-ssh"), str(TOOLS_DIR / "pssh_client.py"),
                          str(ctx.hosts_json)], pssh_client.check),
    Tool("fabric", "Fabric ThreadingGroup", "fabric",
         lambda ctx, rd: [vpy("fabric"), str(TOOLS_DIR / "fabric_group.py"),
                          str(ctx.hosts_json)], fabric_group.check),
    Tool("pyinfra", "pyinfra exec", "pyinfra",
         lambda ctx, rd: pyinfra_exec.argv(ctx.cfg, str(VENVS_DIR / "pyinfra"),
                                           str(ctx.files["pyinfra_inventory"])),
         pyinfra_exec.check, prepare=_pyinfra_prepare),
    Tool("ansible-raw", "Ansible ad-hoc, raw", "ansible",
         lambda ctx, rd: ansible_adhoc.argv(ctx.cfg, str(VENVS_DIR / "ansible"),
                                            str(ctx.files["ansible_inventory"]), "raw"),
         ansible_adhoc.check, env=_ansible_env("raw"), prepare=_ansible_prepare),
    Tool("ansible-command", "Ansible ad-hoc, command module (pipelining)", "ansible",
         lambda ctx, rd: ansible_adhoc.argv(ctx.cfg, str(VENVS_DIR / "ansible"),
                                            str(ctx.files["ansible_inventory"]), "command"),
         ansible_adhoc.check, env=_ansible_env("command"), prepare=_ansible_prepare),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- venvs


def ensure_venvs(names: set[str]) -> dict:
    versions = {}
    for name in sorted(names):
        venv = VENVS_DIR / name
        marker = venv / ".bench-installed"
        if not marker.exists():
            log(f"venv {venv}: creating, pip install {' '.join(VENVS[name])}")
            if venv.exists():
                shutil.rmtree(venv)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                            "--disable-pip-version-check", *VENVS[name]], check=True)
            marker.write_text(" ".join(VENVS[name]) + "\n")
        code = ("import importlib.metadata as m, json, sys; print(json.dumps({d: m.version(d) "
                "for d in sys.argv[1:]}))")
        out = subprocess.run([vpy(name), "-c", code, *DISTS[name]], check=True,
                             capture_output=True, text=True).stdout
        versions[name] = json.loads(out)
    return versions


def main_env_versions() -> dict:
    import importlib.metadata as m
    return {d: m.version(d) for d in ("deploy-ascend", "asyncssh", "cryptography", "click",
                                      "pydantic", "tenacity", "rich")}


# ---------------------------------------------------------------- sim


def deploy_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, check=check)


def sim_up(work: Path, n: int) -> Ctx:
    p = deploy_cli("sim", "up", "--nodes", str(n), "--soc", "a2", "--dir", str(work / "sim"),
                   "--sshd", "openssh")
    inv_path = p.stdout.strip().splitlines()[-1]
    inv = yaml.safe_load(Path(inv_path).read_text())
    manifest = json.loads((work / "sim" / "sim.json").read_text())
    names = sorted(inv["nodes"], key=lambda s: int(s[1:]))
    cfg = {"inventory": inv_path, "names": names,
           "hosts": [inv["nodes"][nm]["host"] for nm in names],
           "user": inv["ssh"]["user"], "port": inv["ssh"]["port"],
           "identity_file": inv["ssh"]["identity_file"], "known_hosts": inv["ssh"]["known_hosts"],
           "listener_pids": [manifest["nodes"][nm]["pid"] for nm in names],
           "sshd_logs": [str(Path(manifest["nodes"][nm]["node_dir"]) / "sshd" / "sshd.log")
                         for nm in names]}
    hosts_json = work / "hosts.json"
    hosts_json.write_text(json.dumps(cfg))
    return Ctx(work, cfg, hosts_json)


def sim_down(work: Path) -> str:
    p = deploy_cli("sim", "down", "--dir", str(work / "sim"), check=False)
    return (p.stdout + p.stderr).strip()


class AcceptCounter:
    """'Accepted publickey' lines per node, read incrementally from every sshd.log."""

    def __init__(self, logs: list[str]):
        self.logs = logs
        self.offsets = [0] * len(logs)
        self.counts = [0] * len(logs)
        self.read()

    def read(self) -> list[int]:
        for i, path in enumerate(self.logs):
            with open(path, "rb") as f:
                f.seek(self.offsets[i])
                data = f.read()
            end = data.rfind(b"\n") + 1  # count whole lines only
            self.counts[i] += data[:end].count(b"Accepted publickey")
            self.offsets[i] += end
        return list(self.counts)


def children_of(listeners: set[int]) -> int:
    """Processes (zombies too) whose parent is a sim listener: connections being served."""
    return sum(1 for parent in measure.parents().values() if parent in listeners)


def settle(ctx: Ctx, timeout: float = 30.0, pause: float = 0.3) -> None:
    """Wait until the servers have finished with (and reaped) the previous run's connections."""
    parents = set(ctx.cfg["listener_pids"])
    deadline = time.monotonic() + timeout
    while children_of(parents) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(pause)


def cpu_times() -> tuple[float, float]:
    """Machine-wide (busy, steal) CPU seconds over all cores since boot, from /proc/stat.
    busy = user+nice+system+irq+softirq: our client, the sim's sshd, the kernel's loopback
    traffic, and anything else running on the machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / tck, v[7] / tck


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """When a client disconnects (SSH_MSG_DISCONNECT) instead of letting the session end, the
    sshd monitor exits without waiting for its post-auth child (`sshd: user@notty`, which has
    reaped the session's commands): the child ends up an orphan, re-parented to PID 1, and its
    CPU never reaches the listener's cutime. As a child subreaper, this process inherits such
    orphans instead (and the sim's listeners, which daemonize), reaps them with wait4 and
    counts their CPU as the sim's server CPU."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()  # fields from 3 (state) on


def reap_orphans(keep: set[int], timeout: float = 10.0) -> float:
    """Reap our children that are not `keep` (the listeners): the sessions sshd orphaned.
    Waits (up to timeout) for live ones to end. Returns their CPU (self + reaped children)."""
    me, total = os.getpid(), 0.0
    deadline = time.monotonic() + timeout
    while True:
        live = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in keep or int(entry) == _current:
                continue
            f = _stat(int(entry))
            if f is None or int(f[1]) != me:
                continue
            if f[0] != b"Z":
                live += 1
                continue
            try:  # a zombie's /proc stat says 0; wait4's rusage has its CPU (+ its children's)
                _, _, ru = os.wait4(int(entry), 0)
                total += ru.ru_utime + ru.ru_stime
            except ChildProcessError:
                pass
        if not live or time.monotonic() > deadline:
            return total
        time.sleep(0.02)


def server_cpu(listeners: list[int]) -> float:
    """CPU of the sim's sshd listeners themselves (accept + fork of every connection is
    charged to them) and of the connections they have served and reaped (cutime+cstime)."""
    total = 0
    for pid in listeners:
        f = _stat(pid)
        if f is not None:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


QUIET_CORES = 0.15     # the machine counts as quiet below this many busy cores ...
QUIET_FOR = 1.0        # ... for this long (s) before a run starts
QUIET_MAX_WAIT = 600   # s; after that the run starts anyway (and says so)
FOREIGN_MAX = 0.12     # cores (after FOREIGN_ALLOW): a run during which other work used more is repeated
FOREIGN_ALLOW = 0.10   # s of unattributed CPU always allowed (kernel threads: loopback softirq, kworkers)
RETRIES = 4            # repeats of a contaminated run before it is kept as it is


SHARED = False  # --shared: start every run at once and keep it (see main)


def wait_quiet() -> float:
    """Wait until nothing else is using the CPUs (other people's tests share this machine)."""
    if SHARED:
        return 0.0
    start = time.monotonic()
    quiet_since = None
    prev = cpu_times()[0]
    while time.monotonic() - start < QUIET_MAX_WAIT:
        time.sleep(0.25)
        now = cpu_times()[0]
        cores = (now - prev) / 0.25
        prev = now
        if cores < QUIET_CORES:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= QUIET_FOR:
                break
        else:
            quiet_since = None
    return time.monotonic() - start


# ---------------------------------------------------------------- one run

_current: int | None = None  # pid of the measure.py running now


def run_once(ctx: Ctx, tool: Tool, rd: Path, counter: AcceptCounter) -> dict:
    """One measured run; repeated (up to RETRIES times) if other work shared the CPUs."""
    attempts = []
    for attempt in range(RETRIES + 1):
        rec = _run_once(ctx, tool, rd / f"a{attempt}" if attempt else rd, counter)
        rec["attempt"] = attempt
        if not rec["contaminated"] or SHARED:
            break
        attempts.append({k: rec[k] for k in ("wall", "cpu", "foreign_cores", "attempt")})
        log(f"      {tool.key}: {rec['foreign_cores']:.2f} cores of other work during the run "
            f"({rec['wall']:.2f}s), repeating")
    rec["discarded_attempts"] = attempts
    return rec


def _run_once(ctx: Ctx, tool: Tool, rd: Path, counter: AcceptCounter) -> dict:
    global _current
    rd.mkdir(parents=True, exist_ok=True)
    settle(ctx)
    waited = wait_quiet()
    before = counter.read()
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(tool.env(ctx, rd))
    argv = tool.argv(ctx, rd)
    loadavg = Path("/proc/loadavg").read_text().split()[0]
    listeners = ctx.cfg["listener_pids"]
    reap_orphans(set(listeners))
    srv0 = server_cpu(listeners)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0, steal0 = cpu_times()
    t0 = time.monotonic()
    margv = [sys.executable, str(HERE / "measure.py"), str(rd / "measure.json"),
             str(rd / "stdout"), str(rd / "stderr"), str(rd), str(TIMEOUT), "--", *argv]
    _current = os.posix_spawn(margv[0], margv, env)
    _, _, mru = os.wait4(_current, 0)
    _current = None
    settle(ctx, pause=0)  # the servers finish this run's connections ...
    orphans = reap_orphans(set(listeners))  # ... and we reap what they left to us
    busy1, steal1 = cpu_times()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    span = time.monotonic() - t0
    srv = server_cpu(listeners) - srv0 + orphans
    ours = (mru.ru_utime + mru.ru_stime  # measure.py and the whole tool tree
            + self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime)
    m = json.loads((rd / "measure.json").read_text())
    after = counter.read()
    per_node = [a - b for a, b in zip(after, before)]
    stdout = (rd / "stdout").read_text(errors="replace")
    stderr = (rd / "stderr").read_text(errors="replace")
    try:
        chk = tool.check(stdout, stderr, ctx.cfg)
    except Exception as e:  # unparsable output is a failed run, not a crash of the bench
        chk = {"ok": False, "hosts_ok": 0, "hosts": len(ctx.cfg["hosts"]),
               "bad": {"*": f"cannot parse output: {type(e).__name__}: {e}"}}
    n = len(ctx.cfg["hosts"])
    ok = chk["ok"] and m["rc"] == 0 and not m["timed_out"]
    # what else ran meanwhile: machine busy time minus the tool, measure.py, run.py and sshd
    foreign = max(0.0, (busy1 - busy0) - ours - srv)
    rec = {"tool": tool.key, "hosts": n, "ok": ok, "rc": m["rc"], "timed_out": m["timed_out"],
           "wall": m["wall"], "cpu": m["cpu"], "cpu_user": m["tree_user"],
           "cpu_sys": m["tree_sys"], "cpu_main": m["main_user"] + m["main_sys"],
           "cpu_per_host_ms": 1000 * m["cpu"] / n, "max_rss_kib": m["max_rss_kib"],
           "server_cpu": srv, "server_cpu_per_host_ms": 1000 * srv / n,
           "conns": sum(per_node), "conns_per_host": sum(per_node) / n,
           "conns_node_min": min(per_node), "conns_node_max": max(per_node),
           "machine_busy_cpu": busy1 - busy0, "bench_overhead_cpu": ours - m["cpu"],
           "steal": steal1 - steal0,
           "foreign_cpu": foreign, "foreign_cores": foreign / span,
           "contaminated": foreign > FOREIGN_ALLOW + FOREIGN_MAX * span, "quiet_wait": waited,
           "loadavg_before": float(loadavg), "strays": len(m["strays"]), "check": chk,
           "run_dir": str(rd)}
    if not ok:
        rec["stderr_tail"] = stderr[-2000:]
    return rec


# ---------------------------------------------------------------- summary


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(runs: list[dict], sizes: list[int], keys: list[str]) -> list[dict]:
    rows = []
    for n in sizes:
        by = {k: [r for r in runs if r["hosts"] == n and r["tool"] == k and r.get("timed")]
              for k in keys}
        med = {k: median([r["wall"] for r in rs if r["ok"]]) for k, rs in by.items()}
        med_cpu = {k: median([r["cpu_per_host_ms"] for r in rs if r["ok"]])
                   for k, rs in by.items()}
        for k in keys:
            rs = by[k]
            good = [r for r in rs if r["ok"]]

            def ratio(base: str, table: dict = med, k: str = k) -> float | None:
                return table[k] / table[base] if table.get(k) and table.get(base) else None

            # paired: this run against the same round's baseline run
            paired = []
            for r in good:
                mate = [b for b in by.get(BASELINE, []) if b["round"] == r["round"] and b["ok"]]
                if mate:
                    paired.append(r["wall"] / mate[0]["wall"])
            conns = sorted({r["conns_per_host"] for r in good})
            rows.append({
                "hosts": n, "tool": k, "runs": len(rs), "ok_runs": len(good),
                "wall_median": med[k], "wall_min": min((r["wall"] for r in good), default=None),
                "wall_max": max((r["wall"] for r in good), default=None),
                "x_asyncssh": ratio(BASELINE), "x_asyncssh_deploy_algs": ratio(BASELINE_DEPLOY_ALGS),
                "x_deploy": ratio(DEPLOY), "x_asyncssh_paired_median": median(paired),
                "cpu_per_host_ms": med_cpu[k],
                "cpu_x_asyncssh": ratio(BASELINE, med_cpu),
                "cpu_x_asyncssh_deploy_algs": ratio(BASELINE_DEPLOY_ALGS, med_cpu),
                "conns_per_host": conns,
                "conns_every_node_exactly_1": bool(good) and all(
                    r["conns_node_min"] == r["conns_node_max"] == 1 for r in good),
                "server_cpu_per_host_ms": median([r["server_cpu_per_host_ms"] for r in good]),
                "foreign_cores_max": max((r["foreign_cores"] for r in good), default=None),
                "kept_contaminated": sum(r["contaminated"] for r in good),
                "discarded_attempts": sum(len(r["discarded_attempts"]) for r in rs),
            })
    return rows


def fits(rows: list[dict], keys: list[str]) -> list[dict]:
    """Client CPU = fixed + per_host x hosts, least squares over the host counts' medians:
    separates start-up (imports, inventory) from the per-connection cost."""
    out = []
    for k in keys:
        pts = [(r["hosts"], r["cpu_per_host_ms"] * r["hosts"]) for r in rows
               if r["tool"] == k and r["cpu_per_host_ms"] is not None]
        if len(pts) < 2:
            continue
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        b = (sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts))
        out.append({"tool": k, "fixed_ms": my - b * mx, "per_host_ms": b,
                    "points": [{"hosts": x, "cpu_ms": y} for x, y in pts]})
    return out


def fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def table(rows: list[dict], labels: dict[str, str]) -> str:
    out = ["| hosts | tool | runs ok | median wall s (min–max) | × raw asyncssh | "
           "× raw asyncssh (deploy algs) | × deploy exec | client CPU/host ms | conns/host | "
           "sshd CPU/host ms |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rng = (f" ({fmt(r['wall_min'], '.2f')}–{fmt(r['wall_max'], '.2f')})"
               if r["wall_min"] is not None else "")
        conns = "/".join(format(c, "g") for c in r["conns_per_host"]) or "—"
        out.append(f"| {r['hosts']} | {labels[r['tool']]} | {r['ok_runs']}/{r['runs']} | "
                   f"{fmt(r['wall_median'], '.2f')}{rng} | {fmt(r['x_asyncssh'], '.2f')} | "
                   f"{fmt(r['x_asyncssh_deploy_algs'], '.2f')} | {fmt(r['x_deploy'], '.2f')} | "
                   f"{fmt(r['cpu_per_host_ms'], '.1f')} | {conns} | "
                   f"{fmt(r['server_cpu_per_host_ms'], '.1f')} |")
    return "\n".join(out)


TARGETS = {10: (1.30, 1.30), 100: (1.10, 1.30), 200: (1.10, 1.30)}  # hosts: (wall, CPU/host) × raw


def targets(rows: list[dict]) -> list[str]:
    """Issue 13's targets for `deploy exec` against raw asyncssh (both algorithm sets)."""
    lines = []
    for r in rows:
        if r["tool"] not in (DEPLOY, DEPLOY_COLD) or r["hosts"] not in TARGETS:
            continue
        max_wall, max_cpu = TARGETS[r["hosts"]]
        w, wd = r["x_asyncssh"], r["x_asyncssh_deploy_algs"]
        c, cd = r["cpu_x_asyncssh"], r["cpu_x_asyncssh_deploy_algs"]
        ok_w = w is not None and wd is not None and max(w, wd) <= max_wall
        ok_c = c is not None and cd is not None and max(c, cd) <= max_cpu
        what = "deploy exec" if r["tool"] == DEPLOY else "deploy exec, first run"
        lines.append(
            f"- {r['hosts']} hosts, {what}: wall {fmt(w, '.2f')}× / {fmt(wd, '.2f')}× raw asyncssh "
            f"(default / deploy algs; target ≤ {max_wall:.2f}×: {'met' if ok_w else 'MISSED'}); "
            f"client CPU/host {fmt(c, '.2f')}× / {fmt(cd, '.2f')}× "
            f"(target ≤ {max_cpu:.2f}×: {'met' if ok_c else 'MISSED'}); "
            f"connections/host {r['conns_per_host']} (exactly 1 on every node every run: "
            f"{'met' if r['conns_every_node_exactly_1'] else 'MISSED'})")
    return lines


def load_seen(runs: list[dict]) -> list[str]:
    """What else ran on the machine meanwhile, per host count (medians over the timed runs)."""
    out = []
    for n in sorted({r["hosts"] for r in runs}):
        rs = [r for r in runs if r["hosts"] == n and r.get("timed")]
        if rs:
            out.append(f"- {n} hosts: load average before a run {median([r['loadavg_before'] for r in rs]):.1f} "
                       f"(max {max(r['loadavg_before'] for r in rs):.1f}); other people's work during a "
                       f"run {median([r['foreign_cores'] for r in rs]):.2f} cores median "
                       f"(max {max(r['foreign_cores'] for r in rs):.2f}) of 2")
    return out


# ---------------------------------------------------------------- main


def parse_map(text: str) -> dict[int, int]:
    return {int(a): int(b) for a, b in (kv.split("=") for kv in text.split(",") if kv)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,50,100,200")
    ap.add_argument("--reps", default=",".join(f"{k}={v}" for k, v in DEFAULT_REPS.items()),
                    help="rounds per host count, e.g. 10=5,50=5,100=3,200=3")
    ap.add_argument("--tools", default=",".join(t.key for t in TOOLS))
    ap.add_argument("--cap", default="", help="fewer rounds for a tool at a size, "
                    "e.g. ansible-command@200=2 (the tool sits out the later rounds)")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--keep", action="store_true", help="keep the /tmp work dirs")
    ap.add_argument("--shared", action="store_true",
                    help="a machine others are using: do not wait for it to be idle or repeat "
                         "runs others disturbed; every tool is disturbed alike in the interleaved "
                         "rounds, and each run records the load it saw")
    a = ap.parse_args()
    global SHARED
    SHARED = a.shared

    sizes = [int(s) for s in a.sizes.split(",")]
    reps = {**DEFAULT_REPS, **parse_map(a.reps)}
    caps = {}
    for item in filter(None, a.cap.split(",")):
        key, rest = item.split("@")
        size, n = rest.split("=")
        caps[(key, int(size))] = int(n)
    keys = a.tools.split(",")
    tools = [t for t in TOOLS if t.key in keys]
    unknown = set(keys) - {t.key for t in TOOLS}
    if unknown:
        ap.error(f"unknown tools {sorted(unknown)}; known: {[t.key for t in TOOLS]}")

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    become_subreaper()

    versions = ensure_venvs({t.venv for t in tools if t.venv})
    versions["main"] = main_env_versions()
    transport = (REPO / "orchestrator" / "transport.py").read_bytes()
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(),
                    "sshd": subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True,
                                           text=True).stderr.strip()},
        "git": {"head": subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                                       capture_output=True, text=True).stdout.strip(),
                "dirty": subprocess.run(["git", "--no-optional-locks", "-C", str(REPO),
                                         "status", "--porcelain", "--", "orchestrator"],
                                        capture_output=True, text=True).stdout.split("\n"),
                "transport_py_sha256": hashlib.sha256(transport).hexdigest()},
        "versions": versions, "command": common.COMMAND, "sizes": sizes,
        "reps": {n: reps[n] for n in sizes}, "caps": {f"{k}@{n}": v for (k, n), v in caps.items()},
        "tools": {t.key: t.label for t in tools}, "runs": [], "sims": {},
    }
    failed_any = False
    try:
        for n in sizes:
            work = Path(tempfile.mkdtemp(prefix=f"fanout-bench-{n}-", dir="/tmp"))
            work.chmod(0o755)
            log(f"== {n} hosts: sim in {work}")
            try:
                t0 = time.monotonic()
                ctx = sim_up(work, n)
                doc["sims"][n] = {"dir": str(work), "up_seconds": time.monotonic() - t0}
                counter = AcceptCounter(ctx.cfg["sshd_logs"])
                for t in tools:
                    t.prepare(ctx)
                for t in tools:  # warm-up, not timed into the results
                    rec = run_once(ctx, t, work / "runs" / t.key / "warmup", counter)
                    rec.update(round=-1, timed=False)
                    doc["runs"].append(rec)
                    log(f"   warm-up {t.key:22s} {rec['wall']:7.2f}s ok={rec['ok']}")
                for rnd in range(reps[n]):
                    order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]
                    for t in order:
                        if rnd >= caps.get((t.key, n), reps[n]):
                            continue
                        rec = run_once(ctx, t, work / "runs" / t.key / f"r{rnd}", counter)
                        rec.update(round=rnd, timed=True)
                        doc["runs"].append(rec)
                        failed_any |= not rec["ok"]
                        log(f"   r{rnd} {t.key:22s} {rec['wall']:7.2f}s "
                            f"cpu {rec['cpu']:6.2f}s conns/host {rec['conns_per_host']:g} "
                            f"ok={rec['ok']}" + ("" if rec["ok"] else f" {rec['check']}"))
            finally:
                if _current is not None:
                    os.kill(_current, signal.SIGTERM)
                    os.waitpid(_current, 0)
                msg = sim_down(work)
                reap_orphans(set(), timeout=5)
                log(f"   sim down: {msg.splitlines()[-1] if msg else '?'}")
                doc["sims"].setdefault(n, {})["down"] = msg
            if not a.keep and not failed_any:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        rows = summarize(doc["runs"], [n for n in sizes if n in doc["sims"]], [t.key for t in tools])
        doc["summary"] = rows
        doc["targets"] = targets(rows)
        doc["load_seen"] = load_seen(doc["runs"])
        doc["shared"] = a.shared
        doc["cpu_fit"] = fits(rows, [t.key for t in tools])
        Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
        labels = {t.key: t.label for t in tools}
        print(table(rows, labels))
        print()
        print("\n".join(doc["targets"]))
        print()
        print("\n".join(doc["load_seen"]))
        print()
        print("| tool | client CPU fixed ms | client CPU per host ms |\n| --- | ---: | ---: |")
        for f in doc["cpu_fit"]:
            print(f"| {labels[f['tool']]} | {f['fixed_ms']:.0f} | {f['per_host_ms']:.2f} |")
        log(f"results: {a.out}")
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
