"""`deploy up`: checks, uploads, image, containers, setup, ranks in order, readiness, proxy, smoke.

Each phase is a typed step run by the one `Runner` over the open `Cluster`. Nothing launches
until every node passed the checks and pre-flight; ranks start in the plan's order (within a
group the master's ranks, then at once the other nodes' — never waiting for the master's health,
which needs every rank); readiness polls /health through the SSH connections already open;
the ledger records what was launched as it happens, so `status`/`teardown` act on that and a
second `up` continues from what is healthy.
"""
from __future__ import annotations

import asyncio
import json
import shlex
import time
from dataclasses import dataclass, field

from .. import nodepaths, redact, scripts, triage
from ..checks.parsers import npu_info
from ..plan import ContainerPlan, Plan
from ..transport import Cluster
from . import http, nodeside
from .deployment import RankRef, api_key, by_group, http_ranks, launch_waves, rank_refs, smoke_target
from .ledger import Ledger, RankEntry
from .progress import Progress
from .steps import Cause, Kind, NodeResult, Runner, StepReport, from_outcome
from .teardown import stop_groups

POLL = 2.0             # s between readiness rounds
HEALTH_TIMEOUT = 3.0   # s per /health request
PROXY_TIMEOUT = 120.0  # s for the proxy's /healthcheck
SMOKE_TIMEOUT = 120.0
LOG_TAIL = 15
LIVE_TAIL = 40  # lines of each rank's log read per readiness round: a line printed between two polls is seen
GROUP_STOP_GRACE = 10.0  # s between SIGTERM and SIGKILL when a group is stopped to restart or fail it
FAILED_FIX = ("read the rank's log and the diagnostics above; fix, then deploy up again "
              "(healthy groups keep running)")
TIMEOUT_FIX = ("if the ranks are still loading (weights, graph compile), raise readiness.timeout; otherwise every "
               "rank of the group must start and reach its DP master: " + FAILED_FIX)


@dataclass
class UpOptions:
    skip_checks: bool = False
    recreate: bool = False
    only: list[str] | None = None
    bundle_dir: str | None = None  # where a failed group's diagnostics go (the run folder)


@dataclass
class UpResult:
    ok: bool
    nothing_to_do: bool = False
    endpoint: str = ""
    smoke_text: str = ""
    ready_seconds: dict[str, float] = field(default_factory=dict)
    failed_groups: dict[str, str] = field(default_factory=dict)
    network: dict | None = None


class Up:
    def __init__(self, plan: Plan, cluster: Cluster, progress: Progress, ledger: Ledger,
                 opts: UpOptions):
        self.plan, self.cluster, self.progress, self.ledger, self.opts = plan, cluster, progress, ledger, opts
        self.runner = Runner(cluster, progress)
        self.inv = plan.inventory
        self.container = nodepaths.container_name(self.inv)
        self.refs = rank_refs(plan)
        groups = [g.name for g in self.inv.groups]
        self.groups = [g for g in groups if not opts.only or g in opts.only]
        self.nodes = plan.nodes
        self.container_ids: dict[str, str] = {}
        self.lost: dict[str, str] = {}  # nodes that became unreachable after the checks
        self.said: set[tuple[str, str]] = set()  # live-triage findings already printed
        self.keep_extra: set[str] = set()  # "proxy" when an earlier run's proxy still answers
        self.nodes_by_ip = {n.cluster_ip: name for name, n in self.inv.nodes.items()}
        self.keep: set[str] = set()  # groups already healthy: left running
        self.started = time.monotonic()
        self.facts: dict | None = None      # check-network's collected facts (rank table input)
        self.table_text: str | None = None  # the P/D rank table, when the connector needs one
        self.table_hash: str | None = None

    # ------------------------------------------------------------------ the whole run

    async def run(self) -> UpResult:
        result = UpResult(ok=False)
        self.progress.say(f"deploy up {self.plan.name}: {len(self.plan.ranks)} ranks on {len(self.nodes)} nodes")
        await self.cluster.connect()
        connect = await self.runner.each(Kind.CONNECT, "connect", self.nodes, self._connect)
        if not connect.ok:
            return result
        self.keep = await self._healthy_groups()
        if self.keep >= set(self.groups) and self.ledger.state == "serving" and await self._proxy_healthy():
            result.ok = result.nothing_to_do = True
            result.endpoint = self._endpoint()
            self.progress.say("already serving: every rank is healthy and the proxy answers; nothing changed")
            return result
        if self.keep:
            self.progress.say(f"keeping healthy groups running: {', '.join(sorted(self.keep))}")
        if self.ledger.ranks and await self._proxy_healthy() and self.plan.proxy is not None:
            self.keep_extra.add("proxy")
        if not self.opts.skip_checks and not await self._check_network(result):
            return result
        if self._needs_table() and not await self._ranktable():
            return result
        for kind, label, fn in ((Kind.PREPARE, "state folder and scripts", self._prepare),
                                (Kind.IMAGE, f"image {self.inv.container.image}", self._image),
                                (Kind.CONTAINERS, f"container {self.container}", self._containers),
                                (Kind.SETUP, "container setup", self._setup),
                                (Kind.PREFLIGHT, "pre-flight: model path, free devices", self._preflight)):
            report = await self.runner.each(kind, label, self.nodes, fn)
            self._record(report)
            if not report.ok:
                return result
        self.ledger.state = "launching"
        self.ledger.plan = redact.redact_plan_json(self.plan.to_json())
        self.ledger.secrets = self._secrets_digest(self.ledger.secrets)
        self.ledger.save()
        self.started = started = time.monotonic()
        await self._launch_and_wait(result, started)
        if result.failed_groups:
            self.ledger.state = "failed"
            self.ledger.save()
            return result
        if self.plan.proxy is not None and not await self._proxy():
            return result
        result.endpoint = self._endpoint()
        if self.inv.readiness.warmup and not await self._warmup():
            return result
        if self.inv.readiness.smoke and not await self._smoke(result):
            return result
        self.ledger.state = "serving"
        self.ledger.save()
        result.ok = True
        return result

    def _record(self, report: StepReport) -> None:
        self.ledger.record(report.kind.value, report.ok,
                           "; ".join(f"{r.node}: {r.message}" for r in report.failed))
        self.ledger.save()

    def _secrets_digest(self, recorded: str) -> str:
        """`salt:hmac` of the plan's secret values, with the recorded salt (a new one first):
        a changed API key restarts the groups instead of keeping them with the old one."""
        import secrets as _random

        salt = recorded.partition(":")[0] or _random.token_hex(16)
        return f"{salt}:{redact.digest(self.plan, salt)}"

    def _same_secrets(self) -> bool:
        recorded = self.ledger.secrets
        if not recorded:  # a ledger from before secrets were recorded
            return not redact.plan_values(self.plan)
        return recorded == self._secrets_digest(recorded)

    def _endpoint(self) -> str:
        _node, ip, port = smoke_target(self.plan)
        return f"http://{ip}:{port}/v1"

    async def _connect(self, node: str) -> NodeResult:
        o = self.cluster.unreachable.get(node)
        if o is not None:
            return NodeResult(node, Cause.UNREACHABLE, o.reason)
        return NodeResult(node, Cause.OK, "connected")

    # ------------------------------------------------------------------ existing deployment

    async def _healthy_groups(self) -> set[str]:
        """Groups whose every rank (from the ledger) is alive and, if it serves HTTP, healthy.
        The leftovers of any other group a previous run started (interrupted or failed) are
        stopped on all its nodes: they hold devices and a half-joined group never recovers."""
        if (not self.ledger.ranks or self.ledger.plan != redact.redact_plan_json(self.plan.to_json())
                or not self._same_secrets() or self.opts.recreate):
            return set()
        alive = await self._alive_map()
        healthy = set()
        for group, refs in by_group(self.refs).items():
            entries = [self.ledger.ranks.get(r.key) for r in refs]
            live = [r for r, e in zip(refs, entries) if e is not None and e.pid and alive.get((r.node, e.pid))]
            if len(live) == len(refs):
                codes = await asyncio.gather(*(self._health(r) for r in http_ranks(refs)))
                if all(c.ok for c in codes):
                    healthy.add(group)
                    continue
            if live and group in self.groups:
                self.progress.say(f"  group {group}: {len(live)} rank(s) of an earlier run are still there but the "
                                  "group is not healthy; stopping them on all its nodes before starting it again")
                await self._stop_group(refs)
        return healthy

    async def _alive_map(self) -> dict[tuple[str, int], bool]:
        """(node, pid) -> alive, for every PID the ledger knows, one docker exec per node."""
        pids: dict[str, list[int]] = {}
        nodes = {r.key: r.node for r in self.refs}
        for key, e in self.ledger.ranks.items():
            if e.pid is not None and nodes.get(key) == e.node:  # only ranks of this plan, where it runs them
                pids.setdefault(e.node, []).append(e.pid)
        out: dict[tuple[str, int], bool] = {}

        async def one(node: str) -> None:
            o = await self.cluster.run(node, nodeside.alive(self.container, pids[node]), timeout=60)
            for pid, ok in nodeside.parse_alive(o.stdout).items():
                out[(node, pid)] = ok and o.status == "ok"

        await asyncio.gather(*(one(n) for n in pids if n not in self.cluster.unreachable))
        return out

    async def _health(self, ref: RankRef) -> http.Response:
        return await http.request(lambda h, p: self.cluster.open_tcp(ref.node, h, p),
                                  ref.rank.ip, ref.port, "GET", "/health", timeout=HEALTH_TIMEOUT)

    async def _proxy_healthy(self) -> bool:
        if self.plan.proxy is None:
            return True
        p = self.plan.proxy
        r = await http.request(lambda h, pt: self.cluster.open_tcp(p.node, h, pt), p.host, p.port,
                               "GET", "/healthcheck", timeout=HEALTH_TIMEOUT)
        return r.ok

    # ------------------------------------------------------------------ checks

    async def _check_network(self, result: UpResult) -> bool:
        from ..checks.network import check_network
        from ..checks.report import print_report

        self.progress.step_started(Kind.CHECK_NETWORK, "check-network", self.nodes)
        t0 = time.monotonic()
        report = await check_network(self.plan, self.cluster, self.nodes, busy_is_error=True,
                                     progress=lambda m: self.progress.say(f"  {m}"))
        kept = self._kept_devices()
        report.checks = [c for c in report.checks
                         if not (c.check == "hbm" and c.status == "fail" and (c.node, c.device) in kept)]
        result.network = report.to_json()
        self.facts = report.facts
        results = {n: NodeResult(n, Cause.OK, "network ok") for n in self.nodes}
        for n, reason in report.unreachable.items():
            results[n] = NodeResult(n, Cause.UNREACHABLE, reason)
        for c in report.failed:
            if c.node in results and results[c.node].ok:
                dev = f" dev {c.device}" if c.device is not None else ""
                results[c.node] = NodeResult(c.node, Cause.FAILED, f"{c.check}{dev}: {c.reason} ({c.observed})", c.fix)
        step = StepReport(Kind.CHECK_NETWORK, "check-network", results, time.monotonic() - t0)
        if not report.ok:
            print_report(report, self.progress.console, f"check-network {self.plan.name}: NOT ready; nothing was launched")
        self.runner.add(step)
        self._record(step)
        return report.ok

    def _kept_devices(self) -> set[tuple[str, int]]:
        return {(r.node, d) for r in self.plan.ranks if r.group in self.keep for d in r.devices}

    # ------------------------------------------------------------------ node steps

    def _files_for(self, node: str) -> dict[str, tuple[str, int]]:
        files: dict[str, tuple[str, int]] = {}
        for ref in self.refs:
            if ref.node == node and ref.rank.group in self.groups:
                files[ref.script] = (scripts.rank_script(self.plan, ref.rank), 0o700)
        if self.plan.proxy is not None and self.plan.proxy.node == node:
            text = scripts.proxy_script(self.plan)
            if text is not None:
                files[nodepaths.proxy_script(self.inv)] = (text, 0o700)
        guard = scripts.sitecustomize_for(self.plan, node)
        if guard is not None:
            files[nodepaths.sitecustomize_file(self.inv)] = (guard, 0o600)
        if self.table_text is not None:
            files[nodepaths.rank_table_path(self.inv)] = (self.table_text, 0o600)
        return files

    def _secret_files_for(self, node: str) -> dict[str, str]:
        """The node's 0600 env files (redact.py): each rank's, the proxy's, the container's."""
        files: dict[str, str] = {}
        for ref in self.refs:
            if ref.node == node and ref.rank.group in self.groups:
                text = scripts.rank_env_file_text(ref.rank)
                if text is not None:
                    files[nodepaths.rank_env_file(self.inv, ref.rank)] = text
        if self.plan.proxy is not None and self.plan.proxy.node == node:
            text = scripts.proxy_env_file_text(self.plan)
            if text is not None:
                files[nodepaths.proxy_env_file(self.inv)] = text
        spec = self.plan.container_on(node)
        text = scripts.container_env_file_text(spec) if spec is not None else None
        if text is not None:
            files[nodepaths.env_file(self.inv)] = text
        return files

    def _needs_table(self) -> bool:
        from ..plan import StepKind

        return any(s.kind is StepKind.RANKTABLE for s in self.plan.steps)

    async def _ranktable(self) -> bool:
        """The P/D rank table from the nodes' live device IPs (check-network's facts: no second
        round), validated before anything is written; a problem names node and device."""
        from ..checks.network import collect
        from ..ranktable import build_table, render_table, table_hash, validate_table

        t0 = time.monotonic()
        self.progress.step_started(Kind.RANKTABLE, "P/D rank table from live device IPs", self.nodes)
        if self.facts is None:
            self.facts, lost, broken = await collect(self.cluster, self.plan, self.nodes)
            for n, reason in lost.items():
                self.runner.failed.setdefault(n, NodeResult(n, Cause.UNREACHABLE, reason))
            for n, o in broken.items():
                self.runner.failed.setdefault(n, NodeResult(n, Cause.COULD_NOT_RUN, f"NPU facts: {o.reason}"))
        table = build_table(self.plan, self.facts, "pd")
        problems = validate_table(self.plan, table, self.facts)
        results = {n: NodeResult(n, Cause.OK, "devices in the table") for n in self.nodes}
        for pr in problems:
            node = pr.node if pr.node in results else self.nodes[0]
            if results[node].ok:
                results[node] = NodeResult(node, Cause.REFUSED, f"rank table: {pr}", pr.fix or
                                           "deploy ranktable INVENTORY shows the whole table; fix the device IPs")
        report = StepReport(Kind.RANKTABLE, "rank table", results, time.monotonic() - t0)
        self.runner.add(report)
        self._record(report)
        if problems:
            return False
        self.table_text, self.table_hash = render_table(table), table_hash(table)
        self.ledger.ranktable_hash = self.table_hash
        return True

    async def _prepare(self, node: str) -> NodeResult:
        o = await self.cluster.run_script(node, nodeside.write_files_script(self._files_for(node)), timeout=120)
        secret = self._secret_files_for(node)
        if o.ok and secret:  # on stdin, never in the run log: the log records its size only
            o = await self.cluster.run(node, ["sh", "-s"], input=nodeside.write_private_script(secret), timeout=120)
        return from_outcome(o, f"write {nodepaths.remote_dir(self.inv)}")

    async def _image(self, node: str) -> NodeResult:
        image = self.inv.container.image
        o = await self.cluster.run(node, nodeside.image_present(image), timeout=60)
        if o.status == "ok":
            return NodeResult(node, Cause.OK, f"{image} present")
        if o.status == "unreachable":
            return from_outcome(o, "docker image inspect")
        if o.rc == 127 or "not found" in o.stderr and "docker" in o.stderr.split(":")[0]:
            return NodeResult(node, Cause.COULD_NOT_RUN, f"docker is not installed: {o.stderr.strip()[:200]}",
                              "install docker on the node")
        self.progress.say(f"  {node}: pulling {image}")
        pulled = await self.cluster.run(node, ["docker", "pull", image], timeout=3600)
        return from_outcome(pulled, f"docker pull {image}",
                            "check the image name and the node's registry access (docker login)")

    async def _containers(self, node: str) -> NodeResult:
        spec = self.plan.container_on(node)
        assert spec is not None, f"the plan has no container for {node}"
        o = await self.cluster.run(node, nodeside.inspect(self.container), timeout=60)
        if o.status == "unreachable":
            return from_outcome(o, "docker inspect")
        if o.status == "ok":
            try:
                current = json.loads(o.stdout)[0]
            except (ValueError, IndexError, KeyError):
                current = None
            diff = container_drift(current, spec) if current is not None else ["unreadable docker inspect"]
            running = bool(current and current.get("State", {}).get("Running"))
            if not diff and running:
                self.container_ids[node] = str(current.get("Id", ""))
                return NodeResult(node, Cause.OK, f"reusing container {self.container}")
            if diff and not self.opts.recreate:
                return NodeResult(node, Cause.REFUSED,
                                  f"container {self.container} exists with a different configuration: "
                                  + "; ".join(diff[:6]),
                                  f"deploy teardown INVENTORY, or deploy up INVENTORY --recreate, or "
                                  f"docker rm -f {self.container} on {node}")
            rm = await self.cluster.run(node, nodeside.remove(self.container), timeout=120)
            if not rm.ok:
                return from_outcome(rm, f"docker rm -f {self.container}")
        if scripts.container_secrets(spec):  # `--env-file` names a host path: sh adds the node root
            created = await self.cluster.run_script(node, scripts.container_script(spec, self.inv) + "\n", timeout=300)
        else:
            created = await self.cluster.run(node, spec.argv, timeout=300)
        if not created.ok:
            return from_outcome(created, f"docker run {self.container}",
                                "see the docker error above; check devices and mounts on the node")
        cid = created.stdout.strip().splitlines()[-1] if created.stdout.strip() else ""
        self.ledger.containers[node] = cid
        self.container_ids[node] = cid
        return NodeResult(node, Cause.OK, f"created {self.container} {cid[:12]}")

    def _setup_marker(self, node: str) -> str:
        """Host file recording that setup finished in this very container (by its id): a run that
        created a container and then stopped must not leave it without its setup."""
        cid = "".join(c for c in self.container_ids.get(node, "") if c.isalnum())[:12] or "unknown"
        return f"{nodepaths.remote_dir(self.inv)}/setup-{cid}.done"

    async def _setup(self, node: str) -> NodeResult:
        marker = self._setup_marker(node)
        done = await self.cluster.run_script(node, f"test -f {nodepaths.host_path(marker)}\n", timeout=60)
        if done.ok:
            return NodeResult(node, Cause.OK, "setup already done in this container")
        spec = self.plan.container_on(node)
        assert spec is not None
        for argv in scripts.setup_argvs(spec):
            o = await self.cluster.run(node, argv, timeout=600)
            if not o.ok:
                return from_outcome(o, f"setup {shlex.join(argv[3:])}", "fix container.setup in the inventory")
        install = scripts.sitecustomize_install_argv(self.plan, node)
        if install is not None:
            o = await self.cluster.run(node, install, timeout=120)
            if not o.ok:
                return from_outcome(o, "install the socket env guard (sitecustomize.py)")
            if o.stdout.strip().endswith("kept"):
                self.progress.say(f"  {node}: the image has its own sitecustomize.py; left as is "
                                  "(the socket env guard is not installed)")
        mark = await self.cluster.run_script(node, nodeside.write_files_script({marker: ("done\n", 0o600)}),
                                             timeout=60)
        if not mark.ok:
            return from_outcome(mark, f"record setup in {marker}")
        return NodeResult(node, Cause.OK, "setup done")

    async def _preflight(self, node: str) -> NodeResult:
        model = self.inv.model.path
        o = await self.cluster.run(node, nodeside.docker_exec(self.container, "test", "-e", model), timeout=60)
        if o.status == "unreachable":
            return from_outcome(o, "pre-flight")
        if not o.ok:
            return NodeResult(node, Cause.REFUSED, f"model path {model} does not exist inside container {self.container}",
                              f"put the weights there on {node}, or add a container.mounts entry that maps them")
        smi = await self.cluster.run(node, ["npu-smi", "info"], timeout=60)
        if not smi.ok:
            return from_outcome(smi, "npu-smi info")
        info = npu_info(smi.stdout)
        mine = {d for r in self.plan.ranks_on(node) if r.group in self.groups and r.group not in self.keep
                for d in r.devices}
        kept_pids = {e.pid for e in self.ledger.ranks.values() if e.group in self.keep and e.pid}
        busy = []
        per = 2 if self.inv.soc == "a3" else 1
        for p in info.processes:
            dev = p.npu * per + p.chip
            if dev in mine and p.pid not in kept_pids:
                busy.append(f"dev {dev}: pid {p.pid} {p.name} ({p.memory_mb} MB)")
        if busy:
            return NodeResult(node, Cause.REFUSED, "devices are in use: " + "; ".join(busy[:8]),
                              "stop them (deploy teardown INVENTORY, or kill the PIDs on the node)")
        taken = await self._ports_taken(node)
        if taken:
            return NodeResult(node, Cause.REFUSED, f"ports the deployment needs are already listening on {node}: "
                              + ", ".join(map(str, taken[:12])),
                              f"find the owner on {node} (ss -ltnp | grep -w PORT) and stop it, or move the "
                              "group's port / kv_port / dp_rpc_port (or proxy.port) in the inventory")
        return NodeResult(node, Cause.OK, "model present, devices and ports free")

    async def _ports_taken(self, node: str) -> list[int]:
        """The deployment's ports (HTTP, DP RPC, kv ranges, proxy) already listening on the node's
        address: vLLM binds its HTTP port with SO_REUSEPORT, so a second server would share it
        silently instead of failing (the reference's warning); ports of kept groups excluded."""
        from .deployment import deployment_ports

        ports = deployment_ports(self.plan, node)
        for r in self.plan.ranks_on(node):
            if r.group in self.keep:
                ports.discard(r.port or -1)
                if r.kv_ports:
                    ports.difference_update(range(r.kv_ports[0], r.kv_ports[1] + 1))
        for g in self.inv.groups:
            if g.name in self.keep and g.nodes[0] == node:
                ports.discard(g.dp_rpc_port)
        if self.plan.proxy is not None and self.plan.proxy.node == node and "proxy" in self.keep_extra:
            ports.discard(self.plan.proxy.port)
        o = await self.cluster.run(node, nodeside.LISTENING, timeout=60)
        ip = self.inv.nodes[node].cluster_ip
        return sorted({p for a, p in nodeside.parse_listening(o.stdout) if p in ports and a in (ip, "0.0.0.0")})

    # ------------------------------------------------------------------ ranks

    async def _launch_and_wait(self, result: UpResult, started: float) -> None:
        todo = [g for g in self.groups if g not in self.keep]
        groups = by_group(self.refs)
        deadline = started + self.inv.readiness.timeout
        waves = [[g for g in w if g in todo] for w in launch_waves(self.plan)]
        pending: dict[str, float] = {}
        for wave in waves:
            if not wave:
                continue
            self.progress.step_started(Kind.LAUNCH, f"launch {', '.join(wave)}", [])
            t0 = time.monotonic()
            outcomes = await asyncio.gather(*(self._start_group(g, groups[g]) for g in wave))
            results: dict[str, NodeResult] = {}
            for g, res in zip(wave, outcomes):
                if res is None:
                    pending[g] = time.monotonic()
                else:
                    result.failed_groups[g] = res.message
                    results[res.node] = res
            for g in wave:
                for ref in groups[g]:
                    results.setdefault(ref.node, NodeResult(ref.node, Cause.OK, "started"))
            report = StepReport(Kind.LAUNCH, f"launch {', '.join(wave)}", results, time.monotonic() - t0)
            self.runner.add(report)
            self._record(report)
        if pending:
            await self._readiness(pending, groups, deadline, result)

    async def _start_group(self, group: str, refs: list[RankRef]) -> NodeResult | None:
        """The master's ranks, then every other node's at once (one docker exec per node).
        None when all started."""
        g = next(x for x in self.inv.groups if x.name == group)
        master = [r for r in refs if r.node == g.nodes[0]]
        by_node: dict[str, list[RankRef]] = {}
        for r in refs:
            if r.node != g.nodes[0]:
                by_node.setdefault(r.node, []).append(r)
        res = await self._start_on(g.nodes[0], master) if master else None
        if res is not None:
            return res
        for res in await asyncio.gather(*(self._start_on(n, rs) for n, rs in by_node.items())):
            if res is not None:
                return res
        return None

    async def _start_on(self, node: str, refs: list[RankRef]) -> NodeResult | None:
        argv = nodeside.start_many(self.container, [(r.script, r.log, r.pidfile) for r in refs])
        o = await self.cluster.run(node, argv, timeout=120)
        started = nodeside.parse_started(o.stdout)
        now = time.time()
        for r in refs:
            if r.pidfile in started:
                self.ledger.ranks[r.key] = RankEntry(r.key, r.node, r.rank.group, started[r.pidfile], now,
                                                     table=self.table_hash)
        missing = [r for r in refs if r.pidfile not in started]
        if missing or not o.ok:
            res = from_outcome(o, f"start {missing[0].where() if missing else refs[0].where()}")
            if o.ok:
                res = NodeResult(node, Cause.FAILED, f"start {missing[0].where()}: no PID printed "
                                 f"({o.stdout[-200:]!r})")
            return res
        return None

    async def _readiness(self, pending: dict[str, float], groups: dict[str, list[RankRef]],
                         deadline: float, result: UpResult) -> None:
        """Wait for every pending group; a group whose rank dies (or that misses its deadline) is
        stopped on all its nodes and restarted as a whole, up to readiness.restarts times (a
        headless node never recovers from a dead master), then marked failed with a diagnostic
        bundle; healthy groups keep running."""
        self.progress.step_started(Kind.READINESS, f"readiness of {', '.join(pending)}", [])
        t0 = time.monotonic()
        timeout = self.inv.readiness.timeout
        ready: dict[str, set[str]] = {g: set() for g in pending}
        deadlines = {g: deadline for g in pending}
        attempts = {g: 0 for g in pending}
        last_line: dict[str, str] = {}
        fixes: dict[str, str] = {}  # group -> what to do, when not the generic FAILED_FIX
        self.ledger.save()
        while pending:
            now = time.monotonic()
            alive, tails = await self._poll_processes([r for g in pending for r in groups[g]])
            trouble: dict[str, tuple[RankRef, str]] = {}
            for g in list(pending):
                lost = [r for r in groups[g] if r.node in self.lost]
                dead = [r for r in groups[g] if not alive.get(r.key, False)]
                if lost:
                    trouble[g] = (lost[0], f"node {lost[0].node} became unreachable: {self.lost[lost[0].node]}")
                elif dead:
                    trouble[g] = (dead[0], f"{dead[0].where()} exited before the group was ready")
                else:  # a rank alive but logging a known error (hccn.conf missing: it serves garbage)
                    bad = next(((r, line) for r in groups[g] if r.log in tails
                                for sig, line in _triage(tails[r.log], r, self.inv.devices_per_node, live=True,
                                                         nodes_by_ip=self.nodes_by_ip)
                                if _SEVERITY.get(sig) in ("fatal", "error")), None)
                    if bad is not None:
                        trouble[g] = (bad[0], f"{bad[0].where()} logged a known error before the group was "
                                              f"ready: {bad[1].split(': ', 1)[-1].split('. ')[0]}")
            checks = [(g, r) for g in pending if g not in trouble for r in http_ranks(groups[g])
                      if r.key not in ready[g]]
            answers = await asyncio.gather(*(self._health(r) for _, r in checks))
            for (g, r), a in zip(checks, answers):
                if a.ok:
                    ready[g].add(r.key)
                    entry = self.ledger.ranks.get(r.key)
                    if entry:
                        entry.ready = time.time()
            for g in list(pending):
                if g not in trouble and {r.key for r in http_ranks(groups[g])} <= ready[g]:
                    result.ready_seconds[g] = time.monotonic() - pending[g]
                    self.progress.say(f"  group {g}: ready in {result.ready_seconds[g]:.1f}s")
                    del pending[g]
                elif g not in trouble and now > deadlines[g]:
                    slow = [r for r in http_ranks(groups[g]) if r.key not in ready[g]]
                    r = slow[0] if slow else groups[g][0]
                    fixes[g] = TIMEOUT_FIX
                    trouble[g] = (r, f"group {g} not ready after {timeout:g}s (readiness.timeout): "
                                     f"{len(ready[g])}/{len(http_ranks(groups[g]))} ranks answer /health; "
                                     f"still waiting on {r.where()}")
            for g, (r, why) in trouble.items():
                long = (await self._tails([r], 300)).get(r.log, "") if r.node not in self.lost else ""
                log = "\n".join(long.splitlines()[-LOG_TAIL:])
                findings = [line for _id, line in _triage(long, r, self.inv.devices_per_node,
                                                          nodes_by_ip=self.nodes_by_ip)]
                msg = why + (f"; last lines of {r.log}:\n" + _indent(log) if log else "")
                if findings:
                    msg += "\n" + "\n".join(f"    cause: {f}" for f in findings)
                if attempts[g] < self.inv.readiness.restarts and r.node not in self.lost:
                    attempts[g] += 1
                    wait = min(2.0 ** attempts[g], 30.0)
                    self.progress.say(f"  group {g}: {why}; stopping the group on all its nodes and restarting "
                                      f"it in {wait:g}s (attempt {attempts[g]} of {self.inv.readiness.restarts})")
                    await self._stop_group(groups[g])
                    await asyncio.sleep(wait)
                    res = await self._start_group(g, groups[g])
                    if res is None:
                        fixes.pop(g, None)
                        ready[g] = set()
                        pending[g] = time.monotonic()
                        deadlines[g] = pending[g] + timeout
                        self.ledger.save()
                        continue
                    msg = f"{msg}\nrestart failed: {res.message}"
                await self._stop_group(groups[g])  # never half a group left running
                bundle = await self._bundle(g, groups[g], msg, findings)
                if attempts[g]:
                    msg += f"\n    (after {attempts[g]} group restart{'s' if attempts[g] > 1 else ''})"
                if bundle:
                    msg += f"\n    diagnostics: {bundle}"
                result.failed_groups[g] = msg
                self._group_failed(g, msg, r.node, fixes.get(g, FAILED_FIX))
                del pending[g]
            for g in pending:  # live triage: a known failure line in a rank's log, said at once
                for r in groups[g]:
                    if r.log in tails:
                        last_line[r.key] = (tails[r.log].rstrip().splitlines() or [""])[-1]
                        for sig, line in _triage(tails[r.log], r, self.inv.devices_per_node, live=True,
                                                 nodes_by_ip=self.nodes_by_ip):
                            if (g, sig) not in self.said:  # once per group: every rank prints the same
                                self.said.add((g, sig))
                                self.progress.say(f"  group {g}: {line}")
            if pending:
                self.progress.waiting([self._wait_line(g, groups[g], ready[g], last_line, now) for g in pending])
                self.ledger.save()
                await asyncio.sleep(POLL)
        ok = not result.failed_groups
        per_node = {n: NodeResult(n, Cause.OK, "ready") for n in self.nodes}
        for g, msg in result.failed_groups.items():
            for r in groups[g]:
                cause = Cause.UNREACHABLE if r.node in self.lost else Cause.FAILED
                per_node[r.node] = NodeResult(r.node, cause, msg.splitlines()[0], fixes.get(g, FAILED_FIX))
        report = StepReport(Kind.READINESS, "readiness", per_node, time.monotonic() - t0)
        self.runner.reports.append(report)
        self._record(report)
        if ok:
            self.progress.step_finished(report)
        self.ledger.save()

    async def _stop_group(self, refs: list[RankRef]) -> None:
        """SIGTERM every rank's process group of a DP group on all its nodes, SIGKILL what is left."""
        by_node: dict[str, list[int]] = {}
        for r in refs:
            e = self.ledger.ranks.get(r.key)
            if e and e.pid and r.node not in self.lost:
                by_node.setdefault(r.node, []).append(e.pid)

        await asyncio.gather(*(stop_groups(self.cluster, n, self.container, p, GROUP_STOP_GRACE)
                               for n, p in by_node.items()))

    async def _bundle(self, group: str, refs: list[RankRef], msg: str, findings: list) -> str:
        """A local folder with what a person needs to see why the group failed: every rank's log
        tail, npu-smi info and the link/TLS state of the group's devices per node, the plan, the
        reason and the matched signatures."""
        if self.opts.bundle_dir is None:
            return ""
        from pathlib import Path

        from ..runlog import write_private

        root = Path(self.opts.bundle_dir) / f"diagnostics-{group}"
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(root / "reason.txt", msg + "\n" + "".join(f"signature: {f}\n" for f in findings))
            write_private(root / "plan.json", json.dumps(redact.redact_plan_json(self.plan.to_json()), indent=1))
            live = [r for r in refs if r.node not in self.lost]
            for r, text in zip(live, await asyncio.gather(*(self._tail_file(r.node, r.log, 200) for r in live))):
                write_private(root / f"rank-{r.key}.log", text + "\n")
            for node in sorted({r.node for r in live}):
                devs = sorted({d for r in refs if r.node == node for d in r.rank.devices})
                script = "echo '== npu-smi info'; npu-smi info 2>&1\n" + "".join(
                    f"echo '== device {d}'; hccn_tool -i {d} -link -g 2>&1; hccn_tool -i {d} -tls -g 2>&1 | head -n 1\n"
                    for d in devs)
                o = await self.cluster.run_script(node, script, timeout=120)
                write_private(root / f"{node}-npu.txt", o.stdout + o.stderr)
        except OSError as e:
            return f"(could not write the diagnostics to {root}: {e})"
        return str(root)

    def _group_failed(self, group: str, msg: str, node: str, fix: str) -> None:
        self.progress.say(f"  FAILED group {group} ({node}): {msg}\n    fix: {fix}")

    def _wait_line(self, group: str, refs: list[RankRef], ready: set[str], last: dict[str, str], now: float) -> str:
        n_http = len(http_ranks(refs))
        slow = next((r for r in http_ranks(refs) if r.key not in ready), refs[0])
        line = last.get(slow.key, "").strip()[-160:]
        return (f"group {group}: {len(refs)} ranks started, {len(ready)}/{n_http} ready, "
                f"{now - self.started:.0f}s; slowest {slow.node}:{slow.rank.port or '-'}: {line or '(no log yet)'}")

    async def _poll_processes(self, refs: list[RankRef]) -> tuple[dict[str, bool], dict[str, str]]:
        """Per rank key: alive; per log path: its last LIVE_TAIL lines. One round trip per node."""
        by_node: dict[str, list[RankRef]] = {}
        for r in refs:
            by_node.setdefault(r.node, []).append(r)
        alive: dict[str, bool] = {}
        tails: dict[str, str] = {}

        async def one(node: str) -> None:
            mine = by_node[node]
            pids = [self.ledger.ranks[r.key].pid for r in mine if r.key in self.ledger.ranks]
            script = shlex.join(nodeside.alive(self.container, [p for p in pids if p])) + "\n"
            script += nodeside.tail_script([r.log for r in mine], LIVE_TAIL)
            o = await self.cluster.run_script(node, script, timeout=60)
            if o.status == "unreachable":
                self.lost[node] = o.reason
            states = nodeside.parse_alive(o.stdout)
            t = nodeside.parse_tails(o.stdout)
            for r in mine:
                entry = self.ledger.ranks.get(r.key)
                # an unanswered poll (connection trouble) is not a death
                alive[r.key] = True if o.status != "ok" and not states else bool(entry and states.get(entry.pid or -1))
            tails.update(t)

        await asyncio.gather(*(one(n) for n in by_node))
        return alive, tails

    async def _tails(self, refs: list[RankRef], lines: int = LOG_TAIL) -> dict[str, str]:
        """log path -> its last lines, one round trip per node."""
        by_node: dict[str, list[str]] = {}
        for r in refs:
            by_node.setdefault(r.node, []).append(r.log)
        out: dict[str, str] = {}
        for part in await asyncio.gather(*(self._tail_paths(n, logs, lines) for n, logs in by_node.items())):
            out.update(part)
        return out

    async def _tail_paths(self, node: str, paths: list[str], lines: int) -> dict[str, str]:
        o = await self.cluster.run_script(node, nodeside.tail_script(paths, lines), timeout=60)
        return nodeside.parse_tails(o.stdout)

    # ------------------------------------------------------------------ proxy and smoke

    async def _proxy(self) -> bool:
        p = self.plan.proxy
        assert p is not None
        t0 = time.monotonic()
        self.progress.step_started(Kind.PROXY, f"proxy on {p.node} {p.host}:{p.port}", [p.node])
        if not await self._proxy_healthy():
            inv = self.inv
            pidfile = nodepaths.proxy_pid(inv)
            argv = nodeside.start_many(self.container, [(nodepaths.proxy_script(inv), nodepaths.proxy_log(inv), pidfile)])
            o = await self.cluster.run(p.node, argv, timeout=60)
            if not o.ok:
                self.runner.add(StepReport(Kind.PROXY, "proxy", {p.node: from_outcome(o, "start the proxy")},
                                           time.monotonic() - t0))
                return False
            self.ledger.proxy_pid = nodeside.parse_started(o.stdout).get(pidfile)
            self.ledger.save()
        deadline = time.monotonic() + PROXY_TIMEOUT
        while time.monotonic() < deadline:
            if await self._proxy_healthy():
                self.runner.add(StepReport(Kind.PROXY, "proxy /healthcheck",
                                           {p.node: NodeResult(p.node, Cause.OK, "proxy answers /healthcheck")},
                                           time.monotonic() - t0))
                return True
            await asyncio.sleep(0.25)
        log = await self._tail_file(p.node, nodepaths.proxy_log(self.inv))
        self.runner.add(StepReport(Kind.PROXY, "proxy", {p.node: NodeResult(
            p.node, Cause.TIMED_OUT, f"the proxy did not answer /healthcheck within {PROXY_TIMEOUT:g}s; "
            f"last lines of {nodepaths.proxy_log(self.inv)}:\n" + _indent(log))}, time.monotonic() - t0))
        return False

    async def _tail_file(self, node: str, path: str, lines: int = LOG_TAIL) -> str:
        return (await self._tail_paths(node, [path], lines)).get(path, "")

    async def _warmup(self) -> bool:
        """readiness.warmup prefill requests to every prefill rank (the large-EP guide's FAQ:
        some NPU operators need a few rounds before full speed), as the proxy sends them."""
        n = self.inv.readiness.warmup
        ranks = [r for r in http_ranks(self.refs) if r.rank.role == "prefill" and r.rank.group in self.groups]
        t0 = time.monotonic()
        self.progress.step_started(Kind.WARMUP, f"warm-up: {n} prefill request(s) per prefill rank",
                                   sorted({r.node for r in ranks}))
        body = {"model": self.inv.model.served, "prompt": "warm-up", "max_tokens": 1, "min_tokens": 1,
                "stream": False, "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False,
                                                        "remote_engine_id": None, "remote_block_ids": None,
                                                        "remote_host": None, "remote_port": None}}
        key = api_key(self.plan)
        headers = {"Authorization": f"Bearer {key}"} if key else None

        async def one(ref: RankRef) -> tuple[RankRef, http.Response | None]:
            for _ in range(n):
                r = await http.request(lambda h, p: self.cluster.open_tcp(ref.node, h, p), ref.rank.ip,
                                       ref.port, "POST", "/v1/completions", body, timeout=SMOKE_TIMEOUT,
                                       headers=headers)
                if not r.ok:
                    return ref, r
            return ref, None

        results: dict[str, NodeResult] = {}
        for ref, bad in await asyncio.gather(*(one(r) for r in ranks)):
            if bad is not None and (ref.node not in results or results[ref.node].ok):
                results[ref.node] = NodeResult(ref.node, Cause.FAILED, f"warm-up request to {ref.where()} failed: "
                                               f"{bad.describe()} {bad.text()[:200]!r}",
                                               "deploy status INVENTORY; read that rank's log")
            results.setdefault(ref.node, NodeResult(ref.node, Cause.OK, f"{n} warm-up request(s) per rank"))
        report = StepReport(Kind.WARMUP, "warm-up", results, time.monotonic() - t0)
        self.runner.add(report)
        self._record(report)
        return report.ok

    async def _smoke(self, result: UpResult) -> bool:
        node, ip, port = smoke_target(self.plan)
        t0 = time.monotonic()
        self.progress.step_started(Kind.SMOKE, f"smoke: one completion through {ip}:{port}", [node])
        r = await completion(self.cluster, node, ip, port, self.inv.model.served, timeout=SMOKE_TIMEOUT,
                             key=api_key(self.plan))
        text = ""
        if r.ok:
            try:
                text = r.json()["choices"][0].get("text") or ""
            except (ValueError, KeyError, IndexError, TypeError):
                text = ""
        if r.ok and text.strip():
            result.smoke_text = text
            self.runner.add(StepReport(Kind.SMOKE, "smoke", {node: NodeResult(node, Cause.OK, f"HTTP 200: {text!r}")},
                                       time.monotonic() - t0))
            return True
        what = r.describe() + (f", body {r.text()[:300]!r}" if r.status else "")
        fix = ("the proxy does not check its backends: deploy status INVENTORY shows which rank is down"
               if self.plan.proxy is not None else "deploy status INVENTORY; read the API rank's log")
        if r.status == 401:
            fix = "the ranks want an API key: set args.api-key (or env VLLM_API_KEY) so deploy can send it"
        self.runner.add(StepReport(Kind.SMOKE, "smoke", {node: NodeResult(
            node, Cause.FAILED, f"completion through {ip}:{port} failed: {what}", fix)},
            time.monotonic() - t0))
        return False


async def completion(cluster: Cluster, node: str, ip: str, port: int, model: str, *, prompt: str = "Hello",
                     max_tokens: int = 16, timeout: float = 60.0, chat: bool = False,
                     key: str | None = None) -> http.Response:
    if chat:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        path = "/v1/chat/completions"
    else:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        path = "/v1/completions"
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return await http.request(lambda h, p: cluster.open_tcp(node, h, p), ip, port, "POST", path, body,
                              timeout=timeout, headers=headers)


def container_drift(current: dict, spec: ContainerPlan) -> list[str]:
    """What differs between an existing container (`docker inspect`) and the plan's."""
    cfg, host = current.get("Config", {}) or {}, current.get("HostConfig", {}) or {}
    diff = []
    if cfg.get("Image") != spec.image:
        diff.append(f"image {cfg.get('Image')} (plan: {spec.image})")
    have_dev = {d.get("PathOnHost") for d in host.get("Devices") or []}
    want_dev = set(spec.devices)
    if have_dev != want_dev:
        missing, extra = sorted(want_dev - have_dev), sorted(have_dev - want_dev)
        diff.append("devices" + (f" missing {', '.join(missing)}" if missing else "")
                    + (f" extra {', '.join(extra)}" if extra else ""))
    have_binds, want_binds = set(host.get("Binds") or []), set(spec.binds)
    if have_binds != want_binds:
        missing, extra = sorted(want_binds - have_binds), sorted(have_binds - want_binds)
        diff.append("mounts" + (f" missing {', '.join(missing)}" if missing else "")
                    + (f" extra {', '.join(extra)}" if extra else ""))
    env = set(cfg.get("Env") or [])
    missing_env = [k for k, v in spec.env if f"{k}={v}" not in env]
    if missing_env:
        diff.append(f"env {', '.join(missing_env)} differs")
    if bool(host.get("Privileged")) != spec.privileged:
        diff.append(f"privileged {bool(host.get('Privileged'))} (plan: {spec.privileged})")
    if host.get("ShmSize") not in (None, spec.shm_bytes):
        diff.append(f"shm-size {host.get('ShmSize')} bytes (plan: {spec.shm_size})")
    mode = host.get("NetworkMode")
    if mode and mode != "host":
        diff.append(f"network {mode} (plan: host)")
    return diff


GENERIC = {"engine-init-failed", "engine-dead"}  # fallbacks: not worth a live line of their own

_SEVERITY = {sig.id: sig.severity for sig in triage.SIGNATURES}  # signature id -> fatal / error / warning


def _triage(log: str, ref: RankRef, npus: int | None = None, live: bool = False,
            nodes_by_ip: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Known failure signatures in a log tail (orchestrator.triage): (signature id, one line
    naming the node and devices, with the cause and the fix). A device the line names by its
    node's IP (EI0016 lists them) is said with that node's name: it is often another node."""
    from .. import triage

    out = []
    for f in triage.match(log, npus_per_node=npus):
        if live and f.id in GENERIC:
            continue
        owner = (nodes_by_ip or {}).get(f.ip or "")
        if owner and f.device is not None:
            line = f"{owner} (device {f.device}, {f.ip}; seen by {ref.node}): {f.title}. {f.cause} Fix: {f.fix}"
        else:
            line = f.headline(ref.node, ref.rank.devices)
        out.append((f.id, line))
    return out


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-LOG_TAIL:]) or "    (empty log)"
