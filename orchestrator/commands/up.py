"""`deploy up`: bring the deployment up and prove it serves (docs/up.md)."""
from __future__ import annotations

import os
import sys

import click

from ..launch.ledger import Ledger
from ..launch.progress import Progress
from ..launch.session import emit, fail, lock_or_exit, plan_from_file, run_async, run_dir_or_exit
from ..launch.steps import exit_code
from ..launch.up import Up, UpOptions
from ..transport import Cluster


@click.command("up")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--skip-checks", is_flag=True, help="Do not run check-network first (pre-flight still runs).")
@click.option("--recreate", is_flag=True, help="Replace existing containers whose configuration differs.")
@click.option("--only", "only", multiple=True, metavar="GROUP", help="Bring up only these groups (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout; progress on stderr.")
def command(inventory: str, skip_checks: bool, recreate: bool, only: tuple[str, ...], as_json: bool) -> None:
    """Check the network, start containers and every rank in the plan's order, wait until all
    answer /health, start the proxy and send one completion through it.
    Exit 0 serving, 1 a step failed (nothing left half-launched is hidden: see status),
    2 usage or inventory error, 4 a node unreachable, 130/143 interrupted."""
    plan, text = plan_from_file(inventory, as_json)
    groups = [g.name for g in plan.inventory.groups]
    unknown = [g for g in only if g not in groups]
    if unknown:
        raise click.BadParameter(f"no group {', '.join(unknown)} (groups: {', '.join(groups)})", param_hint="--only")
    progress = Progress(quiet=as_json)
    logs = run_dir_or_exit(plan.inventory, "up", as_json)
    lock = lock_or_exit(plan.name, "up", as_json)
    try:
        ledger = Ledger.load(plan.name) or Ledger(plan.name)
    except ValueError as e:
        fail(str(e), as_json)
    ledger.inventory_text, ledger.inventory_file = text, os.path.abspath(inventory)
    opts = UpOptions(skip_checks=skip_checks, recreate=recreate, only=list(only) or None, bundle_dir=str(logs))
    holder: dict = {}

    async def go():
        async with Cluster(plan.inventory, plan.nodes, log_dir=logs) as cluster:
            up = Up(plan, cluster, progress, ledger, opts)
            holder["up"] = up
            return await up.run()

    result, interrupted = run_async(go())
    up = holder.get("up")
    if interrupted:
        ledger.state = "interrupted"
    ledger.save()
    lock.__exit__(None, None, None)
    results = [r for rep in (up.runner.reports if up else []) for r in rep.results.values()]
    code = exit_code(results, interrupted)
    if result is not None and not result.ok and code == 0:
        code = 1
    doc = {"ok": bool(result and result.ok), "exit_code": code, "inventory": plan.name,
           "nothing_to_do": bool(result and result.nothing_to_do),
           "endpoint": result.endpoint if result else "", "smoke_text": result.smoke_text if result else "",
           "ready_seconds": result.ready_seconds if result else {},
           "failed_groups": result.failed_groups if result else {},
           "steps": up.runner.to_json() if up else [], "logs": str(logs),
           "node_state_dir": f"/var/tmp/deploy/{plan.name}", "ledger": str(Ledger.path_for(plan.name))}
    if interrupted:
        doc["interrupted"] = True
    if as_json:
        if result is not None and result.network is not None:
            doc["network"] = result.network
        emit(doc)
    else:
        _summary(doc, progress)
    sys.exit(code)


def _summary(doc: dict, progress: Progress) -> None:
    say = progress.console.print
    if doc.get("interrupted"):
        say("[bold yellow]interrupted[/bold yellow]: the ledger records what was started; "
            "`deploy up` again continues, `deploy teardown` stops it all")
    elif doc["ok"]:
        if doc["nothing_to_do"]:
            say(f"[bold green]serving[/bold green] {doc['endpoint']} (nothing to do)")
        else:
            say(f"[bold green]serving[/bold green] {doc['endpoint']}")
            for g, s in doc["ready_seconds"].items():
                say(f"  group {g} ready in {s:.1f}s")
            if doc["smoke_text"]:
                say(f"  smoke completion: {doc['smoke_text']!r}", markup=False)
    else:
        say("[bold red]up failed[/bold red] (details above)")
        for g, msg in doc["failed_groups"].items():
            say(f"  group {g}: {msg.splitlines()[0]}", markup=False, highlight=False)
        failed = [r for s in doc["steps"] for r in s["nodes"].values() if r["cause"] not in ("ok", "skipped")]
        if not doc["failed_groups"]:
            for r in failed[:10]:
                say(f"  {r['node']}: {r['message'].splitlines()[0] if r['message'] else r['cause']}",
                    markup=False, highlight=False)
        if doc["steps"] and any(s["step"] == "launch" for s in doc["steps"]):
            say("  ranks that started are still running: deploy status INVENTORY; deploy teardown INVENTORY",
                markup=False, highlight=False)
    say(f"logs: {doc['logs']} (local), {doc['node_state_dir']} (each node)", markup=False)
