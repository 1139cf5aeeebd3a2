"""The inventory: spec/inventory.md as pydantic models, loaded with line marks.

`load_inventory` returns a schema-valid `Inventory` whose cross-field rules (references, sizes,
devices, ports) are then checked by the planner, which owns allocation; `load_and_plan` in
`orchestrator.plan` does both and is what every command uses.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic_core import ErrorDetails

from .errors import InventoryError, Problem, Source, excerpt
from .redact import REDACTED, secret_path
from .yamlmarks import LimitError, load_located

SOC_DEVICES = {"a2": 8, "a3": 16}
CONNECTORS = (
    "MooncakeConnectorV1",
    "MooncakeHybridConnector",
    "MooncakeLayerwiseConnector",
    "LLMDataDistCMgrConnector",
)
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
ENV_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A vllm/proxy flag name, with or without its leading dashes; never `flag=value`.
FLAG_RE = r"^-{0,2}[A-Za-z0-9][A-Za-z0-9_.-]*$"
HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
NIC_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}$"
HOP_RE = re.compile(r"^(?:([A-Za-z0-9_][A-Za-z0-9_.-]*)@)?(\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9_.-]+)"
                    r"(?::(\d{1,5}))?$")
MAX_INVENTORY_BYTES = 2 * 1024 * 1024
MAX_CONNECT_TIMEOUT = 600.0      # s: a handshake that takes longer is a dead node
MAX_READINESS_TIMEOUT = 7 * 86400.0
MAX_PARALLEL = 4096

# Names that become file names, log paths, script lines and container names: validated here,
# where they enter (docs/limits.md). Length-bounded so they also fit a Linux file name.
def _no_dotdot(v: str) -> str:
    if ".." in v:
        raise ValueError(f"{excerpt(v)}: '..' is not allowed in a name (it names files)")
    return v


def _argument(v: str) -> str:
    """A value passed as one argv token after a command (docker's IMAGE, vllm's MODEL): a
    leading `-` would be read as an option, a control character breaks every log line."""
    if not v or v.startswith("-") or re.search(r"[\x00-\x1f\x7f]", v):
        raise ValueError(f"{excerpt(v)} must be non-empty, not start with '-' and have no "
                         "control characters")
    return v


Name = Annotated[str, StringConstraints(pattern=NAME_RE), AfterValidator(_no_dotdot)]
Argument = Annotated[str, AfterValidator(_argument)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_RE, max_length=255)]
FlagName = Annotated[str, StringConstraints(pattern=FLAG_RE, max_length=128)]
Scalar = str | int | float | bool


class Strict(BaseModel):
    # strict: YAML already types every scalar; `dp: true`, `dp: 1.5`, `dp: "8"` are mistakes the
    # spec does not allow, not values to coerce (an int is still accepted where a float is).
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True)


def env_text(value: Any) -> Any:
    """Env values reach a shell as text: YAML spellings for bools (never Python's `True`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _env_values(env: dict[str, Any]) -> dict[str, Any]:
    return {k: env_text(v) for k, v in env.items()}


def _json_safe(value: Any, depth: int = 0) -> Any:
    """args/extra values become JSON or argv text: plain JSON data, finite numbers only."""
    if depth > 32:
        raise ValueError("nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, list):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    raise ValueError(f"{excerpt(value)} ({type(value).__name__}) is not a string, number, "
                     "boolean, list or mapping")


JsonData = Annotated[Any, AfterValidator(_json_safe)]


def parse_jump(spec: str) -> list[tuple[str | None, str, int | None]]:
    """`user@host:port[,user@host:port…]` (host may be `[v6]`) -> hops; ValueError if malformed."""
    hops = []
    for hop in spec.split(","):
        m = HOP_RE.match(hop.strip())
        if not m or (m.group(3) and not 1 <= int(m.group(3)) <= 65535):
            raise ValueError(f"cannot parse jump host {excerpt(hop.strip())} "
                             "(expected [user@]host[:port], comma-separated)")
        host = m.group(2)[1:-1] if m.group(2).startswith("[") else m.group(2)
        hops.append((m.group(1), host, int(m.group(3)) if m.group(3) else None))
    return hops


def _host(value: str) -> str:
    """An IP address or a host name; nothing a resolver, ssh or a shell could read otherwise."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not HOST_RE.match(value) or ".." in value:
        raise ValueError(f"{excerpt(value)} is not an IP address or host name")
    return value


class SSH(Strict):
    user: str | None = None  # None: ~/.ssh/config's User, else root
    port: int | None = Field(default=None, ge=1, le=65535)  # None: ~/.ssh/config's Port, else 22
    identity_file: str | None = None
    jump: str | None = None
    host_keys: Literal["strict", "accept-new"] = "accept-new"
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout: float = Field(default=10, gt=0, le=MAX_CONNECT_TIMEOUT, allow_inf_nan=False)
    parallel: int = Field(default=64, ge=1, le=MAX_PARALLEL)
    sudo: bool = False

    @field_validator("jump")
    @classmethod
    def _jump(cls, v: str | None) -> str | None:
        if v is not None:
            parse_jump(v)
        return v


class Node(Strict):
    host: str
    nic: str = Field(pattern=NIC_RE)
    ip: str | None = None
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    devices: list[int] | None = None

    @field_validator("host")
    @classmethod
    def _host_name(cls, v: str) -> str:
        return _host(v)

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(f"{excerpt(v)} is not an IP address") from None
        return v

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
    image: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$", max_length=512)
    name: Name | None = None
    shm_size: str = Field(default="1g", pattern=r"^[0-9]+(\.[0-9]+)? ?[kKmMgGtTpP]?[iI]?[bB]?$", max_length=20)
    mounts: list[Annotated[Argument, AfterValidator(_mount)]] = Field(default_factory=list)
    env: dict[EnvName, Scalar] = Field(default_factory=dict)
    privileged: bool = False
    # Extensions for up (docs/inventory.md): sourced before every rank when present in the image;
    # argv lists run once in each new container (never through a shell); the sitecustomize guard
    # (None: on when a group spans nodes).
    env_files: list[Annotated[str, AfterValidator(_abs_path)]] = Field(default_factory=lambda: list(DEFAULT_ENV_FILES))
    setup: list[Annotated[list[str], AfterValidator(_argv)]] = Field(default_factory=list)
    socket_env_guard: bool | None = None

    _env = field_validator("env")(classmethod(lambda cls, v: _env_values(v)))


class Model(Strict):
    path: Argument
    served_name: Argument | None = None

    @property
    def served(self) -> str:
        return self.served_name or FsPath(self.path.rstrip("/")).name


class RoleDefaults(Strict):
    env: dict[EnvName, Scalar | None] = Field(default_factory=dict)
    args: dict[FlagName, JsonData] = Field(default_factory=dict)
    kv_extra: dict[str, JsonData] = Field(default_factory=dict)  # over kv_transfer.extra, this role's groups

    _env = field_validator("env")(classmethod(lambda cls, v: _env_values(v)))


class Roles(Strict):
    prefill: RoleDefaults = Field(default_factory=RoleDefaults)
    decode: RoleDefaults = Field(default_factory=RoleDefaults)
    serve: RoleDefaults = Field(default_factory=RoleDefaults)


class KvTransfer(Strict):
    connector: Literal[CONNECTORS]  # type: ignore[valid-type]
    extra: dict[str, JsonData] = Field(default_factory=dict)
    # Extension (docs/inventory.md): merged into the top level of --kv-transfer-config.
    config: dict[str, JsonData] = Field(default_factory=dict)


class Group(Strict):
    name: Name
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
    env: dict[EnvName, Scalar | None] = Field(default_factory=dict)
    args: dict[FlagName, JsonData] = Field(default_factory=dict)
    kv_extra: dict[str, JsonData] = Field(default_factory=dict)  # merged last, this group only

    _env = field_validator("env")(classmethod(lambda cls, v: _env_values(v)))

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
    script: Argument | None = None  # None: the upstream example matching the connector
    args: dict[FlagName, JsonData] = Field(default_factory=dict)



class Readiness(Strict):
    timeout: float = Field(default=1800, gt=0, le=MAX_READINESS_TIMEOUT, allow_inf_nan=False)
    restarts: int = Field(default=1, ge=0, le=10)  # group-atomic restarts before a group is marked failed
    warmup: int = Field(default=0, ge=0, le=1000)  # requests through each prefill rank before the smoke
    smoke: bool = True


class Inventory(Strict):
    name: str = Field(pattern=r"^[a-z0-9-]+$", max_length=63)
    soc: Literal["a2", "a3"]
    ssh: SSH = Field(default_factory=SSH)
    nodes: dict[Name, Node] = Field(min_length=1)
    container: Container
    model: Model
    env: dict[EnvName, Scalar | None] = Field(default_factory=dict)
    args: dict[FlagName, JsonData] = Field(default_factory=dict)
    roles: Roles = Field(default_factory=Roles)
    kv_transfer: KvTransfer | None = None
    groups: list[Group] = Field(min_length=1)
    proxy: Proxy | None = None
    readiness: Readiness = Field(default_factory=Readiness)

    # Not part of the document: where it was read from, for error lines.
    _source: Source | None = None

    _env = field_validator("env")(classmethod(lambda cls, v: _env_values(v)))

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
    data = read_bounded(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InventoryError([Problem((), f"byte 0x{data[e.start]:02x} at column {column} is not "
                                          "UTF-8", "save the inventory as UTF-8")],
                             Source(str(path), {(): line})) from None
    return parse_inventory(text.removeprefix("\ufeff"), str(path))


def read_bounded(path: FsPath, limit: int = MAX_INVENTORY_BYTES) -> bytes:
    """A regular file of at most `limit` bytes (never a FIFO, a device or /dev/zero)."""
    def fail(message: str) -> InventoryError:
        return InventoryError([Problem((), message)], Source(str(path), {}))

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise fail(f"cannot read the inventory: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail("the inventory is not a regular file")
        if st.st_size > limit:
            raise fail(f"the inventory is {st.st_size} bytes; the limit is {limit}")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise fail(f"the inventory is larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise fail(f"cannot read the inventory: {e.strerror or e}") from None
    finally:
        os.close(fd)


def parse_inventory(text: str, filename: str = "<inventory>") -> Inventory:
    try:
        located = load_located(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        msg = getattr(e, "problem", None) or str(e)
        raise InventoryError([Problem((), f"YAML syntax: {excerpt(msg, 200)[1:-1]}")],
                             Source(filename, {(): line} if line else {})) from None
    except LimitError as e:
        raise InventoryError([Problem((), e.message, "the inventory exceeds a loader limit "
                                                     "(docs/limits.md)")],
                             Source(filename, {(): e.line} if e.line else {})) from None
    source = Source(filename, located.lines)
    problems = [Problem(p, msg, "remove one of them" if msg.startswith("duplicate") else "")
                for p, _line, msg in located.problems]
    data = located.data
    if not isinstance(data, dict):
        raise InventoryError([Problem((), "the inventory must be a YAML mapping")], source)
    _spelled_env(data, (), located.raw)
    problems += _node_value_problems(data)
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as e:
        told = {p.path for p in problems}  # the loader already said why that value is wrong
        problems += [p for p in (_schema_problem(err, data) for err in e.errors()
                                 if not _other_branch(err, data)) if p.path not in told]
        problems = _dedupe(problems)
        problems.sort(key=lambda p: source.line_of(p.path) or 0)
        raise InventoryError(problems, source) from None
    if problems:
        raise InventoryError(problems, source)
    inv._source = source
    return inv


# A value that reaches a node travels as one command-line word (an argv token, an environment
# string, a `-e NAME=VALUE`): Linux refuses a word over 128 KiB (MAX_ARG_STRLEN) at exec time,
# where it would be a rank that never starts. Bounded here, with room for quoting.
MAX_VALUE_BYTES = 64 * 1024
# The whole `docker run` line and each container.setup command go through the node's `sh -c`
# as one word (shlex-quoted): bounded as quoted text.
MAX_COMMAND_BYTES = 96 * 1024
_API_KEY_ENV = "VLLM_API_KEY"
_VISIBLE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def _node_value_problems(data: Any) -> list[Problem]:
    """Bounds no schema type says: the length of every string, the container's command lines,
    and the API key `up` sends as an HTTP header (docs/limits.md)."""
    import shlex

    out: list[Problem] = []

    def walk(value: Any, path: tuple) -> None:
        if isinstance(value, str):
            if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
                out.append(Problem(path, f"the value is {len(value.encode('utf-8', 'surrogatepass'))} bytes; a value "
                                         f"that reaches a node is at most {MAX_VALUE_BYTES}",
                                   "one command-line word on Linux is at most 128 KiB; put long text in a "
                                   "file on the node (a container.mounts entry) and pass its path"))
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and len(k) > MAX_VALUE_BYTES // 4:  # a key that long is never a name
                    walk(k, path + (k,))
                walk(v, path + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, path + (i,))

    walk(data, ())
    if out:
        return out
    container = data.get("container")
    if isinstance(container, dict):
        words = [f"{k}={v}" for k, v in (container.get("env") or {}).items()] if isinstance(container.get("env"), dict) else []
        words += [str(m) for m in container.get("mounts") or []] if isinstance(container.get("mounts"), list) else []
        if len(shlex.join(words).encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
            out.append(Problem(("container", "env") if container.get("env") else ("container", "mounts"),
                               f"the docker run command these make is over {MAX_COMMAND_BYTES} bytes",
                               "a node's shell takes one command line of at most 128 KiB; shorten the values"))
        for i, argv in enumerate(container.get("setup") or []) if isinstance(container.get("setup"), list) else ():
            if isinstance(argv, list) and len(shlex.join(map(str, argv)).encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
                out.append(Problem(("container", "setup", i), f"the command is over {MAX_COMMAND_BYTES} bytes",
                                   "a node's shell takes one command line of at most 128 KiB; run a script "
                                   "from a mounted file instead"))
    for path, key in _api_keys(data):
        if not (isinstance(key, (str, int)) and not isinstance(key, bool) and _VISIBLE.fullmatch(str(key))):
            out.append(Problem(path, f"the API key {excerpt(key)} cannot be sent in an HTTP header: use visible "
                                     "ASCII characters (spaces only inside), no line break",
                               "up sends it as 'Authorization: Bearer KEY' to check the deployment serves"))
    return out


def _api_keys(data: Any):
    """(path, value) of every api-key flag and VLLM_API_KEY variable in the inventory's layers."""
    layers: list[tuple[tuple, Any]] = [((), data)]
    roles = data.get("roles")
    if isinstance(roles, dict):
        layers += [(("roles", r), v) for r, v in roles.items()]
    groups = data.get("groups")
    if isinstance(groups, list):
        layers += [(("groups", i), g) for i, g in enumerate(groups)]
    for path, layer in layers:
        if not isinstance(layer, dict):
            continue
        args, env = layer.get("args"), layer.get("env")
        if isinstance(args, dict):
            for k, v in args.items():
                if isinstance(k, str) and k.lstrip("-").replace("_", "-") == "api-key" and v is not None and v is not False:
                    yield path + ("args", k), v
        if isinstance(env, dict) and env.get(_API_KEY_ENV) is not None:
            yield path + ("env", _API_KEY_ENV), env[_API_KEY_ENV]


def _spelled_env(data: Any, path: tuple, raw: dict) -> None:
    """Every `env` mapping: a bool or number becomes the text the file spelled (`True`, `0x10`,
    `1.50`), which is what a person writing `KEY: value` means for a shell variable."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("args", "extra", "config", "kv_extra"):
                continue  # JSON data for vLLM: keep its types
            if key == "env" and isinstance(value, dict):
                for name, v in value.items():
                    if isinstance(v, (bool, int, float)):
                        value[name] = raw.get(path + (key, name), env_text(v))
            else:
                _spelled_env(value, path + (key,), raw)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _spelled_env(item, path + (i,), raw)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def _other_branch(err: ErrorDetails, data: Any) -> bool:
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


_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "a mapping", type(None): "null"}


class _Hidden:
    """A secret's value in a message: its kind, never the value."""

    def __init__(self, value: Any):
        self.kind = _KINDS.get(type(value), type(value).__name__)

    def __repr__(self) -> str:
        return REDACTED


def _given(value: Any) -> str:
    """`true (a boolean)`: what the file gave, as YAML would spell it, cut short."""
    if isinstance(value, _Hidden):
        return f"{REDACTED} ({value.kind})"
    kind = _KINDS.get(type(value), type(value).__name__)
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} ({kind})"
    if value is None:
        return "null"
    return f"{excerpt(value)} ({kind})"


def _schema_problem(err: ErrorDetails, data: Any) -> Problem:
    loc = tuple(err["loc"])
    path, value = _data_path(loc, data)
    kind = err["type"]
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        value = loc[-2]
    elif secret_path(path):  # never quote a secret's value back (orchestrator/redact.py)
        value = _Hidden(value)
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
        return Problem(path, f"unknown key {excerpt(key)}", hint)
    if kind == "missing":
        return Problem(path, "required field is missing", f"add '{loc[-1]}'")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        suggest = ""
        if isinstance(value, str):
            options = re.findall(r"'([^']*)'", expected)
            near = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
            suggest = f"did you mean '{near[0]}'? " if near else ""
        return Problem(path, f"{excerpt(value)} is not allowed", f"{suggest}use one of {expected}")
    if kind in ("string_pattern_mismatch", "string_too_long"):
        pattern = err.get("ctx", {}).get("pattern", "")
        what = "the name" if is_key else "the value"
        if pattern == ENV_RE:
            hint = "an environment variable name: a letter or _, then letters, digits, _"
        elif pattern == FLAG_RE:
            hint = ("a flag name only (e.g. max-model-len); give its value as the mapping's "
                    "value, never as 'flag=value'")
        elif pattern == NAME_RE:
            hint = "letters, digits, _, . and - (first a letter or digit), at most 63 characters"
        else:
            hint = f"use only {pattern.strip('^$')}" if pattern else "use a shorter value"
        return Problem(path, f"{what} {excerpt(value)} has characters or a length that are not "
                       "allowed", hint)
    msg = err["msg"]
    if kind == "value_error":
        return Problem(path, msg.removeprefix("Value error, "))
    if kind.endswith("_type") or kind in ("finite_number", "int_from_float"):
        return Problem(path, f"{msg} (got {_given(value)})")
    return Problem(path, f"{msg} (got {_given(value)})" if value is not None else msg)
