"""How docker 28's CLI looks (stdlib only): its flag syntax, error texts, tables and Go templates.

Used by docker.py (the simulated node's `docker`); nothing here knows about containers.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime


class Fail(Exception):
    """Print the message to stderr and exit with the code."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.msg, self.code = msg, code


def daemon_error(msg: str) -> str:
    return f"Error response from daemon: {msg}"


def usage_error(cmd: str, usage: str, msg: str) -> Fail:
    return Fail(f"{msg}\n\nUsage:  docker {cmd} {usage}\n\nRun 'docker {cmd} --help' for more information",
                125 if cmd == "run" else 1)


class Opts:
    """docker's flag syntax: --opt value, --opt=value, -o value, -ovalue, -abc (bool shorts)."""

    def __init__(self, cmd: str, usage: str, values: dict[str, str], bools: dict[str, str]):
        self.cmd, self.usage, self.values, self.bools = cmd, usage, values, bools
        self.interspersed = cmd not in ("run", "exec")  # as cobra: run/exec stop at the image/container

    def parse(self, argv: list[str], min_args: int) -> tuple[dict[str, list], list[str]]:
        got: dict[str, list] = {}
        positional: list[str] = []
        i = 0
        while i < len(argv):
            a = argv[i]
            if a == "--":
                i += 1
                break
            if not a.startswith("-") or a == "-":
                if not self.interspersed:
                    break
                positional.append(a)
                i += 1
                continue
            if a.startswith("--"):
                name, eq, val = a[2:].partition("=")
                key = "--" + name
                if key in self.values:
                    if not eq:
                        i += 1
                        if i >= len(argv):
                            raise usage_error(self.cmd, self.usage, f"flag needs an argument: {key}")
                        val = argv[i]
                    got.setdefault(self.values[key], []).append(val)
                elif key in self.bools:
                    got.setdefault(self.bools[key], []).append(val.lower() not in ("false", "0") if eq else True)
                else:
                    raise usage_error(self.cmd, self.usage, f"unknown flag: {key}")
            else:
                j = 1
                while j < len(a):
                    key = "-" + a[j]
                    if key in self.values:
                        val = a[j + 1:]
                        if val.startswith("="):
                            val = val[1:]
                        if not val:
                            i += 1
                            if i >= len(argv):
                                raise usage_error(self.cmd, self.usage,
                                                  f"flag needs an argument: '{a[j]}' in {key}")
                            val = argv[i]
                        got.setdefault(self.values[key], []).append(val)
                        break
                    if key in self.bools:
                        got.setdefault(self.bools[key], []).append(True)
                        j += 1
                        continue
                    raise usage_error(self.cmd, self.usage, f"unknown shorthand flag: '{a[j]}' in {a}")
            i += 1
        rest = positional + argv[i:]
        if len(rest) < min_args:
            what = "argument" if min_args == 1 else "arguments"
            raise Fail(f"docker: 'docker {self.cmd}' requires at least {min_args} {what}\n\n"
                       f"Usage:  docker {self.cmd} {self.usage}\n\nSee 'docker {self.cmd} --help' for more information",
                       1 if self.cmd != "run" else 125)
        return got, rest


def last(got: dict, key: str, default=None):  # type: ignore[no-untyped-def]
    return got[key][-1] if got.get(key) else default


def ago(ts: str) -> str:
    try:
        t = datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return ""
    s = int((datetime.now(UTC) - t).total_seconds())
    if s < 1:
        return "Less than a second"
    if s < 60:
        return f"{s} seconds"
    if s < 3600:
        return "About a minute" if s < 120 else f"{s // 60} minutes"
    return "About an hour" if s < 7200 else f"{s // 3600} hours"


def table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _go(value) -> str:  # type: ignore[no-untyped-def]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<no value>"
    if isinstance(value, list):
        return "[" + " ".join(_go(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go(v)}" for k, v in value.items()) + "]"
    return str(value)


def render(fmt: str, fields: dict, obj: dict) -> str:
    """Go-template subset: {{.Field}}, {{.A.B}}, {{json .A}}, {{json .}}; a `table ` prefix is dropped."""
    fmt = fmt.removeprefix("table ").replace("\\t", "\t").replace("\\n", "\n")

    def sub(m: re.Match) -> str:
        fn, path = (m.group(1) or "").strip(), m.group(2)
        value: object = obj
        keys = [k for k in path.split(".") if k]
        if len(keys) == 1 and keys[0] in fields:
            value = fields[keys[0]]
        else:
            for k in keys:
                value = value.get(k) if isinstance(value, dict) else None
        return json.dumps(value, separators=(",", ":")) if fn == "json" else _go(value)

    return re.sub(r"\{\{\s*(json\s+)?(\.[A-Za-z0-9_.]*)\s*\}\}", sub, fmt)
