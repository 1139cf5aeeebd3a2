"""The `deploy` command line: one click group; each command lives in orchestrator/commands/.

Commands are imported only when invoked: `deploy exec` on 100 hosts should not pay for the
planner, rich tables or the simulator (measured: ~100 ms of every CLI call).
"""
from __future__ import annotations

import importlib

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


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(f"orchestrator.commands.{module}").command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploy")
def main() -> None:
    """Bring up vLLM-Ascend on Ascend NPU clusters over SSH, from one inventory YAML."""
