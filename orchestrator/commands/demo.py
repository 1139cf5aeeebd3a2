"""`deploy demo`: the whole product on the built-in simulator, in about a minute.

A simulated A3 2P1D cluster (the DeepSeek-V3.1 2P1D example: 4 nodes, 36 ranks) comes up over
real SSH on loopback; then check-network, up, status, one chat completion through the proxy,
teardown with its proof, and the simulator stops. Its ledger and logs live in the simulator's
folder, so a demo never touches the state of a real deployment of the same name.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

import click

EXAMPLE = "dsv31-a3-2p1d.yaml"


def example_inventory() -> Path:
    packaged = resources.files("orchestrator").joinpath("inventories", EXAMPLE)
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "inventories" / EXAMPLE


@click.command("demo")
@click.option("--keep", is_flag=True, help="Leave the deployment and the simulator running at the end.")
@click.option("--dir", "root", type=click.Path(file_okay=False), default=None,
              help="Simulator folder (default: a new one under /tmp).")
@click.option("--sshd", "mode", type=click.Choice(["openssh", "embedded"]), default=None,
              help="SSH server of the simulated nodes (default: OpenSSH when installed).")
def command(keep: bool, root: str | None, mode: str | None) -> None:
    """Bring up a simulated A3 2P1D deployment end to end and tear it down again. Exit 0 when
    every phase worked."""
    from ..sim import cluster as sim

    root_path = Path(root) if root else Path(tempfile.mkdtemp(prefix="deploy-demo-", dir="/tmp"))
    root_path.mkdir(parents=True, exist_ok=True)
    os.chmod(root_path, 0o755)  # the simulated nodes' user must traverse it
    os.environ["DEPLOY_STATE_DIR"] = str(root_path / "state")
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    say(f"deploy demo: simulated cluster in {root_path}")
    code = 1
    try:
        s = sim.up(root_path, str(example_inventory()), mode=mode, say=say)
        code = asyncio.run(_demo(s.inventory, keep))
    except KeyboardInterrupt:
        code = 130
    finally:
        if not keep:
            stopped, survivors = sim.down(root_path)
            say(f"simulator stopped ({len(stopped)} processes)" if not survivors
                else f"simulator left processes running: {survivors}")
            if survivors:
                code = code or 1
            elif root is None:  # a folder of our own: nothing of it is needed any more
                import shutil

                shutil.rmtree(root_path, ignore_errors=True)
        else:
            say(f"kept running: deploy status {root_path}/inventory.yaml; deploy sim down --dir {root_path}")
    sys.exit(code)


async def _demo(inventory: str, keep: bool) -> int:
    from ..checks.network import check_network
    from ..checks.report import print_report
    from ..launch.ledger import Ledger
    from ..launch.progress import Progress
    from ..launch.status import collect_status
    from ..launch.teardown import Teardown, TeardownOptions
    from ..launch.up import Up, UpOptions, completion
    from ..plan import load_and_plan
    from ..runlog import run_dir
    from .status import show

    plan = load_and_plan(inventory)
    progress = Progress()
    out = progress.console.print
    logs = run_dir(plan.inventory, "demo")
    from ..transport import Cluster

    async with Cluster(plan.inventory, plan.nodes, log_dir=logs) as cluster:
        out("\n[bold]1. deploy check-network[/bold]")
        await cluster.connect()
        report = await check_network(plan, cluster, busy_is_error=True)
        print_report(report, progress.console)
        if not report.ok:
            return report.exit_code
        out("\n[bold]2. deploy up[/bold]")
        ledger = Ledger(plan.name)
        ledger.inventory_text, ledger.inventory_file = Path(inventory).read_text(), inventory  # noqa: ASYNC240 (one small local file)
        result = await Up(plan, cluster, progress, ledger, UpOptions(skip_checks=True)).run()
        ledger.save()
        if not result.ok:
            out("[bold red]up failed[/bold red]")
            for g, msg in result.failed_groups.items():
                out(f"  group {g}: {msg}", markup=False)
            return 1
        out(f"[bold green]serving[/bold green] {result.endpoint}")
        out("\n[bold]3. deploy status[/bold]")
        st = await collect_status(plan, cluster, ledger)
        show(st, plan.name)
        if not st.healthy:
            return 1
        out("\n[bold]4. a chat completion through the proxy[/bold]")
        p = plan.proxy
        assert p is not None, "the demo inventory has a proxy"
        r = await completion(cluster, p.node, p.host, p.port, plan.inventory.model.served,
                             prompt="What is an Ascend NPU?", chat=True)
        text = ""
        if r.ok:
            text = r.json()["choices"][0]["message"]["content"]
        out(f"POST http://{p.host}:{p.port}/v1/chat/completions -> {r.describe()}: {text!r}", markup=False)
        if not text:
            return 1
        if keep:
            return 0
        out("\n[bold]5. deploy teardown[/bold]")
        clean = await Teardown(plan, cluster, progress, TeardownOptions()).run()
        out("[bold green]clean[/bold green]: no process on the NPUs, HBM idle, ports closed" if clean
            else "[bold red]NOT clean[/bold red]")
        return 0 if clean else 1
