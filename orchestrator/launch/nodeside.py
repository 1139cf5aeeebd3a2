"""Every command `up`, `status` and `teardown` send to a node, as argv lists or sh text.

Values are always shlex-quoted or passed as positional arguments (`sh -c '...' sh "$1" ...`):
nothing from the inventory is ever formatted into shell code. Host paths go through
`nodepaths.host_path` (`${DEPLOY_NODE_ROOT-}` prefix: empty on a real node). Inside the
container the deployment's state folder is mounted at the same path, unprefixed.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from .. import nodepaths

# Linux's largest pid_max (2^22). PID 0 and 1 are never ours: `kill -TERM -1` would signal every
# process on the node, `-0` our own group. A PID read from a node or the ledger is this or nothing.
PID_MAX = 4194304
_PID = re.compile(r"[0-9]{1,7}")


def pid_value(value: object) -> int | None:
    """A PID of one of our processes as read from a pid file, a node's output or the ledger:
    decimal ASCII digits (no sign, no space, no `²`), 2..PID_MAX; anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 2 <= value <= PID_MAX else None
    if isinstance(value, str) and _PID.fullmatch(value):
        return pid_value(int(value))
    return None


def _pids(pids: list[int]) -> list[str]:
    """Backstop: every PID put on a node-side kill or probe line was validated where it was read."""
    bad = [p for p in pids if pid_value(p) is None]
    if bad:
        raise ValueError(f"not a PID of ours: {bad[:3]!r}")
    return [str(p) for p in pids]


# Per PID: "<pid> <state letter>" ("-" when gone); zombies count as gone (PID 1 reaps slowly).
_ALIVE = ('for p in "$@"; do s=$(sed "s/.*) //" /proc/"$p"/stat 2>/dev/null | cut -d" " -f1); '
          'echo "$p ${s:--}"; done')


def docker_exec(container: str, *argv: str) -> list[str]:
    return ["docker", "exec", container, *argv]


# `setsid` makes each its own session and process group (killed as one), detached from docker
# exec and the SSH channel. Arguments are (script, log, pidfile) triples; prints "<pidfile> <pid>".
# The log and pid file are made 0600 first (a subshell's umask: vLLM keeps the image's).
_START_MANY = ('while [ "$#" -ge 3 ]; do (umask 077; : >>"$2"; : >>"$3"; chmod 600 "$2" "$3"); '
               'setsid sh "$1" </dev/null >"$2" 2>&1 & echo $! >"$3"; '
               'echo "$3 $!"; shift 3; done')


def start_many(container: str, items: list[tuple[str, str, str]]) -> list[str]:
    """Start several scripts (script, log, pidfile) with one docker exec; each its own session."""
    flat = [x for item in items for x in item]
    return docker_exec(container, "sh", "-c", _START_MANY, "sh", *flat)


def parse_started(stdout: str) -> dict[str, int]:
    out = {}
    for line in stdout.splitlines():
        path, _, text = line.rpartition(" ")
        pid = pid_value(text)
        if path and pid is not None:
            out[path] = pid
    return out


def alive(container: str, pids: list[int]) -> list[str]:
    return docker_exec(container, "sh", "-c", _ALIVE, "sh", *_pids(pids))


def parse_alive(stdout: str) -> dict[int, bool]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        pid = pid_value(parts[0]) if len(parts) == 2 else None
        if pid is not None:
            out[pid] = parts[1] not in ("-", "Z", "X")
    return out


def signal_groups(container: str, pids: list[int], sig: str) -> list[str]:
    """`kill -SIG -PGID` for each rank's process group, inside the container."""
    # the `case` repeats pid_value's rule on the node: never `kill -1` (everything), `-0`, `-01`
    return docker_exec(container, "sh", "-c", 'sig=$1; shift; for p in "$@"; do case $p in ""|*[!0-9]*|0*|1) continue;; esac; '
                       'kill -"$sig" -"$p" 2>/dev/null; done; true', "sh", sig, *_pids(pids))


def _atomic_writes(files: dict[str, tuple[str, int]], fill: Callable[[str, str], str]) -> str:
    """sh text that atomically writes host files {path: (content, mode)} under the node root,
    each folder 0700 (it holds logs, PIDs and the 0600 secret files); `fill(content, tmp)` is the
    line that puts the content into the temporary file."""
    lines = ["set -e", "umask 077"]
    made: set[str] = set()
    for path, (content, mode) in files.items():
        target = nodepaths.host_path(path)
        directory = nodepaths.host_path(path.rsplit("/", 1)[0] or "/")
        lines.append(f"mkdir -p -- {directory}")
        if directory not in made:
            made.add(directory)
            lines.append(f"chmod 700 -- {directory}")
        lines.append(fill(content, f"{target}.deploy-tmp"))
        lines.append(f"chmod {mode:o} -- {target}.deploy-tmp")
        lines.append(f"mv -f -- {target}.deploy-tmp {target}")
    return "\n".join(lines) + "\n"


def write_files_script(files: dict[str, tuple[str, int]]) -> str:
    """sh text that atomically writes host files {path: (content, mode)}: the content quoted
    into the script, so the run log shows what was written."""
    return _atomic_writes(files, lambda content, tmp: f"printf '%s' {shlex.quote(content)} > {tmp}")


def write_private_script(files: dict[str, str]) -> str:
    """sh text for a node's stdin (`cluster.run(node, ["sh", "-s"], input=...)`) that writes
    host files {path: text} mode 0600, atomically, in a 0700 folder: for secrets. The text
    travels in here-documents on stdin: never on a command line (`ps`) or in the run log, which
    records only the byte count of stdin."""
    return _atomic_writes({path: (text, 0o600) for path, text in files.items()}, _heredoc)


def _heredoc(content: str, tmp: str) -> str:
    """`cat > tmp` fed by a quoted here-document whose end marker the content does not hold."""
    import secrets

    end = "DEPLOY_EOF_" + secrets.token_hex(8)
    while end in content:
        end = "DEPLOY_EOF_" + secrets.token_hex(8)
    body = content if content.endswith("\n") else content + "\n"
    return f"cat > {tmp} <<'{end}'\n{body}{end}"


def remove_files_script(paths: list[str]) -> str:
    """sh text removing host files (absent ones are fine)."""
    return "".join(f"rm -f -- {nodepaths.host_path(p)}\n" for p in paths) or "true\n"


PID_FILE_BYTES = 64  # read of one pid file: a PID and a newline; more is not a pid file of ours
LOG_TAIL_BYTES = 1 << 20  # read of one log's end: the last lines of a log whose lines are huge stay bounded


def pids_script(pidfiles: list[str]) -> str:
    """sh text printing `@@pid PATH` then the PID in each host pid file (nothing if absent).
    Only a regular file is read, and only its start: a FIFO would block the read, a link to
    /dev/zero would never end."""
    out = []
    for f in pidfiles:
        p = nodepaths.host_path(f)
        out.append(f"echo {shlex.quote('@@pid ' + f)}; [ -f {p} ] && head -c {PID_FILE_BYTES} {p} 2>/dev/null; echo\n")
    return "".join(out)


def parse_pids(stdout: str) -> dict[str, int]:
    """pid file -> PID from the output of `pids_script`. A file with no PID, or with anything but
    one PID of ours (garbage, `1`, `0`, a hostile string written on the node), is left out:
    nothing is ever signalled on its say-so."""
    out: dict[str, int] = {}
    cur = None
    for line in stdout.splitlines():
        if line.startswith("@@"):
            cur = line[6:] if line.startswith("@@pid ") else None
        elif cur:
            pid = pid_value(line.strip())
            if pid is not None and cur not in out:
                out[cur] = pid
            elif line.strip():
                out.pop(cur, None)
                cur = None  # more than one value, or garbage: not a pid file of ours
    return out


def tail_script(paths: list[str], lines: int = 20) -> str:
    """For each host file: `@@tail PATH`, its last lines."""
    out = []
    for p in paths:
        q = nodepaths.host_path(p)
        out.append(f"echo {shlex.quote('@@tail ' + p)}; [ -f {q} ] && tail -c {LOG_TAIL_BYTES} {q} 2>/dev/null "
                   f"| tail -n {int(lines)}; true")
    return "\n".join(out) + "\n"


def parse_tails(stdout: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    cur = None
    for line in stdout.splitlines():
        if line.startswith("@@tail "):
            cur = line[7:]
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def image_present(image: str) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{.Id}}", image]


def inspect(container: str) -> list[str]:
    return ["docker", "inspect", container]


def remove(container: str) -> list[str]:
    return ["docker", "rm", "-f", container]


# /proc/net/tcp: listening IPv4 sockets as "addr:port" lines (no ss/netstat needed on the node)
LISTENING = ["cat", "/proc/net/tcp"]


def parse_listening(text: str) -> set[tuple[str, int]]:
    import socket
    import struct

    out = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A" and re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{4}", parts[1]):
            host, port = parts[1].split(":")
            addr = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(host, 16)))
            out.add((addr, int(port, 16)))
    return out
