"""Node-side scripts and templates (also visible as ./playbooks at the repository root)."""
from importlib import resources


def read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()
