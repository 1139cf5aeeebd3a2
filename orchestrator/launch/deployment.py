"""Facts about a deployment that `up`, `status` and `teardown` share: which ranks run where,
their node-side files, how to probe them. Built from the plan (pure)."""
from __future__ import annotations

from dataclasses import dataclass

from .. import nodepaths
from ..plan import Plan, Rank


@dataclass(frozen=True)
class RankRef:
    """One `vllm serve` process of the plan with its node-side file names."""
    key: str
    rank: Rank
    script: str
    log: str
    pidfile: str

    @property
    def node(self) -> str:
        return self.rank.node

    def where(self) -> str:
        from ..render import devices_text

        port = f", port {self.rank.port}" if self.rank.port is not None else ", headless"
        return (f"group {self.rank.group} DP rank {self.rank.dp_rank} on {self.rank.node} "
                f"(devices {devices_text(self.rank.devices)}{port})")


def rank_refs(plan: Plan) -> list[RankRef]:
    inv = plan.inventory
    return [RankRef(nodepaths.rank_key(r), r, nodepaths.rank_script(inv, r), nodepaths.rank_log(inv, r),
                    nodepaths.rank_pid(inv, r)) for r in plan.ranks]


def by_group(refs: list[RankRef]) -> dict[str, list[RankRef]]:
    out: dict[str, list[RankRef]] = {}
    for ref in refs:
        out.setdefault(ref.rank.group, []).append(ref)
    return out


def launch_waves(plan: Plan) -> list[list[str]]:
    """Groups in bring-up order. Every group of one wave starts together; only the layerwise
    connector (decode first) has two waves."""
    order: list[str] = []
    for s in plan.steps:
        group = getattr(s, "group", None)
        if _step_name(s) == "launch" and group and group not in order:
            order.append(group)
    kv = plan.inventory.kv_transfer
    if kv is not None and kv.connector == "MooncakeLayerwiseConnector":
        roles = {g.name: g.role for g in plan.inventory.groups}
        return [w for w in ([g for g in order if roles[g] == "decode"],
                            [g for g in order if roles[g] != "decode"]) if w]
    return [order]


def _step_name(step) -> str:
    name = step.to_json()["name"] if hasattr(step, "to_json") else getattr(step, "name")
    return str(name)


def http_ranks(refs: list[RankRef]) -> list[RankRef]:
    return [r for r in refs if r.rank.port is not None]


def smoke_target(plan: Plan) -> tuple[str, str, int]:
    """(node, ip, port) a completion goes to: the proxy, else the first rank serving HTTP."""
    if plan.proxy is not None:
        return plan.proxy.node, plan.proxy.host, plan.proxy.port
    r = next(r for r in plan.ranks if r.port is not None)
    return r.node, r.ip, r.port


def deployment_ports(plan: Plan, node: str) -> set[int]:
    """Every TCP port the deployment listens on on `node` (for the teardown proof)."""
    ports: set[int] = set()
    for r in plan.ranks_on(node):
        if r.port is not None:
            ports.add(r.port)
        if r.kv_ports is not None:
            ports.update(range(r.kv_ports[0], r.kv_ports[1] + 1))
    for g in plan.inventory.groups:
        if g.nodes and g.nodes[0] == node:
            ports.add(g.dp_rpc_port)
    if plan.proxy is not None and plan.proxy.node == node:
        ports.add(plan.proxy.port)
    return ports
