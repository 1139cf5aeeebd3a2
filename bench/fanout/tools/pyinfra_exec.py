"""pyinfra 3: the CLI's ad-hoc command, as a user runs it from the shell.

    pyinfra -y inventory.py exec -- "sh -c 'echo hello; uname -r; cat /etc/hostname'"

inventory.py (written by run.py) lists every host with the sim's user, port and key, and
`ssh_known_hosts_file` = the sim's known_hosts with `ssh_strict_host_key_checking = "yes"`
(pyinfra's default is accept-new against ~/.ssh/known_hosts). Everything else is pyinfra's
default: paramiko over gevent, --parallel = min(20 x CPUs, hosts) = 40 on this 2-core machine.
pyinfra prints each output line as `[host] line` on stderr; that is what check() reads.
"""
import os
import re

import common

# `[host]` is padded to the longest host name; status lines are indented
LINE = re.compile(r"^\[([^\]]+)\]\s+(.*)$")
STATUS = re.compile(r"^\s+\[([^\]]+)\]\s+(Success|Error|No changes)\s*$")


def write_inventory(cfg: dict, path: str) -> None:
    data = {"ssh_user": cfg["user"], "ssh_port": cfg["port"], "ssh_key": cfg["identity_file"],
            "ssh_known_hosts_file": cfg["known_hosts"], "ssh_strict_host_key_checking": "yes"}
    with open(path, "w") as f:
        f.write(f"_data = {data!r}\n")
        f.write(f"hosts = [(h, dict(_data)) for h in {cfg['hosts']!r}]\n")


def argv(cfg: dict, venv: str, inventory_py: str) -> list[str]:
    return [os.path.join(venv, "bin", "pyinfra"), "-y", inventory_py, "exec", "--",
            common.COMMAND]


def check(stdout: str, stderr: str, cfg: dict) -> dict:
    out: dict[str, list[str]] = {}
    status: dict[str, str] = {}
    for line in (stdout + "\n" + stderr).splitlines():
        if m := STATUS.match(line):
            status[m.group(1)] = m.group(2)
        elif m := LINE.match(line):
            out.setdefault(m.group(1), []).append(m.group(2))
    per_host = {h: (0 if status.get(h) == "Success" else None,
                    "".join(ln + "\n" for ln in out.get(h, [])))
                for h in set(out) | set(status)}
    return common.check_outputs(per_host, cfg["hosts"])
