"""`python -m orchestrator` runs the `deploy` CLI (tests use it so they need no PATH)."""
from .cli import main

main()
