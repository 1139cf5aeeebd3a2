"""What a person sees while `up` / `teardown` run: one line per step, failures with node and fix,
and during the readiness wait a line per group every few seconds (started/ready, elapsed, the
last log line of the slowest rank). On stderr; plain text when not a terminal; nothing but
errors under `--json` (stdout then carries exactly one JSON object)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape

from .steps import Kind, StepReport


class Progress:
    def __init__(self, quiet: bool = False):
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self._last_wait = 0.0

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(escape(text))

    def step_started(self, kind: Kind, label: str, nodes: list[str]) -> None:
        if not self.quiet:
            where = f" ({len(nodes)} node{'s' if len(nodes) != 1 else ''})" if nodes else ""
            self.console.print(f"[bold]▶ {escape(label)}[/bold]{escape(where)}")

    def step_finished(self, report: StepReport) -> None:
        bad = report.failed
        if not bad:
            if not self.quiet:
                self.console.print(f"  [green]ok[/green] {escape(report.label)} ({report.seconds:.1f}s)")
            return
        for r in bad:  # failures are shown under --json too (stderr)
            self.console.print(f"  [bold red]{escape(r.cause.value)}[/bold red] {escape(r.node)}: {escape(r.message)}")
            if r.fix:
                self.console.print(f"    fix: {escape(r.fix)}")

    def waiting(self, lines: list[str], force: bool = False, every: float = 5.0) -> None:
        """Readiness progress, at most every `every` seconds."""
        now = time.monotonic()
        if self.quiet or (not force and now - self._last_wait < every):
            return
        self._last_wait = now
        for line in lines:
            self.console.print(f"  [dim]{escape(line)}[/dim]")
