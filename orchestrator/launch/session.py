"""What `up`, `status` and `teardown` share around their logic: the plan to act on (the ledger's
inventory as launched, else the file), the lock, the run folder, one JSON object on stdout."""
from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import NoReturn

import click

from .. import redact
from ..cliutil import EXIT_USAGE, fail_inventory
from ..errors import InventoryError, format_problem
from ..plan import Plan, make_plan
from .ledger import Ledger


def plan_from_file(path: str, as_json: bool) -> tuple[Plan, str]:
    from ..inventory import load_inventory

    try:
        plan = make_plan(load_inventory(path))
    except InventoryError as err:
        if as_json:
            emit({"ok": False, "exit_code": EXIT_USAGE, "problems": _problems(err)})
            sys.exit(EXIT_USAGE)
        fail_inventory(err)
    redact.register_plan(plan)  # from here on no output shows its secret values
    if not as_json:
        for w in plan.warnings:
            click.echo(format_problem(w, plan.inventory.source), err=True)
        for line in redact.secret_warnings(plan):
            click.echo(f"warning: {line}", err=True)
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    return plan, text


def _problems(err: InventoryError) -> list[dict]:
    out = []
    for p in err.problems:
        line = err.source.line_of(p.path) if err.source else None
        out.append({"file": err.source.file if err.source else None, "line": line,
                    "field": ".".join(map(str, p.path)), "message": p.message, "fix": p.hint})
    return out


def launched_plan(path: str, as_json: bool) -> tuple[Plan, Ledger | None, str]:
    """The plan `status`/`teardown` act on: the inventory as launched (from the ledger) when
    there is one, else the file. Returns (plan, ledger, where it came from)."""
    from ..inventory import parse_inventory

    plan, _text = plan_from_file(path, as_json)
    run_dir_or_exit(plan.inventory, "state", as_json, probe=True)
    try:
        ledger = Ledger.load(plan.name)
    except ValueError as e:
        click.echo(f"warning: {e}; using the inventory file", err=True)
        return plan, None, "inventory file"
    if ledger is None or not ledger.inventory_text:
        return plan, ledger, "inventory file (no ledger)"
    try:
        launched = make_plan(parse_inventory(ledger.inventory_text, ledger.inventory_file or path))
    except InventoryError:
        return plan, ledger, "inventory file (the ledger's copy no longer plans)"
    if launched.name != plan.name:  # the ledger is found by name: one of another name is not ours
        click.echo(f"warning: the ledger {Ledger.path_for(plan.name)} holds the inventory "
                   f"'{launched.name}', not '{plan.name}'; using the inventory file", err=True)
        return plan, None, "inventory file (the ledger names another deployment)"
    if redact.redact_plan_json(launched.to_json()) != redact.redact_plan_json(plan.to_json()):
        click.echo(f"note: {path} changed since `up`; acting on the deployment as launched "
                   f"(ledger {Ledger.path_for(plan.name)})", err=True)
    return launched, ledger, "ledger"


def emit(doc: dict) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def run_async(coro):
    """asyncio.run with SIGTERM treated like Ctrl-C (KeyboardInterrupt -> exit 130/143)."""
    terminated = {"flag": False}

    def on_term(*_a):
        terminated["flag"] = True
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        return asyncio.run(coro), None
    except KeyboardInterrupt:
        return None, 143 if terminated["flag"] else 130
    finally:
        signal.signal(signal.SIGTERM, old)


def run_dir_or_exit(inventory, command: str, as_json: bool, probe: bool = False):
    """The run folder; a state folder that cannot be written (full, read-only) stops the
    command before it touches a node, naming the folder (the ledger must be writable).
    `probe`: only check that the deployment's folder can be made."""
    from ..runlog import StateError, run_dir, state_dir
    from .ledger import deployment_dir

    try:
        if probe:
            try:
                return deployment_dir(inventory.name)
            except OSError as e:
                raise StateError(state_dir(), e) from None
        return run_dir(inventory, command)
    except StateError as e:
        fail(str(e), as_json)


def fail(message: str, as_json: bool, code: int = 1) -> NoReturn:
    """One error line (or one JSON object under --json), then exit."""
    if as_json:
        emit({"ok": False, "exit_code": code, "error": message})
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def lock_or_exit(name: str, command: str, as_json: bool):
    """Take the deployment's lock for this command (released by `.__exit__`), or exit 1
    naming the holder: a second up/teardown of the same inventory is refused at once."""
    from .ledger import LockHeld, deployment_lock

    lock = deployment_lock(name, command)
    try:
        lock.__enter__()
    except LockHeld as e:
        fail(str(e), as_json)
    return lock
