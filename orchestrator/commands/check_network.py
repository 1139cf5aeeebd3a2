"""`deploy check-network`: prove the NPU network before anything launches."""
from __future__ import annotations

import asyncio
import sys

import click

from ..checks import jsonout
from ..checks.network import PING_PARALLEL_MAX, check_network
from ..cliutil import JsonCommand, fail, load_plan_or_exit, problem_json
from ..nodeset import SelectorError, select_nodes
from ..runlog import StateError, run_dir
from ..transport import Cluster


@click.command("check-network", cls=JsonCommand)
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout: every check of every node/device.")
@click.option("--fix-tls", type=click.Choice(["off", "on"]), is_flag=False, flag_value="off", default=None,
              help="Set every used device to the same TLS switch (default off = disable) where it differs, "
                   "then re-check.")
@click.option("--no-ping", is_flag=True, help="Skip the planned-pair pings.")
@click.option("--nodes", "selector", metavar="SELECTOR",
              help="Only these nodes: names, globs, role:decode, group:p0 (comma-separated).")
@click.option("--ping-parallel", type=click.IntRange(1, PING_PARALLEL_MAX), default=None, metavar="N",
              help="At most N pings in flight per node (default: one per device, the hardware's limit; "
                   f"1..{PING_PARALLEL_MAX}; above the devices a node pings from, a device runs several).")
def command(inventory: str, as_json: bool, fix_tls: str | None, no_ping: bool, selector: str | None,
            ping_parallel: int | None) -> None:
    """Check NPU links, net health, device IPs, hccn.conf, TLS, health and HBM on every node the
    plan uses, then ping the device pairs the plan will use. Exit 0 green (warnings allowed),
    1 a failed check, 4 a node unreachable, 2 usage or inventory error, 130/143 interrupted."""
    plan = load_plan_or_exit(inventory)
    try:
        nodes = select_nodes(plan.inventory, selector) if selector else plan.nodes
    except SelectorError as e:
        fail(f"--nodes: {e}")
    nodes = [n for n in plan.nodes if n in nodes]
    if not nodes:
        fail("the selection has no node that the plan uses")
    # rich only for a person: --json and piped runs never import it (~25 ms of start-up)
    quiet = as_json or not sys.stderr.isatty()
    if not quiet:
        from rich.console import Console

        err = Console(stderr=True)

    def progress(msg: str) -> None:
        if not quiet:
            err.print(f"[dim]{msg}[/dim]", highlight=False)

    state_error = None
    try:
        logs = run_dir(plan.inventory, "check-network")
    except StateError as e:  # --fix-tls changes nodes: run, print everything, say so, exit >= 1
        logs, state_error = None, str(e)

    async def go():
        async with Cluster(plan.inventory, nodes, log_dir=logs, handle_signals=True) as cluster:
            progress(f"checking {len(nodes)} nodes")
            report = await check_network(plan, cluster, nodes, ping=not no_ping,
                                         fix_tls_to=None if fix_tls is None else int(fix_tls == "on"),
                                         progress=progress, ping_parallel=ping_parallel)
            return report, cluster.log_errors

    report, log_errors = asyncio.run(go())
    if log_errors and not state_error:
        state_error = "cannot write the node logs: " + "; ".join(
            f"{n}: {e}" for n, e in sorted(log_errors.items())[:3])
    report.local_error = state_error
    if as_json:
        out = report.to_json()
        out["inventory"] = plan.name
        out["logs"] = str(logs) if logs else None
        out["warnings"] = [problem_json(w, plan.inventory.source) for w in plan.warnings]
        click.echo(jsonout.dumps(out))  # = json.dumps(out, indent=2), faster for 10^4 records
    else:
        from rich.console import Console

        from ..checks.report import print_report

        n_pairs = len(report.pings) if not no_ping else 0
        title = (f"check-network {plan.name}: {len(nodes)} nodes ({plan.inventory.soc}), "
                 f"{sum(len(plan.devices_used(n)) for n in nodes)} devices, {n_pairs} planned pings")
        out = Console()
        if not out.is_terminal:
            out = Console(width=160)  # piped or logged: keep observed lines and fixes unwrapped
        print_report(report, out, title)
        if logs is not None:
            click.echo(f"logs: {logs}", err=True)
    if state_error:
        click.echo(f"error: {state_error}; the results above are complete", err=True)
    sys.exit(report.exit_code)
