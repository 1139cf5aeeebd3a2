"""The `deploy` command line: one click group; each command lives in orchestrator/commands/.

A command's module is imported only when that command runs: `deploy exec` on 100 hosts should
not pay for the planner, rich tables or the simulator, and `deploy --help` pays for none of them
(it lists the commands from SUMMARIES below; tests/test_cli_startup.py checks that the listing
is exactly what click prints with every command imported).
"""
from __future__ import annotations

import importlib
from gettext import gettext as _

import click

from . import __version__

# command name -> module under orchestrator.commands exposing a click command named `command`
COMMANDS = {
    "plan": "plan",
    "check-network": "check_network",
    "up": "up",
    "status": "status",
    "teardown": "teardown",
    "exec": "exec",
    "ranktable": "ranktable",
    "demo": "demo",
    "sim": "sim",
}

# The first paragraph of each command's help, for the `Commands:` listing of `deploy --help`
# (click shortens it to the terminal width itself). Kept equal to the docstrings by a test.
SUMMARIES = {
    "plan": "Validate INVENTORY and print the plan: ranks, devices, ports, proxy, ordered steps.",
    "check-network": "Check NPU links, net health, device IPs, hccn.conf, TLS, health and HBM on "
                     "every node the plan uses, then ping the device pairs the plan will use. Exit "
                     "0 green (warnings allowed), 1 a failed check, 4 a node unreachable, 2 usage "
                     "or inventory error, 130/143 interrupted.",
    "up": "Check the network, start containers and every rank in the plan's order, wait until all "
          "answer /health, start the proxy and send one completion through it. Exit 0 serving, 1 "
          "a step failed (nothing left half-launched is hidden: see status), 2 usage or inventory "
          "error, 4 a node unreachable, 130/143 interrupted.",
    "status": "Per rank: node, group, role, DP rank, port, process alive, /health, uptime, running "
              "and waiting requests and KV-cache use; the proxy; the containers. Exit 0 all "
              "healthy, 1 otherwise, 4 a node unreachable.",
    "teardown": "Stop the proxy, every rank (process groups, then orphans on the deployment's "
                "devices) and the containers; then check on every node that no process holds the "
                "devices, HBM is back near idle and no deployment port listens. Exit 0 clean, 1 "
                "something is still held (named), 4 a node unreachable. Safe to repeat; works "
                "with no ledger (falls back to the plan).",
    "exec": "Run COMMAND (the argv after --) on the selected nodes, output folded like clush -b.",
    "ranktable": "Collect every planned device's IP (A2 `hccn_tool -ip -g`; A3 also the vNIC IP "
                 "and the SDID / Super Pod ID of `npu-smi info -t spod-info`), build the rank "
                 "table, validate it against the plan and write it. Exit 0 written, 1 a "
                 "validation problem (nothing written), 4 a node unreachable (nothing written), 2 "
                 "usage or inventory error.",
    "demo": "Bring up a simulated A3 2P1D deployment end to end and tear it down again. Exit 0 "
            "when every phase worked.",
    "sim": "Simulated NPU nodes: real SSH servers on loopback addresses with fake "
           "hccn_tool/npu-smi.",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, and listed without importing them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(f"orchestrator.commands.{module}").command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing (same width rule, same shortening), from SUMMARIES."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(n, click.Command(n, help=SUMMARIES[n]).get_short_help_str(limit)) for n in names]
        with formatter.section(_("Commands")):  # click's heading, translated as click does
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploy")
def main() -> None:
    """Bring up vLLM-Ascend on Ascend NPU clusters over SSH, from one inventory YAML."""
