"""`deploy sim`: a simulated Ascend cluster on this machine (docs/simulator.md).

Exit codes: 0 ok, 1 the simulator failed (or `down` left processes), 2 usage or inventory error.
"""
from __future__ import annotations

import sys
from typing import NoReturn

import click

from ..cliutil import EXIT_FAILED, EXIT_USAGE, fail_inventory
from ..errors import InventoryError
from ..sim import cluster
from ..sim import faults as faultreg
from ..sim.errors import SimError, SimUsageError

_DIR = click.option("--dir", "root", type=click.Path(file_okay=False), default=None,
                    help="Simulator directory (default /tmp/deploy-sim-<uid>).")


def _fail(err: SimError) -> NoReturn:
    click.echo(f"deploy sim: {err}", err=True)
    sys.exit(EXIT_USAGE if isinstance(err, SimUsageError) else EXIT_FAILED)


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.group("sim")
def command() -> None:
    """Simulated NPU nodes: real SSH servers on loopback addresses with fake hccn_tool/npu-smi."""


@command.command("up")
@click.argument("inventory", required=False, type=click.Path(dir_okay=False))
@_DIR
@click.option("--nodes", type=click.IntRange(1, 10000), help="No INVENTORY: simulate N generated nodes.")
@click.option("--soc", type=click.Choice(["a2", "a3"]), default="a3", show_default=True,
              help="SoC of the generated nodes (with --nodes).")
@click.option("--sshd", "mode", type=click.Choice(["openssh", "embedded"]), default=None,
              help="SSH server: the system sshd (default when /usr/sbin/sshd exists) or asyncssh.")
@click.option("--faults", "faults_file", type=click.Path(dir_okay=False),
              help="YAML list of {node, fault, device} applied once the nodes are up.")
@click.option("--port", type=click.IntRange(1, 65535), default=cluster.DEFAULT_PORT, show_default=True,
              help="SSH port of every node.")
@click.option("--startup", type=click.FloatRange(0, 3600), default=2.0, show_default=True,
              help="Seconds a simulated `vllm serve` takes to load (per node: runtime/config.json).")
@click.option("--time-factor", type=click.FloatRange(0.0001, 100), default=1.0, show_default=True,
              help="Scales vLLM's time limits (5-minute handshake, VLLM_ENGINE_READY_TIMEOUT_S).")
@click.option("--ping-latency", type=click.FloatRange(0, 60), default=0.0, show_default=True, metavar="S",
              help="Seconds every simulated -ping / -hccs_ping takes, holding its device (0: CPU only).")
def up(inventory, root, nodes, soc, mode, faults_file, port, startup, time_factor, ping_latency) -> None:
    """Start one SSH server per node; print the path of the inventory that points at them."""
    if (inventory is None) == (nodes is None):
        raise click.UsageError("give an INVENTORY or --nodes N (not both)")
    try:
        sim = cluster.up(root or cluster.default_dir(), inventory, nodes=nodes, soc=soc, mode=mode,
                         port=port, faults_file=faults_file, startup=startup,
                         time_factor=time_factor, ping_latency=ping_latency, say=_say)
    except InventoryError as err:
        fail_inventory(err)
    except SimError as err:
        _fail(err)
    click.echo(sim.inventory)


@command.command("down")
@_DIR
def down(root) -> None:
    """Stop every process of the sim (servers, sessions, what they started). Idempotent."""
    root = root or cluster.default_dir()
    try:
        stopped, survivors = cluster.down(root)
    except SimError as err:
        _fail(err)
    if survivors:
        click.echo(f"deploy sim: still running after SIGKILL: {' '.join(map(str, survivors))}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"sim down: stopped {len(stopped)} process(es); nothing of {root} is running")


_FAULT_EPILOG = "\b\nFaults (name, kind, meaning):\n" + faultreg.help_listing()


@command.command("fault", epilog=_FAULT_EPILOG)
@_DIR
@click.argument("node")
@click.argument("fault")
@click.option("--device", type=int, default=None, help="Device id, for device faults (default: all).")
def fault(root, node, fault, device) -> None:
    """Break NODE with FAULT: a tool fault (the node's hardware as hccn_tool/npu-smi report it),
    an SSH fault (its server), or a runtime fault (how vllm serve behaves there); `clear` undoes
    them all (running processes are kept)."""
    try:
        click.echo(cluster.fault(root or cluster.default_dir(), node, fault, device))
    except SimError as err:
        _fail(err)


@command.command("status")
@_DIR
def status(root) -> None:
    """Per node: address, whether its SSH server listens, its faults."""
    try:
        rows = cluster.status(root or cluster.default_dir())
    except SimError as err:
        _fail(err)
    for r in rows:
        faults = ",".join(r["ssh_faults"] + r["tool_faults"] + r.get("runtime_faults", [])) or "-"
        click.echo(f"{r['node']:12} {r['addr']}:{r['port']:<6} {'up' if r['up'] else 'down':5} {faults}")
