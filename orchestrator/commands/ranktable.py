"""`deploy ranktable`: the P/D (LLMDataDist) or HCCL rank table from the nodes' live device IPs.

One SSH round per node (check-network's collection step), then build, validate, and only if
every check passes write the file atomically. A missing device IP is named (node and device)
and nothing is written: a partial table is the hour-long HCCL hang this command exists to stop.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import click

from ..checks.network import collect
from ..cliutil import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, load_plan_or_exit
from ..ranktable import FORMATS, build_table, default_format, render_table, table_hash, validate_table
from ..runlog import run_dir
from ..transport import Cluster


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@click.command("ranktable")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="pd: the LLMDataDist P/D table of gen_ranktable.py (default for prefill/decode plans); "
                   "hccl: the HCCL rank table v1.0 (A2) / v1.2 (A3) of the plan's nodes and devices.")
@click.option("-o", "--output", default="ranktable.json", show_default=True, metavar="FILE",
              help="Where to write the table; '-' prints it on stdout.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object on stdout: format, path, hash, problems, unreachable nodes, the table.")
def command(inventory: str, fmt: str | None, output: str, as_json: bool) -> None:
    """Collect every planned device's IP (A2 `hccn_tool -ip -g`; A3 also the vNIC IP and the
    SDID / Super Pod ID of `npu-smi info -t spod-info`), build the rank table, validate it against
    the plan and write it. Exit 0 written, 1 a validation problem (nothing written), 4 a node
    unreachable (nothing written), 2 usage or inventory error."""
    plan = load_plan_or_exit(inventory)
    fmt = fmt or default_format(plan)
    if fmt == "pd" and default_format(plan) != "pd":
        click.echo("error: --format pd needs prefill and decode groups; this plan has none (use --format hccl)",
                   err=True)
        sys.exit(EXIT_USAGE)
    if as_json and output == "-":
        click.echo("error: --json and -o - both want stdout; give -o FILE", err=True)
        sys.exit(EXIT_USAGE)
    kv = plan.inventory.kv_transfer
    if fmt == "pd" and kv is not None and kv.connector != "LLMDataDistCMgrConnector" and not as_json:
        click.echo(f"note: {kv.connector} reads no rank table (only LLMDataDistCMgrConnector does); "
                   "writing it anyway", err=True)
    nodes = plan.nodes
    logs = run_dir(plan.inventory, "ranktable")

    async def go():
        async with Cluster(plan.inventory, nodes, log_dir=logs) as cluster:
            await cluster.connect()
            facts, lost, broken = await collect(cluster, plan, nodes)
            unreachable = {n: cluster.unreachable[n].reason for n in nodes if n in cluster.unreachable}
            unreachable.update(lost)
            return facts, unreachable, broken

    facts, unreachable, broken = asyncio.run(go())
    table = build_table(plan, facts, fmt)  # type: ignore[arg-type]
    problems = [] if unreachable else validate_table(plan, table, facts)
    from ..ranktable import TableProblem

    problems = [TableProblem(n, None, f"the NPU facts could not be collected: {o.reason or o.cause.value}")
                for n, o in broken.items()] + problems
    code = EXIT_UNREACHABLE if unreachable else EXIT_FAILED if problems else EXIT_OK
    path = None
    if code == EXIT_OK:
        if output == "-":
            click.echo(render_table(table), nl=False)
        else:
            path = Path(output).expanduser()
            write_atomic(path, render_table(table))
    if as_json:
        click.echo(json.dumps({
            "inventory": plan.name, "format": fmt, "ok": code == EXIT_OK, "exit_code": code,
            "path": str(path) if path else None, "hash": table_hash(table) if code == EXIT_OK else None,
            "unreachable": unreachable, "problems": [p.to_json() for p in problems],
            "table": table if code == EXIT_OK else None, "logs": str(logs),
        }, indent=2))
    else:
        for node, reason in unreachable.items():
            click.echo(f"{node}: unreachable: {reason}", err=True)
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        if code == EXIT_OK:
            devices = len(table.get("prefill_device_list", [])) + len(table.get("decode_device_list", [])) \
                if fmt == "pd" else sum(len(s["device"]) for s in table["server_list"])
            where = "stdout" if path is None else str(path)
            click.echo(f"rank table ({fmt}, version {table['version']}) for {table['server_count']} servers, "
                       f"{devices} devices -> {where}  sha256 {table_hash(table)}", err=True)
        else:
            why = "unreachable nodes" if unreachable else f"{len(problems)} problems"
            click.echo(f"nothing written ({why})", err=True)
        click.echo(f"logs: {logs}", err=True)
    sys.exit(code)
