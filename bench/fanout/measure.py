"""Run one command as a whole process and measure it; run.py starts one of these per tool run.

    python measure.py RESULT_JSON STDOUT_FILE STDERR_FILE CWD TIMEOUT -- ARGV...

- wall: from posix_spawn to the command's exit (os.wait4), i.e. what `time` at a shell shows.
- cpu: user+sys of the whole process tree. This process makes itself a child subreaper
  (PR_SET_CHILD_SUBREAPER), so descendants that outlive or daemonize away from the command
  (Ansible's ControlPersist ssh masters) are re-parented here instead of to PID 1; after the
  command exits they are stopped (SIGTERM, SIGKILL after 5 s) and reaped, and
  getrusage(RUSAGE_CHILDREN) then holds the CPU of every process the command started.
  `main_*` is os.wait4's rusage of the command (itself + the children it reaped); `cpu` (the
  figure reported) is the tree's: RUSAGE_CHILDREN after minus before the spawn.
- The command runs in its own session (setsid), so a timeout kills all of it.

The result is one JSON object in RESULT_JSON. This wrapper's own start-up is not timed and its
own CPU is not counted (RUSAGE_CHILDREN only counts children).
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def parents() -> dict[int, int]:
    """pid -> parent pid of every process (zombies too), read from /proc/*/stat."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        out[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])
    return out


def children(me: int) -> list[int]:
    return [pid for pid, parent in parents().items() if parent == me]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def main() -> None:
    result_path, out_path, err_path, cwd, timeout = sys.argv[1:6]
    assert sys.argv[6] == "--"
    argv = sys.argv[7:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    os.chdir(cwd)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2),
               (os.POSIX_SPAWN_CLOSE, out), (os.POSIX_SPAWN_CLOSE, err)]
    timed_out = False
    pid = None

    def on_alarm(*_):
        nonlocal timed_out
        timed_out = True
        if pid:
            os.killpg(pid, signal.SIGKILL)

    def on_stop(*_):  # run.py interrupted: take the command down with us, then reap as usual
        nonlocal interrupted
        interrupted = True
        if pid:
            os.killpg(pid, signal.SIGKILL)

    interrupted = False
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    base = resource.getrusage(resource.RUSAGE_CHILDREN)  # not 0 if we were exec'd by a shim
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=True)
    signal.setitimer(signal.ITIMER_REAL, float(timeout))
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    signal.setitimer(signal.ITIMER_REAL, 0)
    os.close(out)
    os.close(err)

    strays = []
    for _ in range(50):  # stragglers re-parented to us: stop them, reap them
        left = children(os.getpid())
        if not left:
            break
        for p in left:
            if cmd := cmdline(p):  # zombies (already exited, not yet reaped) have none
                strays.append(cmd)
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                got, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if got == 0:
                time.sleep(0.01)
        for p in children(os.getpid()):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                got, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if got == 0:
                if not children(os.getpid()):
                    break
                time.sleep(0.01)
    tree = resource.getrusage(resource.RUSAGE_CHILDREN)
    doc = {
        "argv": argv, "wall": wall, "timed_out": timed_out, "interrupted": interrupted,
        "rc": os.waitstatus_to_exitcode(status),
        "main_user": ru.ru_utime, "main_sys": ru.ru_stime,
        "tree_user": tree.ru_utime - base.ru_utime, "tree_sys": tree.ru_stime - base.ru_stime,
        "cpu": tree.ru_utime - base.ru_utime + tree.ru_stime - base.ru_stime,
        "max_rss_kib": tree.ru_maxrss,
        "strays": strays,
    }
    with open(result_path, "w") as f:
        json.dump(doc, f)


if __name__ == "__main__":
    main()
