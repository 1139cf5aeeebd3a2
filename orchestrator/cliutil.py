"""What every command shares: exit codes, inventory loading that exits 2 with every problem,
and `--json` documents that are one object on stdout whatever happened."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import NoReturn

import click

from .errors import InventoryError, Problem, Source, format_problem, path_str

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 4
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def exit_code(causes: Iterable[str] = (), *, interrupted: int | None = None,
              local_error: bool = False) -> int:
    """The one exit-code rule of every command that touches nodes.

    `causes` are per-node outcome causes (`ok`, `failed`, `could_not_run`, `timed_out`,
    `unreachable`, `interrupted`) or check statuses (`fail`). An interruption wins (128 + signal:
    130 Ctrl-C, 143 SIGTERM), then 4 if any node was unreachable, then 1 if anything failed
    (a node, a check, or the local state folder), else 0.
    """
    if interrupted:
        return 128 + int(interrupted)
    seen = set(causes)
    if "unreachable" in seen:
        return EXIT_UNREACHABLE
    if seen - {"ok", "warn"} or local_error:
        return EXIT_FAILED
    return EXIT_OK


def json_wanted() -> bool:
    """`--json` was given to the command being run (read from click's context, so every
    command gets JSON errors without passing a flag around)."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("as_json"):
            return True
        ctx = ctx.parent
    return False


def problem_json(p: Problem, source: Source | None) -> dict:
    return {"file": source.file if source else None,
            "line": source.line_of(p.path) if source else None,
            "field": path_str(p.path), "message": p.message, "hint": p.hint}


def error_doc(exit_code_: int, error: str, problems: Sequence[Problem] = (),
              source: Source | None = None, warnings: Sequence[Problem] = ()) -> dict:
    return {"ok": False, "exit_code": exit_code_, "error": error,
            "problems": [problem_json(p, source) for p in problems],
            "warnings": [problem_json(w, source) for w in warnings]}


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """A usage or local error before any node was touched: stderr, or one JSON object."""
    if json_wanted():
        click.echo(json.dumps(error_doc(code, message)))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def fail_inventory(err: InventoryError) -> NoReturn:
    if json_wanted():
        errors = [p for p in err.problems if not p.warning]
        warnings = [p for p in err.problems if p.warning]
        click.echo(json.dumps(error_doc(EXIT_USAGE, "inventory error", errors, err.source,
                                        warnings)))
    click.echo(err.render(), err=True)
    sys.exit(EXIT_USAGE)


def load_inventory_or_exit(path: str):
    """Load and schema-validate only (commands that need no plan, e.g. exec); exit 2 on error.
    A repeat of a valid inventory comes from orchestrator/inventory_cache.py (no pydantic)."""
    from .inventory_cache import load_inventory

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
    from .redact import register_plan

    register_plan(plan)  # from here on no output shows its secret values
    for w in plan.warnings:
        click.echo(format_problem(w, plan.inventory.source), err=True)
    return plan


class JsonCommand(click.Command):
    """A click command whose usage errors are one JSON object on stdout under `--json`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        wants = "--json" in args[:args.index("--")] if "--" in args else "--json" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if not wants:
                raise
            click.echo(json.dumps(error_doc(EXIT_USAGE, e.format_message())))
            e.show()
            ctx.exit(EXIT_USAGE)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            if ctx.params.get("as_json"):
                click.echo(json.dumps(error_doc(e.exit_code, e.format_message())))
            raise
