"""Ansible (ansible-core): an ad-hoc run over the whole inventory, forks = number of hosts.

    ansible all -i inventory.ini -f N -m raw -a "sh -c 'echo hello; uname -r; cat /etc/hostname'"

Variant `raw` (the same workload as every other tool: one exec per host, no Python on the node).
Variant `command` (Ansible's default module, what `ansible all -a ...` runs): AnsiballZ module
executed by the node's Python, after interpreter discovery; with ANSIBLE_PIPELINING=1 because the
sim has no SFTP and scp/sftp fallbacks would otherwise dominate (a sim artifact, not Ansible's).

Ansible's ssh connection plugin defaults are kept: OpenSSH client with
`-C -o ControlMaster=auto -o ControlPersist=60s`, host_key_checking on, use_tty (`-tt`) for raw.
The sim's known_hosts is passed as UserKnownHostsFile with StrictHostKeyChecking=yes. Every run
gets a fresh ControlPath dir, so no run reuses an earlier run's master connection; the masters
that ControlPersist leaves behind are reaped (and their CPU counted) by measure.py.
"""
import os
import re
import shlex

import common

HEAD = re.compile(r"^(\S+) \| (CHANGED|SUCCESS|FAILED|UNREACHABLE!)(?: \| rc=(-?\d+))?")


def write_inventory(cfg: dict, path: str) -> None:
    extra = (f"-o UserKnownHostsFile={cfg['known_hosts']} -o StrictHostKeyChecking=yes")
    with open(path, "w") as f:
        f.write("[all]\n" + "".join(h + "\n" for h in cfg["hosts"]))
        f.write("[all:vars]\n")
        f.write(f"ansible_user={cfg['user']}\nansible_port={cfg['port']}\n")
        f.write(f"ansible_ssh_private_key_file={cfg['identity_file']}\n")
        f.write(f"ansible_ssh_extra_args={shlex.quote(extra)}\n")


def argv(cfg: dict, venv: str, inventory_ini: str, variant: str) -> list[str]:
    module = ["-m", "raw"] if variant == "raw" else []
    return [os.path.join(venv, "bin", "ansible"), "all", "-i", inventory_ini,
            "-f", str(len(cfg["hosts"])), *module, "-a", common.COMMAND]


def env(variant: str, control_path_dir: str, tmp: str) -> dict:
    e = {"ANSIBLE_SSH_CONTROL_PATH_DIR": control_path_dir, "ANSIBLE_LOCAL_TEMP": tmp,
         "ANSIBLE_NOCOLOR": "1"}
    if variant == "command":
        e["ANSIBLE_PIPELINING"] = "1"
    return e


def check(stdout: str, stderr: str, cfg: dict) -> dict:
    per_host: dict[str, tuple] = {}
    host, rc, lines = None, None, []

    def flush():
        if host is not None:
            body = [ln.rstrip("\r") for ln in lines
                    if not ln.startswith("Shared connection to ")]
            while body and not body[-1]:
                body.pop()
            per_host[host] = (rc, "".join(ln + "\n" for ln in body))

    for line in stdout.splitlines():
        if m := HEAD.match(line):
            flush()
            host, lines = m.group(1), []
            rc = int(m.group(3)) if m.group(2) in ("CHANGED", "SUCCESS") and m.group(3) else None
        elif host is not None:
            lines.append(line)
    flush()
    return common.check_outputs(per_host, cfg["hosts"])
