"""`deploy teardown`: stop what was launched and prove the NPUs are free.

Order: the proxy, then every rank's process group (SIGTERM, SIGKILL after the grace period),
then the containers, then orphaned `VLLM::` processes still on the deployment's devices (an
engine core that survived its API server keeps its HBM: vllm issue 55510), then the proof on
each node: no process on the deployment's devices in `npu-smi info`, HBM back near idle, none
of the deployment's ports listening. Safe to run twice, after a failed `up`, and with no ledger.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .. import nodepaths
from ..checks.parsers import npu_info
from ..plan import Plan
from ..transport import Cluster
from . import nodeside
from .deployment import deployment_ports, rank_refs
from .progress import Progress
from .steps import Cause, Kind, NodeResult, Runner, from_outcome

GRACE = 15.0           # s between SIGTERM and SIGKILL
IDLE_HBM_FRACTION = 0.15  # HBM used above this after teardown: still held
VERIFY_FOR = 20.0      # s to wait for the kernel to let go (zombies, late exits)


@dataclass
class TeardownOptions:
    keep_containers: bool = False
    grace: float = GRACE


class Teardown:
    def __init__(self, plan: Plan, cluster: Cluster, progress: Progress, opts: TeardownOptions):
        self.plan, self.cluster, self.progress, self.opts = plan, cluster, progress, opts
        self.inv = plan.inventory
        self.container = nodepaths.container_name(self.inv)
        self.refs = rank_refs(plan)
        self.runner = Runner(cluster, progress)
        self.per_chip = 2 if self.inv.soc == "a3" else 1

    async def run(self) -> bool:
        nodes = self.plan.nodes
        await self.cluster.connect()
        await self.runner.each(Kind.CONNECT, "connect", nodes, self._connect)
        if self.plan.proxy is not None:
            await self.runner.each(Kind.STOP_PROXY, "stop the proxy", [self.plan.proxy.node], self._stop_proxy)
        await self.runner.each(Kind.STOP_RANKS, "stop the ranks (SIGTERM, then SIGKILL)", nodes, self._stop_ranks)
        if not self.opts.keep_containers:
            await self.runner.each(Kind.REMOVE_CONTAINERS, f"remove container {self.container}", nodes, self._remove)
        await self.runner.each(Kind.ORPHANS, "orphaned processes on the deployment's devices", nodes, self._orphans)
        verify = await self.runner.each(Kind.VERIFY, "prove the NPUs and ports are free", nodes, self._verify)
        return verify.ok and not self.runner.failed

    async def _connect(self, node: str) -> NodeResult:
        o = self.cluster.unreachable.get(node)
        return NodeResult(node, Cause.UNREACHABLE, o.reason) if o else NodeResult(node, Cause.OK, "connected")

    async def _has_container(self, node: str) -> bool | None:
        o = await self.cluster.run(node, nodeside.inspect(self.container), timeout=60)
        if o.status == "unreachable":
            return None
        return o.ok and '"Running": true' in o.stdout.replace('"Running":true', '"Running": true')

    async def _pids(self, node: str, files: list[str]) -> list[int]:
        o = await self.cluster.run_script(node, nodeside.pids_script(files), timeout=60)
        return sorted(set(nodeside.parse_pids(o.stdout).values()))

    async def _stop_groups(self, node: str, pids: list[int]) -> NodeResult:
        if not pids:
            return NodeResult(node, Cause.OK, "nothing running")
        running = await self._has_container(node)
        if running is None:
            return NodeResult(node, Cause.UNREACHABLE, "lost the node")
        if not running:
            return NodeResult(node, Cause.OK, f"container {self.container} is not running")
        return await stop_groups(self.cluster, node, self.container, pids, self.opts.grace)

    async def _stop_proxy(self, node: str) -> NodeResult:
        return await self._stop_groups(node, await self._pids(node, [nodepaths.proxy_pid(self.inv)]))

    async def _stop_ranks(self, node: str) -> NodeResult:
        files = [r.pidfile for r in self.refs if r.node == node]
        return await self._stop_groups(node, await self._pids(node, files))

    async def _remove(self, node: str) -> NodeResult:
        o = await self.cluster.run(node, nodeside.remove(self.container), timeout=180)
        if o.ok or "No such container" in o.stderr:
            # the secrets' env files go with the container (up writes them again); logs stay
            gone = await self.cluster.run_script(node, nodeside.remove_files_script(self._secret_files(node)), timeout=60)
            if not gone.ok:
                return from_outcome(gone, "remove the secrets' env files")
        if o.ok:
            return NodeResult(node, Cause.OK, f"removed {self.container}")
        if "No such container" in o.stderr:
            return NodeResult(node, Cause.OK, f"no container {self.container}")
        return from_outcome(o, f"docker rm -f {self.container}")

    def _secret_files(self, node: str) -> list[str]:
        files = [nodepaths.rank_env_file(self.inv, r.rank) for r in self.refs if r.node == node]
        return files + [nodepaths.proxy_env_file(self.inv), nodepaths.env_file(self.inv)]

    def _devices(self, node: str) -> set[int]:
        return set(self.plan.devices_used(node))

    async def _holders(self, node: str):
        o = await self.cluster.run(node, ["npu-smi", "info"], timeout=60)
        if not o.ok:
            return o, None
        info = npu_info(o.stdout)
        mine = self._devices(node)
        procs = [(p.npu * self.per_chip + p.chip, p) for p in info.processes
                 if p.npu * self.per_chip + p.chip in mine]
        return o, (info, procs)

    async def _orphans(self, node: str) -> NodeResult:
        o, found = await self._holders(node)
        if found is None:
            return from_outcome(o, "npu-smi info")
        _info, procs = found
        victims = sorted({p.pid for _d, p in procs if p.name.startswith("VLLM")})
        if not victims:
            return NodeResult(node, Cause.OK, "no orphan")
        k = await self.cluster.run(node, ["kill", "-9", *map(str, victims)], timeout=60)
        detail = ", ".join(f"pid {p.pid} {p.name} on dev {d}" for d, p in procs if p.pid in victims)
        if k.status == "unreachable":
            return from_outcome(k, "kill")
        return NodeResult(node, Cause.OK, f"killed orphans: {detail}")

    async def _verify(self, node: str) -> NodeResult:
        deadline = time.monotonic() + VERIFY_FOR
        ports = deployment_ports(self.plan, node)
        ip = self.inv.nodes[node].cluster_ip
        while True:
            o, found = await self._holders(node)
            if found is None:
                return from_outcome(o, "npu-smi info")
            info, procs = found
            problems = [f"dev {d}: pid {p.pid} {p.name} holds {p.memory_mb} MB" for d, p in procs]
            for (npu, chip), c in sorted(info.chips.items()):
                dev = npu * self.per_chip + chip
                if dev in self._devices(node) and c["hbm_total"] and c["hbm_used"] > c["hbm_total"] * IDLE_HBM_FRACTION:
                    problems.append(f"dev {dev}: HBM {c['hbm_used']} / {c['hbm_total']} MB still in use")
            lst = await self.cluster.run(node, nodeside.LISTENING, timeout=60)
            held = sorted(p for a, p in nodeside.parse_listening(lst.stdout) if p in ports and a in (ip, "0.0.0.0"))
            problems += [f"port {p} still listening on {ip}" for p in held]
            if not problems:
                return NodeResult(node, Cause.OK, f"free: no process on devices {sorted(self._devices(node))}, "
                                  f"HBM idle, {len(ports)} ports closed")
            if time.monotonic() > deadline:
                return NodeResult(node, Cause.FAILED, "not clean: " + "; ".join(problems[:10]),
                                  f"on {node}: kill the PIDs named (kill -9 PID), or docker rm -f {self.container}; "
                                  "then deploy teardown INVENTORY again")
            await asyncio.sleep(1.0)


async def stop_groups(cluster: Cluster, node: str, container: str, pids: list[int], grace: float) -> NodeResult:
    """SIGTERM each process group in the container, SIGKILL what is left after `grace` seconds
    (used by teardown and by up's group-atomic stop)."""
    o = await cluster.run(node, nodeside.signal_groups(container, pids, "TERM"), timeout=60)
    if not o.ok:
        return from_outcome(o, "SIGTERM")
    deadline = time.monotonic() + grace
    left = pids
    while time.monotonic() < deadline:
        a = await cluster.run(node, nodeside.alive(container, left), timeout=60)
        left = [p for p, ok in nodeside.parse_alive(a.stdout).items() if ok]
        if not left:
            return NodeResult(node, Cause.OK, f"{len(pids)} process group(s) stopped with SIGTERM")
        await asyncio.sleep(0.5)
    k = await cluster.run(node, nodeside.signal_groups(container, left, "KILL"), timeout=60)
    if not k.ok:
        return from_outcome(k, "SIGKILL")
    return NodeResult(node, Cause.OK, f"SIGKILL after {grace:g}s: pids {' '.join(map(str, left))}")
