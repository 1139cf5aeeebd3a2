"""What every command shares: exit codes, inventory loading that exits 2 with every problem."""
from __future__ import annotations

import sys

import click

from .errors import InventoryError, format_problem

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 4


def fail_inventory(err: InventoryError) -> "NoReturn":  # noqa: F821
    click.echo(err.render(), err=True)
    sys.exit(EXIT_USAGE)


def load_inventory_or_exit(path: str):
    """Load and schema-validate only (commands that need no plan, e.g. exec); exit 2 on error."""
    from .inventory import load_inventory

    try:
        return load_inventory(path)
    except InventoryError as err:
        fail_inventory(err)


def load_plan_or_exit(path: str):
    """Load, validate and plan an inventory; print warnings to stderr; exit 2 on any error."""
    from .plan import load_and_plan

    try:
        plan = load_and_plan(path)
    except InventoryError as err:
        fail_inventory(err)
    for w in plan.warnings:
        click.echo(format_problem(w, plan.inventory.source), err=True)
    return plan
