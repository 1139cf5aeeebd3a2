"""Inventories of a sim: the generated one (`sim up --nodes N`) and the user's pointed at the sim."""
from __future__ import annotations

import copy

from ..inventory import SOC_DEVICES
from .layout import client_key_path, known_hosts_path
from .manifest import Sim


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
               known_hosts=str(known_hosts_path(sim.dir)))
    data["ssh"] = ssh
    return data
