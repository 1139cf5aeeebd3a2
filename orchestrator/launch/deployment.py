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

    @property
    def port(self) -> int:
        """The rank's HTTP port; only asked of the ranks that serve HTTP (`http_ranks`)."""
        if self.rank.port is None:
            raise ValueError(f"rank {self.key} serves no HTTP port")
        return self.rank.port

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
    """Groups in bring-up order: every group of one wave starts together; wave w + 1 once wave
    w has started (only the layerwise connector has two: decode first)."""
    from ..plan import StepKind

    waves: dict[int, list[str]] = {}
    for s in plan.steps:
        if s.kind is StepKind.LAUNCH and s.group and s.group not in waves.get(s.wave or 0, []):
            waves.setdefault(s.wave or 0, []).append(s.group)
    return [waves[w] for w in sorted(waves)]


def http_ranks(refs: list[RankRef]) -> list[RankRef]:
    return [r for r in refs if r.rank.port is not None]


def smoke_target(plan: Plan) -> tuple[str, str, int]:
    """(node, ip, port) a completion goes to: the proxy, else the first rank serving HTTP."""
    if plan.proxy is not None:
        return plan.proxy.node, plan.proxy.host, plan.proxy.port
    r, port = next((r, r.port) for r in plan.ranks if r.port is not None)
    return r.node, r.ip, port


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


def api_key(plan: Plan) -> str | None:
    """The key the smoke request must send when the ranks enforce one (`--api-key` in their
    flags, else `VLLM_API_KEY` in their environment); vLLM checks it on the /v1 routes."""
    for r in plan.ranks:
        if r.port is None:
            continue
        if "--api-key" in r.argv:
            i = r.argv.index("--api-key")
            if i + 1 < len(r.argv):
                return r.argv[i + 1]
        joined = next((a for a in r.argv if a.startswith("--api-key=")), None)  # a key starting with -
        if joined is not None:
            return joined.removeprefix("--api-key=")
        if r.env.get("VLLM_API_KEY"):
            return r.env["VLLM_API_KEY"]
    return None
