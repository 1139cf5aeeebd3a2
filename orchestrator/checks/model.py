"""The structured result of `check-network`: every check of every node and device, as values.

`deploy up` consumes `NetworkReport` directly (refusing to launch when `failed`), so nothing
here prints; rendering lives in `report.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    node: str
    check: str
    status: Status
    observed: str = ""
    reason: str = ""
    fix: str = ""
    device: int | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)  # flat fields: cheaper than asdict for 10^4 checks


@dataclass
class Ping:
    src: str
    src_device: int
    dst: str
    dst_device: int
    kind: str  # ping (RoCE) | hccs_ping (vNIC inside a Super Pod)
    address: str
    ok: bool
    observed: str
    busy_retries: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)  # flat fields: cheaper than asdict for 10^4 checks


@dataclass
class NetworkReport:
    nodes: list[str]
    checks: list[Check] = field(default_factory=list)
    pings: list[Ping] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    tls_changes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)  # cluster-level lines (TLS split, versions)
    # node -> NodeFacts of the collection step, so `up` builds the rank table without a second pass
    facts: dict = field(default_factory=dict, repr=False)
    interrupted: int | None = None  # the signal that stopped the check (the report is partial)
    local_error: str | None = None  # the local state folder failed (logs not written)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unreachable and not self.interrupted

    @property
    def exit_code(self) -> int:
        """0 green (warnings allowed), 1 a failed check, 4 a node unreachable (4 wins),
        130/143 interrupted; the one rule of every command (cliutil.exit_code)."""
        from ..cliutil import exit_code

        causes = ["unreachable"] * bool(self.unreachable) + [c.status for c in self.failed]
        return exit_code(causes, interrupted=self.interrupted, local_error=bool(self.local_error))

    def verdict(self) -> str:
        n = len(self.nodes)
        if self.interrupted:
            return f"network check INTERRUPTED ({len(self.checks)} checks, {len(self.pings)} pings done)"
        if self.ok:
            w = len(self.warnings)
            return f"network OK: {n} nodes, {len(self.pings)} pings" + (f", {w} warnings" if w else "")
        parts = []
        if self.failed:
            bad_nodes = sorted({c.node for c in self.failed})
            k = len(self.failed)
            parts.append(f"{k} failed check{'s' if k != 1 else ''} on {len(bad_nodes)} of {n} nodes")
        if self.unreachable:
            parts.append(f"{len(self.unreachable)} of {n} nodes unreachable")
        return "network NOT ready: " + ", ".join(parts)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "verdict": self.verdict(),
            "nodes": self.nodes,
            "unreachable": self.unreachable,
            "summary": self.summary,
            "tls_changes": self.tls_changes,
            "interrupted": self.interrupted,
            "state_error": self.local_error,
            "checks": [c.to_json() for c in self.checks],
            "pings": [p.to_json() for p in self.pings],
        }
