"""`deploy exec`: one command on many nodes, output folded like `clush -b`.

Identical outputs are printed once under the folded node set, so 64 healthy nodes take one block
and the outlier stands out; unreachable nodes are listed with why and how to fix it.
"""
from __future__ import annotations

import asyncio
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .. import inventory_cache
from ..capture import CAPTURE_HEAD, CAPTURE_TAIL
from ..cliutil import JsonCommand, exit_code, fail, load_inventory_or_exit
from ..nodeset import SelectorError, fold, select_nodes
from ..runlog import StateError, run_dir

if TYPE_CHECKING:
    from ..transport import Outcome

RULE = "-" * 16
ORDER = {"ok": 0, "failed": 1, "unreachable": 2}
MAX_TIMEOUT = 7 * 86400.0


class Seconds(click.ParamType):
    """A finite number of seconds in (0, 7 days]: `nan`, `inf`, 0 and negatives are refused."""
    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r:.40} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT:
            self.fail(f"{value!r:.40} must be a finite number of seconds in (0, {MAX_TIMEOUT:g}]",
                      param, ctx)
        return seconds


@click.command("exec", cls=JsonCommand)
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, required=True)
@click.option("--nodes", "selector", metavar="SELECTOR",
              help="p0, 'd*', 'd[0-3]', role:decode, group:p0; comma-separated (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.option("--timeout", type=Seconds(), metavar="S",
              help="Kill the command on a node after S seconds.")
@click.option("--keep-head", type=click.IntRange(0, 1 << 30), default=CAPTURE_HEAD,
              show_default=True, metavar="BYTES",
              help="Bytes of each node's stdout/stderr kept from the start (all of it is logged).")
@click.option("--keep-tail", type=click.IntRange(0, 1 << 30), default=CAPTURE_TAIL,
              show_default=True, metavar="BYTES", help="Bytes kept from the end.")
def command(inventory: str, command: tuple[str, ...], selector: str | None, as_json: bool,
            timeout: float | None, keep_head: int, keep_tail: int) -> None:
    """Run COMMAND (the argv after --) on the selected nodes, output folded like clush -b.

    COMMAND is an argv, never re-parsed by a shell on the node; for pipes use `sh -c '...'`.
    Exit 0 all ok, 1 some failed, 4 some unreachable, 2 usage or inventory error,
    130/143 interrupted (Ctrl-C / SIGTERM: the commands started on the nodes are killed).
    """
    # A new or changed inventory is validated by a child while this process imports the SSH
    # stack; a repeat is a cache hit and forks nothing (orchestrator/inventory_cache.py).
    inventory_cache.prefetch(inventory)
    from .. import transport  # noqa: F401  (asyncssh: imported here, alongside the child)

    inv = load_inventory_or_exit(inventory)
    try:
        names = select_nodes(inv, selector)
    except SelectorError as e:
        fail(f"--nodes: {e}")
    if not names:
        fail("--nodes: the selection is empty")
    state_error = None
    try:
        logs: Path | None = run_dir(inv, "exec")
    except StateError as e:  # the nodes still run; nothing is lost: it is all printed
        logs, state_error = None, str(e)
    results, interrupted, log_errors = asyncio.run(
        _run(inv, names, list(command), timeout, logs, keep_head, keep_tail))
    if log_errors and not state_error:
        state_error = "cannot write the node logs: " + "; ".join(
            f"{n}: {e}" for n, e in sorted(log_errors.items())[:3])

    counts = {s: sum(o.status == s for o in results.values()) for s in ORDER}
    causes = [o.cause.value for o in results.values()]
    code = exit_code(causes, interrupted=interrupted, local_error=bool(state_error))
    doc = {"ok": code == 0, "exit_code": code, "command": list(command),
           "log_dir": str(logs) if logs else None,
           "nodes": {n: {"status": o.status, "cause": o.cause.value, "rc": o.rc,
                         "stdout": o.stdout, "stderr": o.stderr, "reason": o.reason,
                         "omitted_bytes": o.omitted} for n, o in results.items()},
           "summary": {"nodes": len(results), **counts,
                       "interrupted": sum(c == "interrupted" for c in causes)},
           "interrupted": interrupted, "state_error": state_error, "warnings": []}
    if logs is not None and not state_error:
        try:
            (logs / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as e:
            state_error = f"cannot write {logs / 'result.json'}: {e.strerror or e}"
            code = exit_code(causes, interrupted=interrupted, local_error=True)
            doc.update(ok=code == 0, exit_code=code, state_error=state_error)
    if as_json:
        click.echo(json.dumps(doc))
    else:
        click.echo(render(results), nl=False)
        tail = f", {sum(c == 'interrupted' for c in causes)} interrupted" if interrupted else ""
        click.echo(f"{len(results)} nodes: {counts['ok']} ok, {counts['failed']} failed, "
                   f"{counts['unreachable']} unreachable{tail}")
        if logs is not None:
            click.echo(f"logs: {logs}", err=True)
    if state_error:
        click.echo(f"error: {state_error}; the results above are complete", err=True)
    sys.exit(code)


async def _run(inv, names: list[str], argv: list[str], timeout: float | None, logs,
               keep_head: int, keep_tail: int
               ) -> tuple[dict[str, Outcome], int | None, dict[str, str]]:
    """Connect-and-run per node: a silent node costs its own connect timeout, nobody else's."""
    from ..transport import Cluster

    with _Progress() as progress:
        async with Cluster(inv, names, log_dir=logs, capture_head=keep_head,
                           capture_tail=keep_tail, handle_signals=True) as cluster:
            progress.phase("running", len(names))
            results = await cluster.run_all(argv, names, timeout, on_done=progress.advance)
            for node, o in cluster.killed.items():
                if not o.ok and node in results:
                    results[node].reason += f" (stopping it failed: {o.reason})"
            return results, cluster.interrupted, cluster.log_errors


def render(results: dict[str, Outcome]) -> str:
    """Group nodes whose status, rc and output are identical; one block per group."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    key: tuple
    for n, o in results.items():
        if o.status == "unreachable":  # one block per kind (refused, auth …), a line per node
            key = (o.status, None, "", "", o.reason.split(":")[0])
        else:
            key = (o.status, o.rc, o.stdout, o.stderr, o.reason if o.status == "failed" else "")
        groups[key].append(n)
    out = []
    for (status, rc, stdout, stderr, reason), nodes in sorted(
            groups.items(), key=lambda kv: (ORDER[kv[0][0]], -len(kv[1]), kv[1][0])):
        head = f"{RULE} {fold(nodes)} ({len(nodes)})"
        if status == "failed":
            head += f" rc={rc}" if rc is not None else f" failed: {reason}"
        elif status == "unreachable":
            head += f" unreachable: {reason}"
        out.append(head)
        if status == "unreachable":
            reasons = {results[n].reason for n in nodes}
            out += ([reasons.pop()] if len(reasons) == 1
                    else [f"{n}: {results[n].reason}" for n in nodes])
            continue
        for text in (stdout, stderr):
            if text:
                out.append(text.rstrip("\n"))
    return "\n".join(out) + "\n" if out else ""


class _Progress:
    """`connecting 3/64` on stderr, only for a person watching a terminal."""

    def __init__(self):
        self._bar, self._task = None, None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), console=Console(stderr=True),
                                 transient=True)

    def __enter__(self) -> _Progress:
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar:
            self._bar.stop()

    def phase(self, label: str, total: int) -> None:
        if self._bar:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(label, total=total)

    def advance(self, *_done) -> None:
        if self._bar and self._task is not None:
            self._bar.advance(self._task)
