"""Human renderings of a plan: the rank table and the node-side launch scripts."""
from __future__ import annotations

import re
import shlex
from string import Template

from rich.console import Console
from rich.table import Table

from .nodepaths import script_name
from .playbooks import read
from .plan import Plan, Rank

_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMMENT_SAFE = re.compile(r"^[^\x00-\x1f\x7f]*$")


class Unquotable(Exception):
    """A programming error: validation let through something a script cannot hold safely."""


def _quotable(value: str) -> str:
    if not isinstance(value, str) or "\x00" in value:
        raise Unquotable(f"cannot quote {value!r:.60} for sh")
    return value


def comment_text(text: str) -> str:
    """Text for a `#` line: one line, no control characters (a newline would end the comment)."""
    if not _COMMENT_SAFE.match(text):
        raise Unquotable(f"cannot put {text!r:.60} in a script comment")
    return text


def env_name(name: str) -> str:
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise Unquotable(f"not an environment variable name: {name!r:.60}")
    return name


def shell_value(value: str) -> str:
    """Quote for sh, keeping only `$NAME`/`${NAME}` live: nothing else is ever interpreted."""
    _quotable(value)
    parts, pos = [], 0
    for m in _REF.finditer(value):
        if m.start() > pos:
            parts.append(shlex.quote(value[pos:m.start()]))
        parts.append('"${%s}"' % (m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(value) or not parts:
        parts.append(shlex.quote(value[pos:]))
    return "".join(parts)


def _command_lines(argv: list[str]) -> str:
    """`vllm serve MODEL` then one flag (with its value) per line, like the seeds' scripts."""
    for a in argv:
        _quotable(a)
    head, rest = argv[:3], argv[3:]
    lines = [shlex.join(head)]
    i = 0
    while i < len(rest):
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            lines.append(shlex.join(rest[i:i + 2]))
            i += 2
        else:
            lines.append(shlex.quote(rest[i]))
            i += 1
    return " \\\n  ".join(lines)


def devices_text(devices: list[int]) -> str:
    if devices and devices == list(range(devices[0], devices[-1] + 1)) and len(devices) > 2:
        return f"{devices[0]}-{devices[-1]}"
    return ",".join(map(str, devices))


def describe(rank: Rank) -> str:
    where = f"node {rank.node}, devices {devices_text(rank.devices)}"
    if rank.node_rank is not None:
        who = f"node rank {rank.node_rank}"
    elif rank.headless:
        who = f"DP ranks from {rank.dp_rank}"
    else:
        who = f"DP rank {rank.dp_rank}"
    port = f", port {rank.port}" if rank.port is not None else ", headless"
    return f"group {rank.group} ({rank.role}), {who} on {where}{port}"


def rank_script(plan: Plan, rank: Rank) -> str:
    exports = "\n".join(f"export {env_name(k)}={shell_value(v)}" for k, v in rank.env.items())
    return Template(read("launch_rank.sh")).substitute(
        name=comment_text(plan.name), what=comment_text(describe(rank)),
        node=comment_text(rank.node), exports=exports,
        command=_command_lines(rank.argv))


def rank_scripts(plan: Plan, node: str) -> str:
    out = []
    for rank in plan.ranks_on(node):
        out.append(f"# ==== {comment_text(script_name(rank))}\n" + rank_script(plan, rank))
    return "\n".join(out)


def _dp_ranks(ranks: list[Rank], span: int) -> str:
    """The DP ranks a node hosts: `span` of them from its first (one process each in external
    launch, one process for all in internal); nnodes shows the node rank instead."""
    r = ranks[0]
    if r.node_rank is not None:
        return f"node-rank {r.node_rank}"
    lo, hi = r.dp_rank, r.dp_rank + span - 1
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def plan_table(plan: Plan, console: Console | None = None) -> None:
    console = console or Console()
    inv = plan.inventory
    table = Table(title=f"{plan.name} ({inv.soc}): {len(plan.ranks)} vllm serve processes on {len(plan.nodes)} nodes")
    for col in ("node", "group", "role", "DP rank(s)", "devices", "port", "headless"):
        table.add_column(col)
    for g in inv.groups:
        for node in g.nodes:
            ranks = [r for r in plan.ranks if r.group == g.name and r.node == node]
            if not ranks:
                continue
            devices = sorted(d for r in ranks for d in r.devices)
            ports = [r.port for r in ranks if r.port is not None]
            port = "-" if not ports else (str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}")
            table.add_row(node, g.name, g.role, _dp_ranks(ranks, g.dp_local or g.dp // len(g.nodes)), devices_text(devices), port,
                          "yes" if ranks[0].headless else "")
    console.print(table)
    if plan.proxy:
        p = plan.proxy
        n_pre = sum(1 for r in plan.ranks if r.role == "prefill" and r.port is not None)
        n_dec = sum(1 for r in plan.ranks if r.role == "decode" and r.port is not None)
        console.print(soft_wrap=True, highlight=False, *[f"proxy: {p.node} {p.host}:{p.port} -> {n_pre} prefill, {n_dec} decode backends"])
    console.print("steps:")
    for i, s in enumerate(plan.steps, 1):
        group = f" {s.group}" if s.group else ""
        detail = f" ({s.detail})" if s.detail else ""
        console.print(f"  {i:2}. {s.name}{group}: {', '.join(s.nodes)}{detail}", highlight=False, soft_wrap=True)
