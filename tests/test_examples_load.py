"""Every example inventory in inventories/ loads and plans (a new example is covered by itself)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

INVENTORIES = Path(__file__).resolve().parent.parent / "inventories"
EXAMPLES = sorted(INVENTORIES.glob("*.yaml"))


def _invoke(*args: str):
    from click.testing import CliRunner

    from orchestrator.cli import main

    return CliRunner().invoke(main, list(args))


def test_there_are_examples():
    assert EXAMPLES, f"no inventories in {INVENTORIES}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans(path: Path):
    result = _invoke("plan", str(path))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans_json(path: Path):
    result = _invoke("plan", str(path), "--json")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    plan = json.loads(result.stdout)   # stdout is exactly one JSON object
    assert isinstance(plan, dict)
    assert {"name", "soc", "ranks", "proxy", "steps"} <= set(plan)
    assert plan["ranks"], "a plan with no ranks"
