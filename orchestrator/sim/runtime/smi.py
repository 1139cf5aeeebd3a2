"""`npu-smi info`'s table, drawn from a node's state.json plus its live runtime occupancy.

One implementation of the table (stdlib only): `render.py` draws it at save time with no claims
(the pre-rendered answer the fast path prints), and the fake npu-smi runs this file
(`python3 DIR/runtime/smi.py info`) whenever the pre-rendered answer would be wrong: a process
holds HBM (a claim in DIR/nodes/<n>/runtime/hbm/, occupancy.py) or the caller is inside a
container (DEPLOY_SIM_CONTAINER: only the container's `--device`s are visible).
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

try:  # as a package module (render.py) or as DIR/runtime/smi.py (next to occupancy.py)
    from . import occupancy
except ImportError:
    import occupancy  # type: ignore[no-redef]

_W = 96  # frame interior width of the 25.2.0 tables
SEP_TOP = "+" + "-" * _W + "+"
SEP_COLS = "+" + "-" * 27 + "+" + "-" * 15 + "+" + "-" * 52 + "+"
SEP_NPU = "+" + "=" * 27 + "+" + "=" * 15 + "+" + "=" * 52 + "+"


def info_table(state: dict, claims: Sequence = (), visible: set[int] | None = None) -> str:
    """The table for `state` (state.json as a dict); `claims` are live (device, pid, MB, name)
    runtime claims, added to the process rows and HBM-Usage; `visible` limits the devices shown
    (a container's), None = all."""
    a3 = state["soc"] == "a3"
    devices = [d for d in state["devices"] if visible is None or d["id"] in visible]
    extra: dict[int, list[tuple[int, int, str]]] = {}
    for dev, pid, mb, name in claims:
        extra.setdefault(dev, []).append((pid, mb, name))
    lines = [
        SEP_TOP,
        f"| {'npu-smi ' + state['npu_smi_version']:<33}{'Version: ' + state['driver_version']:<62}|",
        SEP_COLS,
        "| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|",
        "| Chip  Phy-ID              | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |"
        if a3
        else "| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |",
        SEP_NPU,
    ]
    npus = sorted({d["npu"] for d in devices})
    for npu in npus:
        devs = [d for d in devices if d["npu"] == npu]
        for j, d in enumerate(devs):
            power = "-" if d["power_w"] is None else f"{d['power_w']:.1f}"
            chip_col = f"{d['chip']:<6}{d['id']}" if a3 else f"{d['chip']}"
            used = min(d["hbm_total_mb"], d["hbm_used_mb"] + sum(mb for _, mb, _ in extra.get(d["id"], [])))
            lines.append(f"| {npu:<6}{state['chip_name']:<20}| {d['health']:<14}| {power:<12}{d['temp_c']:<18}"
                         f"{'0':<5}/ {'0':<14}|")
            lines.append(
                f"| {chip_col:<26}| {d['bus_id']:<14}| {d['aicore_pct']:<12}{'0':<5}/ {'0':<11}"
                f"{used:<5}/ {d['hbm_total_mb']:<14}|"
            )
            lines.append(SEP_TOP if j < len(devs) - 1 else SEP_NPU)
    lines += [
        SEP_COLS,
        "| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |",
        SEP_NPU,
    ]
    for npu in npus:
        rows = []
        for d in devices:
            if d["npu"] != npu:
                continue
            procs = [(p["pid"], p["memory_mb"], p.get("name", "")) for p in d.get("processes", [])]
            for pid, mb, name in procs + sorted(extra.get(d["id"], [])):
                rows.append(f"| {npu:<8}{d['chip']:<18}| {pid:<14}| {name:<25}| {mb:<24}|")
        if not rows:
            rows = [f"| {'No running processes found in NPU ' + str(npu):<95}|"]
        lines += rows
        lines.append(SEP_NPU)
    return "\n".join(lines)


def container_devices(container_dir: str) -> set[int]:
    """The `--device /dev/davinciN` numbers of a container (its config.json, docker inspect's shape)."""
    with open(os.path.join(container_dir, "config.json")) as f:
        rec = json.load(f)
    out = set()
    for d in (rec.get("HostConfig") or {}).get("Devices") or []:
        tail = str(d.get("PathOnHost", "")).removeprefix("/dev/davinci")
        if tail.isdigit():
            out.add(int(tail))
    return out


def live_info(node_dir: str, container_dir: str | None = None) -> str:
    """The table as the node shows it now; void claims (dead PIDs) are swept on the way."""
    with open(os.path.join(node_dir, "state.json")) as f:
        state = json.load(f)
    visible = container_devices(container_dir) if container_dir else None
    occupancy.sweep(node_dir)
    return info_table(state, occupancy.claims(node_dir, None if visible is None else sorted(visible)), visible)


def main(argv: list[str]) -> int:
    node = os.environ.get("DEPLOY_SIM_NODE", "")
    if argv != ["info"] or not node:
        sys.stderr.write("usage: DEPLOY_SIM_NODE=... smi.py info\n")
        return 2
    sys.stdout.write(live_info(node, os.environ.get("DEPLOY_SIM_CONTAINER") or None) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
