"""What deploy treats as a secret, and the one way every output hides it (docs/inventory.md,
"Secrets").

A secret is
- an environment variable (`env`, `roles.<role>.env`, group `env`, `container.env`) whose name has
  a word (split on `_`, `-`, `.`; case-insensitive) ending in KEY, TOKEN, SECRET, PASSWORD or
  PASSWD: VLLM_API_KEY, HF_TOKEN, MOONCAKE_STORE_PASSWORD, AWS_SECRET_ACCESS_KEY, OPENAI_APIKEY;
  not KEYBOARD_LAYOUT, TOKENIZERS_PARALLELISM, MAX_NUM_BATCHED_TOKENS or any HCCL_* tuning name;
- the value of a vLLM flag (`args`, `roles.<role>.args`, group `args`, `proxy.args`) whose name
  follows the same rule (`api-key`, `hf-token`; not `ssl-keyfile`, which is a path, nor
  `max-num-batched-tokens`).

Every output shows a secret value as REDACTED: structured outputs by name (`redact_argv`,
`redact_env`, `redact_plan_json`, `redact_inventory_text`), free text (logs, errors, log tails a
node sends back) by value (`scrub*`, with the values this process registered from the plans it
loaded). Matching by name errs on the side of hiding: a false positive only hides a value.

On the node, secrets never appear on a command line: `scripts.py` moves them into 0600 files
that the rank script sources (`--api-key` becomes VLLM_API_KEY, `--hf-token` HF_TOKEN, the names
vLLM reads instead) and `docker run` reads with `--env-file`. A secret flag vLLM has no variable
for stays on the `vllm serve` line (redacted everywhere here) and `secret_flags_on_argv` names it.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import Plan, Rank

REDACTED = "<redacted>"  # a valid YAML plain scalar, unlike `***` (an alias there)
_SUFFIXES = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD")
_SPLIT = re.compile(r"[-_.]+")
# vLLM flags that have an environment variable vLLM (or huggingface_hub) reads instead.
FLAG_ENV = {"api-key": "VLLM_API_KEY", "hf-token": "HF_TOKEN"}
# Free text is scrubbed of registered values at least this long: a shorter one would match
# everywhere (digits, words of the log); it is still redacted in every structured output.
MIN_SCRUB = 4


def _secret_name(name: str) -> bool:
    return any(w.endswith(_SUFFIXES) for w in _SPLIT.split(name.upper()) if w)


def is_secret_env(name: str) -> bool:
    """An environment variable name whose value deploy treats as a secret."""
    return _secret_name(name)


def flag_name(flag: str) -> str:
    """`--Api_Key` -> `api-key` (how the planner renders `args` keys)."""
    return flag.lstrip("-").replace("_", "-").lower()


def is_secret_flag(flag: str) -> bool:
    """A vLLM flag (with or without `--`) whose value deploy treats as a secret."""
    return _secret_name(flag_name(flag))


def secret_path(path: tuple) -> bool:
    """An inventory field path (`("groups", 0, "env", "HF_TOKEN")`, `("args", "api-key", ...)`)
    that holds a secret value: its messages must not quote it."""
    for i in range(len(path) - 2, -1, -1):
        name = path[i + 1]
        if path[i] == "env" and isinstance(name, str):
            return is_secret_env(name)
        if path[i] == "args" and isinstance(name, str):
            return is_secret_flag(name)
    return False


def redact_env(env: dict[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if v is not None and is_secret_env(k) else v) for k, v in env.items()}


def redact_argv(argv: list[str]) -> list[str]:
    """An argv for people: values of secret flags (`--api-key K`, `--api-key=K`, every value up
    to the next option) and docker's `-e NAME=VALUE` of secret names become REDACTED."""
    out: list[str] = []
    hide = False
    env_next = False
    for tok in argv:
        if env_next:
            env_next = False
            name, eq, _v = tok.partition("=")
            out.append(f"{name}={REDACTED}" if eq and is_secret_env(name) else tok)
            continue
        if tok in ("-e", "--env"):
            hide, env_next = False, True
            out.append(tok)
        elif tok.startswith("--"):
            name, eq, _v = tok[2:].partition("=")
            secret = is_secret_flag(name)
            if eq:
                out.append(f"--{name}={REDACTED}" if secret else tok)
                hide = False
            else:
                out.append(tok)
                hide = secret
        else:
            out.append(REDACTED if hide else tok)
    return out


def argv_secrets(argv: list[str]) -> list[tuple[str, str]]:
    """(flag name, value) of every secret flag value in argv (`--api-key K` or `--api-key=K`)."""
    found: list[tuple[str, str]] = []
    flag = None
    for tok in argv:
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            flag = None
            if is_secret_flag(name):
                if eq:
                    found.append((flag_name(name), value))
                else:
                    flag = flag_name(name)
        elif flag is not None:
            found.append((flag, tok))
    return found


def redact_plan_json(doc: Any) -> Any:
    """A copy of a plan's JSON (or anything holding `argv` lists and `env` maps: the ledger,
    the diagnostics bundle) with every secret redacted by name."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k == "argv" and isinstance(v, list) and all(isinstance(t, str) for t in v):
                out[k] = redact_argv(v)
            elif k == "env" and isinstance(v, dict):
                out[k] = redact_plan_json(redact_env(v))
            else:
                out[k] = redact_plan_json(v)
        return out
    if isinstance(doc, list):
        return [redact_plan_json(v) for v in doc]
    return doc


def redact_inventory_text(text: str) -> str:
    """The inventory as YAML with every secret of an `env` or `args` map redacted (the ledger
    keeps this copy to re-plan from; comments and layout are not kept). Text that does not
    parse is scrubbed by value instead."""
    return scrub(_redact_yaml(text))


@functools.lru_cache(maxsize=8)  # the ledger is saved at every readiness round
def _redact_yaml(text: str) -> str:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "env" and isinstance(v, dict):
                    out[k] = {n: (REDACTED if isinstance(n, str) and is_secret_env(n) and x is not None else walk(x))
                              for n, x in v.items()}
                elif k == "args" and isinstance(v, dict):
                    out[k] = {n: (REDACTED if isinstance(n, str) and is_secret_flag(n)
                                  and not isinstance(x, bool) and x is not None else walk(x))
                              for n, x in v.items()}
                else:
                    out[k] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return yaml.safe_dump(walk(data), sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------ secret values of a plan


def rank_secret_env(rank: Rank) -> dict[str, str]:
    """What a rank gets from its 0600 env file: its secret env, and the secret flags vLLM has a
    variable for (FLAG_ENV: the flag wins over the variable, as in vLLM)."""
    env = {k: v for k, v in rank.env.items() if is_secret_env(k)}
    for flag, value in argv_secrets(rank.argv):
        if flag in FLAG_ENV:
            env[FLAG_ENV[flag]] = value
    return env


def rank_argv(rank: Rank) -> list[str]:
    """The rank's argv without the secret flags that move to its env file (FLAG_ENV) with their
    values; such a flag given bare (`--hf-token`: use the cached login) stays."""
    argv, out, i = rank.argv, [], 0
    while i < len(argv):
        tok = argv[i]
        name, eq, _v = tok[2:].partition("=") if tok.startswith("--") else ("", "", "")
        if name and flag_name(name) in FLAG_ENV:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            if eq or j > i + 1:  # it has a value: dropped with it
                i = j
                continue
        out.append(tok)
        i += 1
    return out


def secret_warnings(plan: Plan) -> list[str]:
    """One line per secret flag that stays on a command line on the node."""
    return [f"{item} is a secret vLLM reads from no environment variable: it is shown as {REDACTED} "
            "but is on the command line on the node (visible in ps there)" for item in secret_flags_on_argv(plan)]


def secret_flags_on_argv(plan: Plan) -> list[str]:
    """`group: --flag` of secret flags that must stay on a command line (no variable exists)."""
    out: list[str] = []
    for r in plan.ranks:
        for flag, _v in argv_secrets(r.argv):
            item = f"group {r.group}: --{flag}"
            if flag not in FLAG_ENV and item not in out:
                out.append(item)
    if plan.proxy is not None:
        out += [f"proxy: --{f}" for f, _v in argv_secrets(plan.proxy.argv)]
    return out


def plan_values(plan: Plan) -> set[str]:
    """Every secret value a plan holds (rank env and flags, container env, proxy flags)."""
    values: set[str] = set()
    for r in plan.ranks:
        values.update(v for k, v in r.env.items() if is_secret_env(k))
        values.update(v for _f, v in argv_secrets(r.argv))
    for c in plan.containers:
        values.update(v for k, v in c.env if is_secret_env(k))
    if plan.proxy is not None:
        values.update(v for _f, v in argv_secrets(plan.proxy.argv))
    return {v for v in values if v and v != REDACTED}


def digest(plan: Plan, salt: str) -> str:
    """A keyed hash of the plan's secret values: the ledger tells a changed key from the same
    one without keeping it."""
    msg = json.dumps(sorted(plan_values(plan))).encode()
    return hmac.new(salt.encode(), msg, hashlib.sha256).hexdigest()


# ------------------------------------------------------------------ free text, by value

_values: set[str] = set()
_pattern: re.Pattern[str] | None = None
_bpattern: re.Pattern[bytes] | None = None


def register(values: Iterable[str]) -> None:
    """Values this process must never print or log (the plans it loaded); installs the scrubbing
    on stdout/stderr the first time, so every message, error and `--json` document is covered."""
    global _pattern, _bpattern
    new = {v for v in values if len(v) >= MIN_SCRUB and v != REDACTED} - _values
    if new:
        _values.update(new)
        ordered = sorted(_values, key=len, reverse=True)
        _pattern = re.compile("|".join(map(re.escape, ordered)))
        _bpattern = re.compile(b"|".join(re.escape(v.encode()) for v in ordered))
    if not _values:
        return
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Scrubbing):
            setattr(sys, name, _Scrubbing(stream))


def register_plan(plan: Plan) -> None:
    register(plan_values(plan))


def scrub(text: str) -> str:
    return _pattern.sub(REDACTED, text) if _pattern is not None and text else text


def scrub_bytes(data: bytes) -> bytes:
    return _bpattern.sub(REDACTED.encode(), data) if _bpattern is not None and data else data


def scrub_obj(obj: Any) -> Any:
    """Every string in a JSON-like value scrubbed (documents, ledger entries)."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_obj(v) for v in obj]
    return obj


class _Scrubbing:
    """A text stream that scrubs registered values from what is written, passing the rest on."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: Any) -> Any:
        return self._stream.write(scrub(text) if isinstance(text, str) else text)

    def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
