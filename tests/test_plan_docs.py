"""docs/inventory.md documents every inventory field, and no example or doc points outside the repo."""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from orchestrator.inventory import Inventory

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "inventory.md").read_text()


def fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        out.append(prefix + name)
        for cand in (f.annotation, *getattr(f.annotation, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out += fields(inner, prefix + name + ".")
    return out


def test_every_inventory_field_is_documented():
    missing = [f for f in dict.fromkeys(fields(Inventory))
               if f"`{f.rsplit('.', 1)[-1]}`" not in DOC and f"{f.rsplit('.', 1)[-1]}:" not in DOC]
    assert not missing, f"fields not in docs/inventory.md: {missing}"


def test_no_file_points_outside_the_repo():
    pattern = re.compile(r"/work/|\.\./shared/|seed-[a-z0-9-]+\.txt")
    files = [*ROOT.glob("inventories/*.yaml"), *ROOT.glob("docs/*.md"), ROOT / "README.md",
             ROOT / "tests" / "test_examples_golden.py"]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
