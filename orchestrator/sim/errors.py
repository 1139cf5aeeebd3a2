"""The simulator's two errors: it could not do what was asked (exit 1), or it was asked wrongly (exit 2)."""
from __future__ import annotations


class SimError(Exception):
    """The simulator could not do what was asked (exit 1)."""


class SimUsageError(SimError):
    """Bad arguments: unknown node or fault, not a sim directory... (exit 2)."""
