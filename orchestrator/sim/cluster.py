"""`deploy sim`: bring a simulated cluster up and down, and break its SSH on purpose.

A sim lives in one directory (layout: docs/architecture.md, docs/simulator.md). Every node is a
real SSH server on its own loopback address; a sim owns the block 127.B.0.0/16 (B in 16..249,
claimed in /tmp/deploy-sim-blocks so parallel sims never collide) and node i listens on
127.B.(i // 254).(i % 254 + 1), every node on the same port. The servers are the system OpenSSH
(`openssh.py`, one sshd per node) or one asyncssh daemon for the whole sim (`embedded.py`).

`DIR/sim.json` says what should run; SSH faults change it and the node's key files, then ask the
server to catch up. Everything started for a sim carries `DEPLOY_SIM_ROOT=DIR` in its environment
(sshd overwrites its own environ with its process title, so its processes are found by PID tree
and command line instead), which is how `down` finds and stops all of it.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml

from ..inventory import SOC_DEVICES, load_inventory

DEFAULT_PORT = 2222
SIM_USER = "deploy-sim"  # the account nodes log in as when `sim up` runs as root
SIM_HOME = "/var/lib/deploy-sim"
BLOCK_DIR = Path("/tmp/deploy-sim-blocks")
BLOCKS = range(16, 250)
SSH_FAULT_HELP = {
    "unreachable": "the node's SSH server is stopped and its open connections dropped (connection refused)",
    "auth-fail": "the node no longer accepts the simulator's client key (permission denied)",
    "host-key-changed": "the node gets a new host key; DIR/keys/known_hosts keeps the old one",
    "clear-ssh": "undo the node's SSH faults (original keys, server running)",
    "clear": "undo every fault of the node: healthy tools again (and peers' ping-loss to it), SSH as clear-ssh",
}
_SAFE_DIR = re.compile(r"^/[A-Za-z0-9_./+@-]*$")


class SimError(Exception):
    """The simulator could not do what was asked (exit 1)."""


class SimUsageError(SimError):
    """Bad arguments: unknown node or fault, not a sim directory... (exit 2)."""


def default_dir() -> Path:
    return Path(f"/tmp/deploy-sim-{os.getuid()}")


def default_mode() -> str:
    from . import openssh

    return "openssh" if openssh.available() else "embedded"


# ---------------------------------------------------------------------------- the manifest


@dataclass
class SimNode:
    addr: str
    port: int
    node_dir: str
    pid: int | None = None  # openssh: the node's sshd; embedded: the daemon (same for all)
    ssh_faults: list[str] = field(default_factory=list)


@dataclass
class Sim:
    """DIR/sim.json: what runs, where; the embedded daemon re-reads it on SIGHUP."""

    dir: Path
    mode: str
    user: str
    port: int
    block: int
    soc: str
    inventory: str  # DIR/inventory.yaml
    source_inventory: str  # the inventory it was made from (generated: DIR/source-inventory.yaml)
    nodes: dict[str, SimNode]
    state: str = "up"  # "down" once `sim down` ran
    generation: int = 0  # bumped on every change the embedded daemon must pick up

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        tmp = self.dir / ".sim.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.dir / "sim.json")

    @classmethod
    def load(cls, root: Path) -> "Sim":
        try:
            data = json.loads((Path(root) / "sim.json").read_text())
        except FileNotFoundError:
            raise SimUsageError(f"no simulator in {root} (no sim.json); "
                                "start one with `deploy sim up`") from None
        data["dir"] = Path(data["dir"])
        data["nodes"] = {name: SimNode(**n) for name, n in data["nodes"].items()}
        return cls(**data)


# Per-node SSH files, shared by both servers (DIR/nodes/<node>/sshd/).
def sshd_dir(root: Path, node: str) -> Path:
    return Path(root) / "nodes" / node / "sshd"


def host_key_path(root: Path, node: str) -> Path:
    return sshd_dir(root, node) / "host_ed25519_key"


def authorized_keys_path(root: Path, node: str) -> Path:
    return sshd_dir(root, node) / "authorized_keys"


def client_key_path(root: Path) -> Path:
    return Path(root) / "keys" / "id_ed25519"


def node_env(root: Path, node: str) -> dict[str, str]:
    """The environment every command on `node` sees (docs/architecture.md)."""
    ndir = f"{root}/nodes/{node}"
    return {
        "PATH": f"{root}/bin:/usr/local/bin:/usr/bin:/bin",
        "DEPLOY_SIM_NODE": ndir,
        "DEPLOY_SIM_ROOT": str(root),
        "HCCN_CONF": f"{ndir}/etc/hccn.conf",
        "ASCEND_TOOLKIT_HOME": f"{ndir}/render/toolkit",
    }


# ---------------------------------------------------------------------------- small helpers


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    try:  # read-only: the file may be another user's (flock works on any open file)
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def listening() -> set[tuple[str, int]]:
    """(addr, port) of every IPv4 TCP socket in LISTEN state: readiness without connecting
    (a probe connection would show up in the sshd logs that benchmarks count)."""
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "0A":
                host, port = parts[1].split(":")
                addr = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(host, 16)))
                out.add((addr, int(port, 16)))
    return out


def wait_listening(sim: Sim, names: list[str], up: bool = True, timeout: float = 15.0) -> None:
    """Wait until each node's server is listening (up) or not (down); SimError naming the rest."""
    deadline = time.monotonic() + timeout
    while True:
        live = listening()
        late = [n for n in names if ((sim.nodes[n].addr, sim.nodes[n].port) in live) != up]
        if not late:
            return
        if time.monotonic() > deadline:
            what = "is not listening" if up else "still listens"
            logs = "".join(f"\n  {n}: {_tail(sshd_dir(sim.dir, n) / 'sshd.log')}" for n in late[:5])
            raise SimError(f"after {timeout:.0f}s the SSH server of {', '.join(late)} {what}{logs}")
        time.sleep(0.02)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return f"(no log at {path})"


def _write_key(path: Path, comment: str) -> str:
    """A new ed25519 key pair at path (+ .pub); returns the public line."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    pub = key.export_public_key().decode()
    Path(f"{path}.pub").write_text(pub)
    return pub


def _known_hosts_name(addr: str, port: int) -> str:
    return addr if port == 22 else f"[{addr}]:{port}"


def _check_dir(root: str | Path) -> Path:
    root = Path(os.path.realpath(root))
    if not _SAFE_DIR.match(str(root)):
        raise SimUsageError(f"--dir {root}: use only letters, digits and / . _ - + @ "
                            "(the path goes into sshd configs and environment values)")
    return root


# ---------------------------------------------------------------------------- the sim user


def sim_user() -> str:
    """Root: the dedicated `deploy-sim` account (empty home, /bin/sh: no rc files run per
    command), created when missing. Anyone else: themselves (sshd cannot switch users)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    with _flock(Path("/tmp/.deploy-sim-useradd.lock")):
        try:
            pwd.getpwnam(SIM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--create-home", "--home-dir", SIM_HOME,
                            "--shell", "/bin/sh", SIM_USER], check=True, capture_output=True)
        # A new account is locked ("!"); sshd without PAM refuses locked accounts even for keys.
        shadow = Path("/etc/shadow").read_text()
        m = re.search(rf"^{SIM_USER}:([^:]*):", shadow, re.M)
        if m and m.group(1).startswith("!"):
            subprocess.run(["usermod", "-p", "*", SIM_USER], check=True, capture_output=True)
    return SIM_USER


def _check_reachable(root: Path, user: str) -> None:
    """Fail early if the sim user cannot traverse DIR (pytest's tmp dirs are 0700)."""
    if os.geteuid() != 0 or user == "root":
        return
    pw = pwd.getpwnam(user)
    ok = subprocess.run(["test", "-x", str(root)], user=pw.pw_uid, group=pw.pw_gid,
                        extra_groups=[]).returncode == 0
    if not ok:
        raise SimError(f"the simulated nodes' user '{user}' cannot reach {root}: a parent directory "
                       "is not traversable by other users (mode 0700?). Use a --dir under /tmp, "
                       "or chmod o+x the parent directories.")


# ---------------------------------------------------------------------------- loopback blocks


def claim_block(root: Path) -> int:
    """A /16 of 127/8 that no other sim holds and where nothing listens; recorded in
    BLOCK_DIR/127.B (dir, claiming pid) until `down`."""
    BLOCK_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(BLOCK_DIR, 0o1777)
    with _flock(BLOCK_DIR / ".lock"):
        used = {int(a.split(".")[1]) for a, _ in listening() if a.startswith("127.")}
        blocks = list(BLOCKS)
        start = random.randrange(len(blocks))
        for b in blocks[start:] + blocks[:start]:
            claim = BLOCK_DIR / f"127.{b}"
            if b in used or (claim.exists() and _claim_held(claim, b, root)):
                continue
            try:
                claim.write_text(json.dumps({"dir": str(root), "pid": os.getpid()}) + "\n")
            except PermissionError:  # a stale claim of another user's
                continue
            return b
    raise SimError(f"no free loopback block: every 127.B/16 for B in {BLOCKS.start}..{BLOCKS.stop - 1} "
                   f"is claimed in {BLOCK_DIR} or has a listener")


def _claim_held(claim: Path, block: int, root: Path) -> bool:
    try:
        data = json.loads(claim.read_text())
    except (OSError, ValueError):
        return False
    if data.get("dir") == str(root):
        return False  # ours from an earlier run
    if _alive(data.get("pid", 0)):
        return True  # a `sim up` in progress
    try:
        other = json.loads((Path(data["dir"]) / "sim.json").read_text())
    except (OSError, ValueError, KeyError):
        return False
    return other.get("block") == block and other.get("state") == "up"


def _release_block(root: Path) -> None:
    for claim in BLOCK_DIR.glob("127.*"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(claim.read_text()).get("dir") == str(root):
                claim.unlink()


def node_addr(block: int, index: int) -> str:
    return f"127.{block}.{index // 254}.{index % 254 + 1}"


# ---------------------------------------------------------------------------- inventories


def generate_inventory(names_addrs: list[tuple[str, str]], soc: str) -> dict:
    """A plain valid inventory over the nodes: one serve group, every device of every node."""
    names = [n for n, _ in names_addrs]
    return {
        "name": f"sim-{soc}-{len(names)}node",
        "soc": soc,
        "nodes": {n: {"host": a, "nic": "enp67s0f0np0"} for n, a in names_addrs},
        "container": {"image": "quay.io/ascend/vllm-ascend:sim-placeholder"},
        "model": {"path": "/weights/sim-placeholder-model"},
        "groups": [{"name": "serve", "role": "serve", "nodes": names, "dp": len(names),
                    "tp": SOC_DEVICES[soc]}],
    }


def sim_inventory(raw: dict, sim: Sim) -> dict:
    """The user's inventory pointed at the sim: node host/ip -> simulated address, ssh -> the
    sim's user, port, key and known_hosts. `host_keys` is kept; per-node user/port/identity_file,
    `jump` and `sudo` are dropped (the sim has no bastion and its user no sudo)."""
    data = copy.deepcopy(raw)
    for name, node in data["nodes"].items():
        node["host"] = node["ip"] = sim.nodes[name].addr
        for key in ("user", "port", "identity_file"):
            node.pop(key, None)
    ssh = dict(data.get("ssh") or {})
    for key in ("jump", "sudo"):
        ssh.pop(key, None)
    ssh.update(user=sim.user, port=sim.port, identity_file=str(client_key_path(sim.dir)),
               known_hosts=str(sim.dir / "keys" / "known_hosts"))
    data["ssh"] = ssh
    return data


# ---------------------------------------------------------------------------- faults


def known_faults() -> dict[str, str]:
    from .faults import TOOL_FAULTS

    return {**TOOL_FAULTS, **SSH_FAULT_HELP}


def check_fault(sim_nodes: list[str], node: str, fault: str) -> None:
    if node not in sim_nodes:
        raise SimUsageError(f"no node '{node}' in the sim (nodes: {', '.join(sim_nodes)})")
    if fault.partition(":")[0].strip() not in known_faults():
        listing = "\n".join(f"  {n:18} {h}" for n, h in known_faults().items())
        raise SimUsageError(f"unknown fault '{fault}'; faults:\n{listing}")


def read_faults_file(path: str | Path) -> list[dict]:
    """`--faults FILE`: a YAML list of {node, fault, device?}."""
    try:
        items = yaml.safe_load(Path(path).read_text()) or []
    except (OSError, yaml.YAMLError) as e:
        raise SimUsageError(f"--faults {path}: {e}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) and {"node", "fault"} <= set(i)
                                              and set(i) <= {"node", "fault", "device"} for i in items):
        raise SimUsageError(f"--faults {path}: expected a YAML list of {{node, fault, device?}} mappings")
    return items


# ---------------------------------------------------------------------------- up


def up(root: str | Path, inventory: str | None = None, *, nodes: int | None = None, soc: str = "a3",
       mode: str | None = None, port: int = DEFAULT_PORT, faults_file: str | None = None,
       say: Callable[[str], None] = lambda _m: None) -> Sim:
    """Start one SSH server per node (of INVENTORY, or `nodes` generated ones) and write
    DIR/inventory.yaml pointing at them. An old sim in DIR is brought down first.
    Raises InventoryError (bad inventory), SimUsageError, SimError."""
    from .state import build_states, write_cluster

    root = _check_dir(root)
    mode = mode or default_mode()
    if mode == "openssh":
        from . import openssh

        if not openssh.available():
            raise SimUsageError(f"--sshd openssh needs {openssh.SSHD}; use --sshd embedded")
    if root.exists() and any(root.iterdir()) and not (root / "sim.json").exists():
        raise SimUsageError(f"{root} exists and is not a simulator directory (no sim.json); "
                            "give an empty or new --dir")
    raw = None
    if inventory is not None:
        load_inventory(inventory)  # InventoryError: the caller reports it (exit 2)
        raw = yaml.safe_load(Path(inventory).read_text())
    elif not nodes or nodes < 1:
        raise SimUsageError("give an INVENTORY or --nodes N")
    names = list(raw["nodes"]) if raw else [f"n{i}" for i in range(nodes)]
    soc = raw["soc"] if raw else soc
    faults = read_faults_file(faults_file) if faults_file else []
    for item in faults:
        check_fault(names, str(item["node"]), str(item["fault"]))
    if any(p == port for a, p in listening() if a == "0.0.0.0"):
        raise SimError(f"port {port} is taken on every address by another server; use --port")

    t0 = time.monotonic()
    if (root / "sim.json").exists():  # DIR is the simulator's own: start afresh
        say(f"bringing down the previous sim in {root} first")
        _, survivors = down(root)
        if survivors:
            raise SimError(f"the previous sim in {root} left processes running: {survivors}")
        shutil.rmtree(root)
    user = sim_user()
    created = not root.exists()
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    try:
        _check_reachable(root, user)
    except SimError:
        if created:
            root.rmdir()
        raise
    block = claim_block(root)
    try:
        addrs = [node_addr(block, i) for i in range(len(names))]
        if raw is None:
            raw = generate_inventory(list(zip(names, addrs)), soc)
            inventory = str(root / "source-inventory.yaml")
        sim = Sim(dir=root, mode=mode, user=user, port=port, block=block, soc=soc,
                  inventory=str(root / "inventory.yaml"), source_inventory=os.path.abspath(inventory),
                  nodes={n: SimNode(addr=a, port=port, node_dir=str(root / "nodes" / n))
                         for n, a in zip(names, addrs)})
        sim.save()  # from here on DIR is a sim dir: `up` again or `down` clean it
        if inventory == str(root / "source-inventory.yaml"):
            Path(inventory).write_text(yaml.safe_dump(raw, sort_keys=False))
        write_cluster(root, build_states(list(zip(names, addrs)), soc))
        _write_keys(sim)
        (root / "home").mkdir(exist_ok=True)  # the embedded server's HOME: empty
        if user != pwd.getpwuid(os.geteuid()).pw_name:
            pw = pwd.getpwnam(user)
            os.chown(root / "home", pw.pw_uid, pw.pw_gid)
        sim.save()
        if mode == "openssh":
            openssh.start(sim, names)
        else:
            from . import embedded

            embedded.start(sim)
        sim.save()
        text = yaml.safe_dump(sim_inventory(raw, sim), sort_keys=False)
        Path(sim.inventory).write_text(f"# deploy sim up: {inventory} on the simulator in {root}\n{text}")
        for item in faults:
            device = item.get("device")
            fault(root, str(item["node"]), str(item["fault"]), None if device is None else int(device))
        sim = Sim.load(root)
    except BaseException:
        with contextlib.suppress(Exception):
            down(root)
        raise
    say(f"{len(names)} simulated nodes ({mode}, user {user}) on {addrs[0]}..{addrs[-1]} "
        f"port {port}, up in {time.monotonic() - t0:.1f}s")
    return sim


def _write_keys(sim: Sim) -> None:
    """Client key pair, a host key per node, authorized_keys, known_hosts with every host key."""
    keys = sim.dir / "keys"
    keys.mkdir(mode=0o755, exist_ok=True)
    client_pub = _write_key(client_key_path(sim.dir), f"deploy-sim-client@{sim.dir}")
    known = []
    for name, n in sim.nodes.items():
        d = sshd_dir(sim.dir, name)
        d.mkdir(mode=0o755, exist_ok=True)
        pub = _write_key(host_key_path(sim.dir, name), f"{name}@deploy-sim")
        known.append(f"{_known_hosts_name(n.addr, n.port)} {pub}")
        authorized_keys_path(sim.dir, name).write_text(client_pub)
    (keys / "known_hosts").write_text("".join(known))


# ---------------------------------------------------------------------------- faults


def fault(root: str | Path, node: str, name: str, device: int | None = None) -> str:
    """Apply one fault to one node: SSH faults here, tool faults via faults.apply_fault.
    Returns a one-line description of what changed."""
    from .faults import SSH_FAULTS, apply_fault

    root = _check_dir(root)
    sim = Sim.load(root)
    check_fault(list(sim.nodes), node, name)
    if sim.state != "up":
        raise SimError(f"the sim in {root} is down; `deploy sim up` first")
    if name == "clear":
        _clear_tools(sim, node)
        fault(root, node, "clear-ssh")
        return f"{node}: cleared"
    if name not in SSH_FAULTS and name != "clear-ssh":
        try:
            apply_fault(root, node, name, device)
        except ValueError as e:
            raise SimUsageError(str(e)) from None
        return f"{node}: {name}" + (f" on device {device}" if device is not None else "")
    with _flock(root / ".sim.lock"):
        sim = Sim.load(root)
        n = sim.nodes[node]
        key = host_key_path(root, node)
        orig = key.with_name(key.name + ".orig")
        restart = False
        if name == "clear-ssh":
            authorized_keys_path(root, node).write_text(Path(f"{client_key_path(root)}.pub").read_text())
            if orig.exists():
                os.replace(orig, key)
                os.replace(f"{orig}.pub", f"{key}.pub")
                restart = True
            n.ssh_faults = []
        else:
            if name == "auth-fail":  # both servers read authorized_keys at every login
                authorized_keys_path(root, node).write_text("# auth-fail fault: no key is accepted\n")
            elif name == "host-key-changed":
                if not orig.exists():
                    os.replace(key, orig)
                    os.replace(f"{key}.pub", f"{orig}.pub")
                _write_key(key, f"{node}@deploy-sim-changed")
                restart = True
            if name not in n.ssh_faults:
                n.ssh_faults.append(name)
        _sync_node(sim, node, restart)
    return f"{node}: {name}"


def _clear_tools(sim: Sim, node: str) -> None:
    """Rebuild the node's healthy state exactly as `up` made it; drop peers' ping-loss to it."""
    from .state import build_states, load_state, node_lock, save_state

    names = list(sim.nodes)
    healthy = build_states([(n, sim.nodes[n].addr) for n in names], sim.soc)
    for name in names:
        ndir = sim.nodes[name].node_dir
        with node_lock(ndir):
            if name == node:
                save_state(ndir, healthy[node])
                continue
            st = load_state(ndir)
            if node in st.ping_loss:
                st.ping_loss.remove(node)
                st.faults = [f for f in st.faults if f != f"ping-loss:{node}"]
                save_state(ndir, st)


def _sync_node(sim: Sim, node: str, restart: bool) -> None:
    """Make the node's server match sim.json: running unless `unreachable`, restarted for a
    new host key."""
    n = sim.nodes[node]
    want_up = "unreachable" not in n.ssh_faults
    if sim.mode == "openssh":
        from . import openssh

        running = bool(n.pid and _alive(n.pid))
        if running and not want_up:
            openssh.stop(n.pid)
            n.pid = None
        elif running and restart:
            openssh.restart(sim, node)
        elif want_up and not running:
            openssh.start(sim, [node])
    else:
        from . import embedded

        sim.generation += 1
        sim.save()
        embedded.reload(sim)
    sim.save()
    wait_listening(sim, [node], up=want_up, timeout=10)


# ---------------------------------------------------------------------------- processes


def _alive(pid: int | None) -> bool:
    """Running and not a zombie (a killed child of ours stays a zombie until reaped)."""
    return bool(pid) and _state(pid) not in ("", "Z", "X")


def _state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat ("" when there is no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                rest = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
                out[int(entry.name)] = (int(rest[1]), rest[0])
    return out


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def sim_processes(root: Path) -> list[int]:
    """Every live process of the sim in DIR: its servers (sim.json PIDs and sshd processes whose
    command line names DIR/nodes/), their descendants, and anything with DEPLOY_SIM_ROOT=DIR in
    its environment. Never this process or its ancestors."""
    root = Path(root)
    table = _procs()
    env_entry = f"DEPLOY_SIM_ROOT={root}".encode()
    nodes_arg = f"{root}/nodes/".encode()
    found = set()
    with contextlib.suppress(SimError):
        sim = Sim.load(root)
        for n in sim.nodes.values():
            if n.pid in table and str(root).encode() in _read(f"/proc/{n.pid}/cmdline"):
                found.add(n.pid)
    for pid in table:
        cmd = _read(f"/proc/{pid}/cmdline")
        if (cmd.startswith(b"sshd") or b"/sshd\0" in cmd) and nodes_arg in cmd:
            found.add(pid)
        elif env_entry in _read(f"/proc/{pid}/environ").split(b"\0"):
            found.add(pid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    mine, pid = set(), os.getpid()
    while pid > 1 and pid in table and pid not in mine:
        mine.add(pid)
        pid = table[pid][0]
    return sorted(p for p in found - mine if table[p][1] not in ("Z", "X"))


def _signal(pids, sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def freeze(scan: Callable[[], set[int]]) -> set[int]:
    """SIGSTOP whatever `scan` finds, until it finds nothing new. A stopped process cannot fork,
    so no child escapes the PID tree mid-kill (an orphaned sshd child is unrecognisable: its
    environ and command line are overwritten). Send SIGCONT after the fatal signal."""
    frozen: set[int] = set()
    while new := scan() - frozen:
        _signal(new, signal.SIGSTOP)
        frozen |= new
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(
                _state(p) not in ("T", "t", "Z", "X", "") for p in new):
            time.sleep(0.002)
    return frozen


def down(root: str | Path, grace: float = 3.0) -> tuple[list[int], list[int]]:
    """Stop everything the sim in DIR started: freeze it all, SIGTERM, SIGKILL what is left
    after `grace` seconds. Idempotent. Returns (pids stopped, pids still alive)."""
    root = _check_dir(root)
    stopped = freeze(lambda: set(sim_processes(root)))
    _signal(stopped, signal.SIGTERM)
    _signal(stopped, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while (pids := sim_processes(root)) and time.monotonic() < deadline + 1.0:
        # late ones (a trap spawning a child) get SIGTERM; everything, SIGKILL after the grace
        _signal(pids if time.monotonic() > deadline else set(pids) - stopped,
                signal.SIGKILL if time.monotonic() > deadline else signal.SIGTERM)
        stopped.update(pids)
        time.sleep(0.05)
    survivors = sim_processes(root)
    if (root / "sim.json").exists():
        with _flock(root / ".sim.lock"):
            sim = Sim.load(root)
            sim.state = "down"
            for n in sim.nodes.values():
                n.pid = None
            sim.save()
    if BLOCK_DIR.exists() and not survivors:
        _release_block(root)
    return sorted(stopped), survivors


def status(root: str | Path) -> list[dict]:
    """Per node: name, addr, port, up (its server listens), ssh faults, tool faults."""
    from .state import load_state

    sim = Sim.load(_check_dir(root))
    live = listening()
    out = []
    for name, n in sim.nodes.items():
        try:
            tool_faults = load_state(n.node_dir).faults
        except (OSError, ValueError):
            tool_faults = []
        out.append({"node": name, "addr": n.addr, "port": n.port,
                    "up": sim.state == "up" and (n.addr, n.port) in live,
                    "ssh_faults": n.ssh_faults, "tool_faults": tool_faults})
    return out
