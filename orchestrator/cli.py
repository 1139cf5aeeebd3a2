"""The `deploy` command line: one click group; each command lives in orchestrator/commands/."""
from __future__ import annotations

import importlib

import click

from . import __version__

# Each entry: module under orchestrator.commands exposing a click command named `command`.
COMMANDS = [
    "plan",
    "exec",
    "check_network",
    "sim",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploy")
def main() -> None:
    """Bring up vLLM-Ascend on Ascend NPU clusters over SSH, from one inventory YAML."""


for _name in COMMANDS:
    main.add_command(importlib.import_module(f"orchestrator.commands.{_name}").command)
