"""`deploy sim` up / down / status / fault: the simulator's lifecycle.

A sim lives in one directory (layout.py, docs/simulator.md). Every node is a real SSH server on
its own loopback address; a sim owns the block 127.B.0.0/16 (blocks.py) and node i listens on
127.B.(i // 254).(i % 254 + 1), every node on the same port. The servers are the system OpenSSH
(`openssh.py`, one sshd per node) or one asyncssh daemon for the whole sim (`embedded.py`).
Each node also gets a host view (hostview.py: the driver files, hccn.conf, the model folder) and
the simulated vLLM-Ascend runtime (runtime/: fake docker, vllm, proxy; runtime knobs).

`DIR/sim.json` says what should run; SSH faults change it and the node's key files, then ask the
server to catch up. Everything started for a sim carries `DEPLOY_SIM_ROOT=DIR` in its environment
(sshd overwrites its own environ with its process title, so its processes are found by PID tree
and command line instead), which is how `down` finds and stops all of it: servers, sessions,
containers and what runs in them.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ..inventory import load_inventory
from . import faults as faultreg
from .blocks import claim_block, node_addr, release_block
from .errors import SimError, SimUsageError
from .layout import (
    BLOCK_DIR,
    DEFAULT_PORT,
    SIM_HOME,
    SIM_USER,
    authorized_keys_path,
    check_dir,
    client_key_path,
    containers_dir,
    docker_dir,
    host_key_path,
    known_hosts_path,
    node_dir,
    node_root,
    node_runtime,
    sshd_dir,
)
from .manifest import Sim, SimNode, flock
from .processes import alive, freeze, listening, signal_all, sim_processes, wait_listening
from .runtime import knobs
from .siminventory import generate_inventory, sim_inventory


def default_mode() -> str:
    from . import openssh

    return "openssh" if openssh.available() else "embedded"


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


def sim_user() -> str:
    """Root: the dedicated `deploy-sim` account (empty home, /bin/sh: no rc files run per
    command), created when missing. Anyone else: themselves (sshd cannot switch users)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    with flock(Path("/tmp/.deploy-sim-useradd.lock")):
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


def check_fault(sim_nodes: list[str], node: str, fault: str) -> None:
    if node not in sim_nodes:
        raise SimUsageError(f"no node '{node}' in the sim (nodes: {', '.join(sim_nodes)})")
    if fault.partition(":")[0].strip() not in faultreg.FAULTS:
        raise SimUsageError(f"unknown fault '{fault}'; faults:\n{faultreg.help_listing()}")


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


def up(root: str | Path, inventory: str | None = None, *, nodes: int | None = None, soc: str = "a3",
       mode: str | None = None, port: int = DEFAULT_PORT, faults_file: str | None = None,
       startup: float = 2.0, time_factor: float = 1.0, ping_latency: float = 0.0,
       say: Callable[[str], None] = lambda _m: None) -> Sim:
    """Start one SSH server per node (of INVENTORY, or `nodes` generated ones) and write
    DIR/inventory.yaml pointing at them. An old sim in DIR is brought down first.
    `ping_latency`: seconds every simulated ping takes (0: CPU only).
    Raises InventoryError (bad inventory), SimUsageError, SimError."""
    from .state import build_states, write_cluster

    root = check_dir(root)
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
    names = list(raw["nodes"]) if raw else [f"n{i}" for i in range(nodes or 0)]
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
        assert inventory is not None  # given, or generated just above
        sim = Sim(dir=root, mode=mode, user=user, port=port, block=block, soc=soc,
                  inventory=str(root / "inventory.yaml"), source_inventory=os.path.abspath(inventory),
                  nodes={n: SimNode(addr=a, port=port, node_dir=str(root / "nodes" / n))
                         for n, a in zip(names, addrs)})
        sim.save()  # from here on DIR is a sim dir: `up` again or `down` clean it
        if inventory == str(root / "source-inventory.yaml"):
            Path(inventory).write_text(yaml.safe_dump(raw, sort_keys=False))
        states = build_states(list(zip(names, addrs)), soc)
        for name in names:
            states[name].nic = ((raw.get("nodes") or {}).get(name) or {}).get("nic")
            states[name].ping_latency_s = ping_latency
        write_cluster(root, states)
        _provision_nodes(root, user, raw, names, startup=startup, time_factor=time_factor)
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


def _provision_nodes(root: Path, user: str, raw: dict, names: list[str], *, startup: float,
                     time_factor: float) -> None:
    """Per node: the host view, the runtime knobs, the fake docker's folders, all owned by the
    nodes' user; once: the runtime programs and the fake registry (the inventory's image)."""
    from .hostview import chown_tree, model_host_path, provision
    from .state import load_state
    from .tools import install_runtime

    container = raw.get("container") or {}
    image = container.get("image")
    install_runtime(root, [image] if image else [])
    pw = pwd.getpwnam(user)
    model = (raw.get("model") or {}).get("path")
    if model:  # the host folder the container's model path is mounted from
        model = model_host_path(model, container.get("mounts") or [])
    for name in names:
        ndir = node_dir(root, name)
        provision(root, name, model, load_state(ndir).driver_version)
        knobs.write(node_runtime(root, name), {"startup_s": startup, "time_factor": time_factor})
        (node_runtime(root, name) / "hbm").mkdir(exist_ok=True)
        for sub in (containers_dir(root, name), docker_dir(root, name)):
            sub.mkdir(exist_ok=True)
        for sub in (node_root(root, name), node_runtime(root, name), containers_dir(root, name),
                    docker_dir(root, name)):
            os.chmod(sub, 0o755)
            chown_tree(sub, pw.pw_uid, pw.pw_gid)


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
    known_hosts_path(sim.dir).write_text("".join(known))


def fault(root: str | Path, node: str, name: str, device: int | None = None) -> str:
    """Apply one fault of the registry (faults.FAULTS) to one node: SSH faults here, tool faults
    via faults.apply_fault, runtime faults into the node's runtime/config.json.
    Returns a one-line description of what changed."""
    root = check_dir(root)
    sim = Sim.load(root)
    check_fault(list(sim.nodes), node, name)
    if sim.state != "up":
        raise SimError(f"the sim in {root} is down; `deploy sim up` first")
    try:
        base, arg = faultreg.parse_fault_spec(name)
    except ValueError as e:
        raise SimUsageError(str(e)) from None
    kind = faultreg.FAULTS[base].kind
    if base == "clear":
        _clear_tools(sim, node)
        knobs.clear_faults(node_runtime(root, node))
        fault(root, node, "clear-ssh")
        return f"{node}: cleared"
    if kind == "runtime":
        if device is not None:
            raise SimUsageError(f"fault {base!r} applies to the node's runtime; do not give a device")
        if base == "clear-runtime":
            knobs.clear_faults(node_runtime(root, node))
        else:
            knobs.add_fault(node_runtime(root, node), base if arg is None else f"{base}:{arg}")
        return f"{node}: {name}"
    if kind == "tool":
        try:
            faultreg.apply_fault(root, node, name, device)
        except ValueError as e:
            raise SimUsageError(str(e)) from None
        return f"{node}: {name}" + (f" on device {device}" if device is not None else "")
    with flock(root / ".sim.lock"):
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
            if name == node:  # hardware truth only: runtime occupancy (runtime/hbm) is kept
                old = load_state(ndir)
                healthy[node].nic = old.nic
                healthy[node].ping_latency_s = old.ping_latency_s  # a knob of `sim up`, not a fault
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

        pid = n.pid
        running = pid is not None and alive(pid)
        if pid is not None and running and not want_up:
            openssh.stop(pid)
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


def down(root: str | Path, grace: float = 3.0) -> tuple[list[int], list[int]]:
    """Stop everything the sim in DIR started: freeze it all, SIGTERM, SIGKILL what is left
    after `grace` seconds. Idempotent. Returns (pids stopped, pids still alive)."""
    root = check_dir(root)
    stopped = freeze(lambda: set(sim_processes(root)))
    signal_all(stopped, signal.SIGTERM)
    signal_all(stopped, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while (pids := sim_processes(root)) and time.monotonic() < deadline + 1.0:
        # late ones (a trap spawning a child) get SIGTERM; everything, SIGKILL after the grace
        signal_all(pids if time.monotonic() > deadline else set(pids) - stopped,
                signal.SIGKILL if time.monotonic() > deadline else signal.SIGTERM)
        stopped.update(pids)
        time.sleep(0.05)
    survivors = sim_processes(root)
    if (root / "sim.json").exists():
        with flock(root / ".sim.lock"):
            sim = Sim.load(root)
            sim.state = "down"
            for n in sim.nodes.values():
                n.pid = None
            sim.save()
    if BLOCK_DIR.exists() and not survivors:
        release_block(root)
    return sorted(stopped), survivors


def status(root: str | Path) -> list[dict]:
    """Per node: name, addr, port, up (its server listens), ssh faults, tool faults."""
    from .state import load_state

    sim = Sim.load(check_dir(root))
    live = listening()
    out = []
    for name, n in sim.nodes.items():
        try:
            tool_faults = load_state(n.node_dir).faults
        except (OSError, ValueError):
            tool_faults = []
        out.append({"node": name, "addr": n.addr, "port": n.port,
                    "up": sim.state == "up" and (n.addr, n.port) in live,
                    "ssh_faults": n.ssh_faults, "tool_faults": tool_faults,
                    "runtime_faults": knobs.read(node_runtime(sim.dir, name))["faults"]})
    return out
