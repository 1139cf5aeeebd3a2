"""`deploy exec`: one command on many nodes, output folded like `clush -b`.

Identical outputs are printed once under the folded node set, so 64 healthy nodes take one block
and the outlier stands out; unreachable nodes are listed with why and how to fix it.
"""
from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict

import click

from ..cliutil import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, load_inventory_or_exit
from ..nodeset import SelectorError, fold, select_nodes
from ..runlog import run_dir
from ..transport import Cluster, Outcome

RULE = "-" * 16
ORDER = {"ok": 0, "failed": 1, "unreachable": 2}


@click.command("exec")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, required=True)
@click.option("--nodes", "selector", metavar="SELECTOR",
              help="p0, 'd*', 'd[0-3]', role:decode, group:p0; comma-separated (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Kill the command on a node after S seconds.")
def command(inventory: str, command: tuple[str, ...], selector: str | None, as_json: bool,
            timeout: float | None) -> None:
    """Run COMMAND (the argv after --) on the selected nodes, output folded like clush -b.

    COMMAND is an argv, never re-parsed by a shell on the node; for pipes use `sh -c '...'`.
    Exit 0 all ok, 1 some failed, 4 some unreachable, 2 usage or inventory error.
    """
    inv = load_inventory_or_exit(inventory)
    try:
        names = select_nodes(inv, selector)
    except SelectorError as e:
        raise click.BadParameter(str(e), param_hint="--nodes") from None
    logs = run_dir(inv, "exec")
    results = asyncio.run(_run(inv, names, list(command), timeout, logs))

    counts = {s: sum(o.status == s for o in results.values()) for s in ORDER}
    doc = {"command": list(command), "log_dir": str(logs),
           "nodes": {n: {"status": o.status, "rc": o.rc, "stdout": o.stdout, "stderr": o.stderr,
                         "reason": o.reason} for n, o in results.items()},
           "summary": {"nodes": len(results), **counts}}
    (logs / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(doc))
    else:
        click.echo(render(results), nl=False)
        click.echo(f"{len(results)} nodes: {counts['ok']} ok, {counts['failed']} failed, "
                   f"{counts['unreachable']} unreachable")
        click.echo(f"logs: {logs}", err=True)
    sys.exit(EXIT_UNREACHABLE if counts["unreachable"] else EXIT_FAILED if counts["failed"]
             else EXIT_OK)


async def _run(inv, names: list[str], argv: list[str], timeout: float | None, logs
               ) -> dict[str, Outcome]:
    with _Progress() as progress:
        async with Cluster(inv, names, log_dir=logs) as cluster:
            progress.phase("connecting", len(names))
            await cluster.connect(on_node=progress.advance)
            reachable = [n for n in names if n not in cluster.unreachable]
            progress.phase("running", len(reachable))
            results = await cluster.run_all(argv, reachable, timeout, on_done=progress.advance)
            return {n: cluster.unreachable.get(n) or results[n] for n in names}


def render(results: dict[str, Outcome]) -> str:
    """Group nodes whose status, rc and output are identical; one block per group."""
    groups: dict[tuple, list[str]] = defaultdict(list)
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

    def __enter__(self) -> "_Progress":
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

    def advance(self, _outcome: Outcome | None = None) -> None:
        if self._bar and self._task is not None:
            self._bar.advance(self._task)
