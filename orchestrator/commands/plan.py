"""`deploy plan`: show exactly what `up` would start, where, and in which order.

Secrets are shown as `<redacted>` (orchestrator/redact.py); the scripts of `--script` never
hold them: they source the 0600 env files `up` writes next to them."""
from __future__ import annotations

import json

import click

from ..cliutil import JsonCommand, load_plan_or_exit
from ..redact import redact_plan_json, secret_warnings


@click.command("plan", cls=JsonCommand)
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout (the spec's format).")
@click.option("--script", "script_node", metavar="NODE",
              help="Print what `up` runs on NODE: its docker run, setup, rank scripts and proxy script.")
def command(inventory: str, as_json: bool, script_node: str | None) -> None:
    """Validate INVENTORY and print the plan: ranks, devices, ports, proxy, ordered steps."""
    plan = load_plan_or_exit(inventory)
    for line in secret_warnings(plan):
        click.echo(f"warning: {line}", err=True)
    if script_node is not None:
        if script_node not in plan.inventory.nodes:
            raise click.BadParameter(f"'{script_node}' is not a node of the inventory "
                                     f"(nodes: {', '.join(plan.inventory.nodes)})", param_hint="--script")
        from ..scripts import node_script

        text = node_script(plan, script_node)
        if not text:
            raise click.ClickException(f"node '{script_node}' runs nothing in this plan")
        click.echo(text, nl=False)
        return
    if as_json:
        click.echo(json.dumps(redact_plan_json(plan.to_json()), indent=2))
        return
    from ..render import plan_table  # rich: only for the table

    plan_table(plan)
