"""The inventory: spec/inventory.md as pydantic models, loaded with line marks.

`load_inventory` returns a schema-valid `Inventory` whose cross-field rules (references, sizes,
devices, ports) are then checked by the planner, which owns allocation; `load_and_plan` in
`orchestrator.plan` does both and is what every command uses.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InventoryError, Problem, Source
from .yamlmarks import load_located

SOC_DEVICES = {"a2": 8, "a3": 16}
CONNECTORS = (
    "MooncakeConnectorV1",
    "MooncakeHybridConnector",
    "MooncakeLayerwiseConnector",
    "LLMDataDistCMgrConnector",
)
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Scalar = str | int | float | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SSH(Strict):
    user: str | None = None  # None: ~/.ssh/config's User, else root
    port: int | None = Field(default=None, ge=1, le=65535)  # None: ~/.ssh/config's Port, else 22
    identity_file: str | None = None
    jump: str | None = None
    host_keys: Literal["strict", "accept-new"] = "accept-new"
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout: float = Field(default=10, gt=0)
    parallel: int = Field(default=64, ge=1)
    sudo: bool = False


class Node(Strict):
    host: str
    nic: str
    ip: str | None = None
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    devices: list[int] | None = None

    @property
    def cluster_ip(self) -> str:
        return self.ip or self.host


# The image's own environment files, which an interactive shell in the vllm-ascend images reads
# (~/.bashrc) and a non-interactive `docker exec` does not.
# The image's own environment files, which an interactive shell in the vllm-ascend images reads
# (~/.bashrc) and a non-interactive `docker exec` does not.
DEFAULT_ENV_FILES = ("/usr/local/Ascend/ascend-toolkit/set_env.sh", "/usr/local/Ascend/nnal/atb/set_env.sh")
MOUNT_MODES = ("ro", "rw")
_CONTROL = "\n\r\0"


def mount_problem(spec: str) -> str | None:
    """Why a `container.mounts` entry is not `src:dst[:ro|rw]` with absolute paths, else None."""
    if any(c in spec for c in _CONTROL):
        return "a mount must be one line"
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        return "a mount is src:dst or src:dst:ro|rw (paths contain no ':')"
    if len(parts) == 3 and parts[2] not in MOUNT_MODES:
        return f"mount mode {parts[2]!r} is not ro or rw"
    if not (parts[0].startswith("/") and parts[1].startswith("/")):
        return "both paths of a mount must be absolute (start with /)"
    return None


def _mount(spec: str) -> str:
    why = mount_problem(spec)
    if why:
        raise ValueError(f"{why}; write it as /host/path:/container/path[:ro]")
    return spec


def _abs_path(path: str) -> str:
    if not path.startswith("/") or any(c in path for c in _CONTROL):
        raise ValueError("must be an absolute path on one line")
    return path


def _argv(argv: list[str]) -> list[str]:
    if not argv or not argv[0]:
        raise ValueError("must be a non-empty argv list starting with a command, e.g. [cp, /data/x.py, /usr/local/lib/]")
    if any("\0" in a for a in argv):
        raise ValueError("an argument has a NUL character")
    return argv


class Container(Strict):
    image: str
    name: str | None = None
    shm_size: str = "1g"
    mounts: list[Annotated[str, AfterValidator(_mount)]] = Field(default_factory=list)
    env: dict[str, Scalar] = Field(default_factory=dict)
    privileged: bool = False
    # Extensions for up (docs/inventory.md): sourced before every rank when present in the image;
    # argv lists run once in each new container (never through a shell); the sitecustomize guard
    # (None: on when a group spans nodes).
    env_files: list[Annotated[str, AfterValidator(_abs_path)]] = Field(default_factory=lambda: list(DEFAULT_ENV_FILES))
    setup: list[Annotated[list[str], AfterValidator(_argv)]] = Field(default_factory=list)
    socket_env_guard: bool | None = None


class Model(Strict):
    path: str
    served_name: str | None = None

    @property
    def served(self) -> str:
        return self.served_name or FsPath(self.path.rstrip("/")).name


class RoleDefaults(Strict):
    env: dict[str, Scalar | None] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)
    kv_extra: dict[str, Any] = Field(default_factory=dict)  # over kv_transfer.extra, this role's groups


class Roles(Strict):
    prefill: RoleDefaults = Field(default_factory=RoleDefaults)
    decode: RoleDefaults = Field(default_factory=RoleDefaults)
    serve: RoleDefaults = Field(default_factory=RoleDefaults)


class KvTransfer(Strict):
    connector: Literal[CONNECTORS]  # type: ignore[valid-type]
    extra: dict[str, Any] = Field(default_factory=dict)
    # Extension (docs/inventory.md): merged into the top level of --kv-transfer-config.
    config: dict[str, Any] = Field(default_factory=dict)


class Group(Strict):
    name: str = Field(pattern=NAME_RE)
    role: Literal["prefill", "decode", "serve"]
    nodes: list[str] = Field(min_length=1)
    dp: int = Field(default=1, ge=1)
    tp: int = Field(default=1, ge=1)
    dp_local: int | None = Field(default=None, ge=1)
    launch: Literal["external", "internal", "nnodes", "env"] | None = None  # env: issue 12, VLLM_DP_* variables
    port: int | None = Field(default=None, ge=1, le=65535)
    dp_rpc_port: int = Field(default=12321, ge=1, le=65535)
    kv_port: int | None = Field(default=None, ge=1, le=65535)
    engine_id: str | None = None
    devices: list[int] | dict[str, list[int]] | None = None
    env: dict[str, Scalar | None] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)
    kv_extra: dict[str, Any] = Field(default_factory=dict)  # merged last, this group only

    @field_validator("engine_id", mode="before")
    @classmethod
    def _engine_id_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @property
    def launch_mode(self) -> str:
        return self.launch or ("internal" if self.role == "serve" else "external")

    @property
    def http_port(self) -> int:
        if self.port is not None:
            return self.port
        return 7100 if self.launch_mode in ("external", "env") else 8000


class Proxy(Strict):
    node: str
    port: int = Field(default=1999, ge=1, le=65535)
    script: str | None = None  # None: the upstream example matching the connector
    args: dict[str, Any] = Field(default_factory=dict)


class Readiness(Strict):
    timeout: float = Field(default=1800, gt=0)
    smoke: bool = True


class Inventory(Strict):
    name: str = Field(pattern=r"^[a-z0-9-]+$")
    soc: Literal["a2", "a3"]
    ssh: SSH = Field(default_factory=SSH)
    nodes: dict[str, Node] = Field(min_length=1)
    container: Container
    model: Model
    env: dict[str, Scalar | None] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)
    roles: Roles = Field(default_factory=Roles)
    kv_transfer: KvTransfer | None = None
    groups: list[Group] = Field(min_length=1)
    proxy: Proxy | None = None
    readiness: Readiness = Field(default_factory=Readiness)

    # Not part of the document: where it was read from, for error lines.
    model_config = ConfigDict(extra="forbid", validate_default=True)
    _source: Source | None = None

    @property
    def source(self) -> Source | None:
        return self._source

    @property
    def devices_per_node(self) -> int:
        return SOC_DEVICES[self.soc]

    def node_devices(self, name: str) -> list[int]:
        """Devices a node may use: its `devices`, else every device of the soc."""
        node = self.nodes[name]
        return list(node.devices) if node.devices is not None else list(range(self.devices_per_node))


# ---------------------------------------------------------------- loading and schema errors


def load_inventory(path: str | FsPath) -> Inventory:
    """Read and schema-validate; raise InventoryError (every problem at once) on failure."""
    path = FsPath(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InventoryError([Problem((), f"cannot read the inventory: {e.strerror or e}")],
                             Source(str(path), {})) from None
    return parse_inventory(text, str(path))


def parse_inventory(text: str, filename: str = "<inventory>") -> Inventory:
    try:
        located = load_located(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        msg = getattr(e, "problem", None) or str(e)
        raise InventoryError([Problem((), f"YAML syntax: {msg}")],
                             Source(filename, {(): line} if line else {})) from None
    source = Source(filename, located.lines)
    problems = [Problem(p, msg, "remove one of them") for p, _line, msg in located.problems]
    data = located.data
    if not isinstance(data, dict):
        raise InventoryError([Problem((), "the inventory must be a YAML mapping")], source)
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as e:
        problems += [_schema_problem(err, data) for err in e.errors() if not _other_branch(err, data)]
        problems = _dedupe(problems)
        problems.sort(key=lambda p: source.line_of(p.path) or 0)
        raise InventoryError(problems, source) from None
    if problems:
        raise InventoryError(problems, source)
    inv._source = source
    return inv


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def _other_branch(err: dict, data: Any) -> bool:
    """An error from the union branch that does not match the value's kind (list vs mapping)."""
    cur = data
    for part in err["loc"]:
        if isinstance(part, str) and path_tagged(part):
            if part.startswith("list[") and isinstance(cur, dict):
                return True
            if part.startswith("dict[") and isinstance(cur, list):
                return True
            continue
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return False
    return False


def _data_path(loc: tuple, data: Any) -> tuple[tuple, Any]:
    """Keep the parts of a pydantic `loc` that index into the data (drops union tags)."""
    path: list = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and isinstance(part, str) and part not in cur and not path_tagged(part):
            path.append(part)  # a missing field: name it, the line is its parent's
            cur = None
    return tuple(path), cur


def path_tagged(part: str) -> bool:
    """pydantic inserts type tags such as 'list[int]' or 'dict[str,list[int]]' into union locs."""
    return "[" in part or part in {"str", "int", "float", "bool", "function-after", "literal"}


def _model_for(loc: tuple) -> type[BaseModel] | None:
    """The model whose fields are valid at `loc` (for did-you-mean on unknown keys)."""
    model: Any = Inventory
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                nxt = cand
            for inner in getattr(cand, "__args__", ()):  # list[Group], dict[str, Node]
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nxt = inner
        model = nxt
    return model


def _schema_problem(err: dict, data: Any) -> Problem:
    loc = tuple(err["loc"])
    path, value = _data_path(loc, data)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = loc[:-1]
        # dict[str, Node]: the parent loc ends in the node name, which is not a model field
        model = _model_for(tuple(p for p in parent if not (isinstance(p, str) and path_tagged(p))))
        if model is None and len(parent) >= 2 and parent[0] == "nodes":
            model = Node
        valid = list(model.model_fields) if model else []
        valid = [v for v in valid if not v.startswith("_")]
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else ""
        if valid:
            hint = (hint + " " if hint else "") + "valid keys here: " + ", ".join(valid)
        return Problem(path, f"unknown key '{key}'", hint)
    if kind == "missing":
        return Problem(path, "required field is missing", f"add '{loc[-1]}'")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        close = ""
        if isinstance(value, str):
            options = re.findall(r"'([^']*)'", expected)
            m = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
            close = f"did you mean '{m[0]}'? " if m else ""
        return Problem(path, f"{value!r} is not allowed", f"{close}use one of {expected}")
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        return Problem(path, f"{value!r} has characters that are not allowed",
                       f"use only {pattern.strip('^$')}")
    msg = err["msg"]
    return Problem(path, f"{msg} (got {value!r})" if value is not None else msg)
