"""`deploy teardown`: stop everything the deployment started and prove the NPUs are free."""
from __future__ import annotations

import sys

import click

from ..launch.progress import Progress
from ..launch.session import emit, launched_plan, lock_or_exit, run_async, run_dir_or_exit
from ..launch.steps import exit_code
from ..launch.teardown import GRACE, Teardown, TeardownOptions
from ..transport import Cluster


@click.command("teardown")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--keep-containers", is_flag=True, help="Stop the ranks and proxy but keep the containers.")
@click.option("--grace", type=click.FloatRange(0, 3600), default=GRACE, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def command(inventory: str, keep_containers: bool, grace: float, as_json: bool) -> None:
    """Stop the proxy, every rank (process groups, then orphans on the deployment's devices) and
    the containers; then check on every node that no process holds the devices, HBM is back
    near idle and no deployment port listens. Exit 0 clean, 1 something is still held (named),
    4 a node unreachable. Safe to repeat; works with no ledger (falls back to the plan)."""
    plan, ledger, source = launched_plan(inventory, as_json)
    progress = Progress(quiet=as_json)
    logs = run_dir_or_exit(plan.inventory, "teardown", as_json)
    lock = lock_or_exit(plan.name, "teardown", as_json)
    holder: dict = {}

    async def go():
        async with Cluster(plan.inventory, plan.nodes, log_dir=logs) as cluster:
            t = Teardown(plan, cluster, progress, TeardownOptions(keep_containers, grace))
            holder["t"] = t
            return await t.run()

    clean, interrupted = run_async(go())
    t = holder.get("t")
    if ledger is not None and clean:
        ledger.state = "torn-down"
        ledger.ranks = {}
        ledger.proxy_pid = None
        ledger.containers = {} if not keep_containers else ledger.containers
        ledger.save()
    lock.__exit__(None, None, None)
    results = [r for rep in (t.runner.reports if t else []) for r in rep.results.values()]
    code = exit_code(results, interrupted)
    if not clean and code == 0:
        code = 1
    doc = {"ok": bool(clean), "exit_code": code, "inventory": plan.name, "acted_on": source,
           "steps": t.runner.to_json() if t else [], "logs": str(logs)}
    if as_json:
        emit(doc)
    else:
        say = progress.console.print
        if clean:
            say(f"[bold green]clean[/bold green]: nothing of {plan.name} runs; NPUs and ports are free")
        else:
            say("[bold red]NOT clean[/bold red]: see the nodes named above")
        say(f"logs: {logs}", markup=False)
    sys.exit(code)
