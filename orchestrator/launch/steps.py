"""Typed steps and the one runner that executes them over the `Cluster`.

A step runs a function on many nodes at once; between steps there is a barrier. A node whose
step failed leaves the run with its reason (later steps skip it), and every result is a value
with a cause, reported through one event sink that drives both the live progress and the final
report / `--json`. Facts flow from step to step through the `Context`.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from ..transport import Cause as TCause
from ..transport import Outcome


class Cause(str, Enum):
    """A step result's cause: the transport's causes (same values) plus two of the steps' own."""
    OK = TCause.OK.value
    FAILED = TCause.FAILED.value                # the node answered: the command or check failed
    COULD_NOT_RUN = TCause.COULD_NOT_RUN.value  # no channel, no docker, sudo refused ...
    TIMED_OUT = TCause.TIMED_OUT.value
    UNREACHABLE = TCause.UNREACHABLE.value
    INTERRUPTED = TCause.INTERRUPTED.value
    REFUSED = "refused"                         # deploy refuses to go on (drift, busy device ...)
    SKIPPED = "skipped"                         # not run: the node left the run earlier


class Kind(str, Enum):
    CONNECT = "connect"
    CHECK_NETWORK = "check-network"
    RANKTABLE = "ranktable"
    PREPARE = "prepare"          # state folder and uploads
    IMAGE = "image"
    CONTAINERS = "containers"
    SETUP = "setup"
    PREFLIGHT = "preflight"
    LAUNCH = "launch"
    READINESS = "readiness"
    PROXY = "proxy"
    WARMUP = "warmup"
    SMOKE = "smoke"
    STOP_PROXY = "stop-proxy"
    STOP_RANKS = "stop-ranks"
    ORPHANS = "orphans"
    REMOVE_CONTAINERS = "remove-containers"
    VERIFY = "verify"
    STATUS = "status"


@dataclass
class NodeResult:
    node: str
    cause: Cause
    message: str = ""
    fix: str = ""
    data: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.cause in (Cause.OK, Cause.SKIPPED)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"node": self.node, "cause": self.cause.value, "message": self.message}
        if self.fix:
            out["fix"] = self.fix
        if self.data:
            out["data"] = self.data
        return out


def from_outcome(o: Outcome, what: str, fix: str = "") -> NodeResult:
    """A transport outcome as a step result; `what` says what was being done."""
    cause = Cause(o.cause.value)
    if cause is Cause.OK:
        return NodeResult(o.node, Cause.OK, what)
    if cause is not Cause.FAILED:
        return NodeResult(o.node, cause, f"{what}: {o.reason}", fix if cause is not Cause.UNREACHABLE else "")
    detail = (o.stderr.strip() or o.stdout.strip() or o.reason).splitlines()
    tail = " | ".join(detail[-3:])[:600]
    return NodeResult(o.node, Cause.FAILED, f"{what} failed (exit {o.rc}): {tail}", fix)


@dataclass
class StepReport:
    kind: Kind
    label: str
    results: dict[str, NodeResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())

    @property
    def failed(self) -> list[NodeResult]:
        return [r for r in self.results.values() if not r.ok]

    def to_json(self) -> dict:
        return {"step": self.kind.value, "label": self.label, "ok": self.ok,
                "seconds": round(self.seconds, 2),
                "nodes": {n: r.to_json() for n, r in self.results.items()}}


class Events(Protocol):
    def step_started(self, kind: Kind, label: str, nodes: list[str]) -> None: ...
    def step_finished(self, report: StepReport) -> None: ...
    def say(self, text: str) -> None: ...


class Runner:
    """Runs steps over the cluster's nodes; remembers who failed and every report."""

    def __init__(self, cluster, events: Events):
        self.cluster = cluster
        self.events = events
        self.failed: dict[str, NodeResult] = {}
        self.reports: list[StepReport] = []

    def live(self, nodes: list[str]) -> list[str]:
        return [n for n in nodes if n not in self.failed]

    async def each(self, kind: Kind, label: str, nodes: list[str],
                   fn: Callable[[str], Awaitable[NodeResult]]) -> StepReport:
        """`fn(node)` on every live node at once; a barrier; failures leave the run."""
        todo = self.live(nodes)
        self.events.step_started(kind, label, todo)
        t0 = time.monotonic()
        results = await self.cluster.each(todo, fn)  # interrupted: the unfinished nodes are missing
        for n in nodes:
            if n not in results:
                results[n] = (NodeResult(n, Cause.SKIPPED, f"skipped: {self.failed[n].message}") if n in self.failed
                              else NodeResult(n, Cause.INTERRUPTED, "interrupted"))
        report = StepReport(kind, label, results, time.monotonic() - t0)
        for r in report.failed:
            self.failed.setdefault(r.node, r)
        self.reports.append(report)
        self.events.step_finished(report)
        return report

    def add(self, report: StepReport) -> StepReport:
        """A step computed elsewhere (check-network, readiness) joins the same record."""
        for r in report.failed:
            self.failed.setdefault(r.node, r)
        self.reports.append(report)
        self.events.step_finished(report)
        return report

    def to_json(self) -> list[dict]:
        return [r.to_json() for r in self.reports]


def exit_code(results: list[NodeResult], interrupted: int | None = None) -> int:
    """The commands' one exit-code rule (cliutil.exit_code) over step results: 0 ok, 1 something
    failed, 4 a node unreachable (4 wins), 130/143 interrupted (given as that exit code)."""
    from ..cliutil import exit_code as rule

    return rule([r.cause.value for r in results if r.cause is not Cause.SKIPPED],
                interrupted=interrupted - 128 if interrupted else None)
