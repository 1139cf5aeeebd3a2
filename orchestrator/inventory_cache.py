"""A validated inventory, remembered, so a repeat `deploy exec` needs no pydantic.

Validating an inventory costs ~120 ms of client CPU per CLI run, nearly all of it importing
pydantic and building the models: more than `deploy exec` spends on 30 SSH connections, and
operators run exec on the same inventory many times a day. What validation returns depends
only on the file's bytes and on the code that validates, so after a successful validation the
validated fields are stored as JSON under the state folder, keyed by a hash of both; the next
run over the same bytes with the same code reads them back instead of validating again.

Invalid inventories are never stored: their problems always come from the full validation,
word for word. A stored entry is our own output, read as data (JSON, size-bounded, its shape
checked); anything unexpected (unreadable, changed, malformed, no state folder) means: validate.
A hit returns `Fields` objects with the models' fields only (no properties, no `source`): what
exec and the transport read. Commands that plan use the full `Inventory` as before.

The first exec of a new or changed inventory need not wait for the validation either: `prefetch`
forks a child that validates and stores the entry while this process imports the SSH stack
(~0.15 s of CPU each, on a machine whose second core is idle until the first connection). The
result still travels only through the cache: `load_inventory` then finds the child's entry, or,
when the child found problems (or could not store), validates here and raises them word for word.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import select
import signal
import stat
import tempfile
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .runlog import state_dir

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .inventory import Inventory

FORMAT = b"deploy inventory cache 1\n"
READ_LIMIT = 2 * 1024 * 1024 + 1   # larger files are the full validation's to refuse
ENTRY_LIMIT = 16 * 1024 * 1024     # a stored entry larger than this is not ours: validate
KEEP = 64                          # entries kept (newest by use); older ones are removed
PREFETCH_WAIT = 60.0               # s: a validating child slower than this is killed (then: here)
# The code whose behaviour decides what validation returns: ours, pydantic's, PyYAML's.
OWN_SOURCES = ("inventory.py", "yamlmarks.py", "errors.py")
LIBRARY_FILES = (("pydantic", "version.py"), ("yaml", "__init__.py"))


class Fields(types.SimpleNamespace):
    """A validated model's fields as read back from the cache (plain values, no pydantic)."""


def cache_dir() -> Path:
    # a dot name cannot be an inventory's (inventory names are [a-z0-9-]+): no collision
    return state_dir() / ".cache" / "inventories"


@functools.cache  # the code does not change under a running process; prefetch and load both ask
def _code_fingerprint() -> bytes:
    h = hashlib.sha256(FORMAT)
    here = Path(__file__).resolve().parent
    for name in OWN_SOURCES:
        h.update((here / name).read_bytes())
    for package, filename in LIBRARY_FILES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            raise OSError(f"{package} is not importable")
        h.update((Path(spec.origin).parent / filename).read_bytes())
    return h.digest()


def _read_regular(path: str | Path) -> bytes | None:
    """The file's bytes if it is a regular file of sane size, else None (validation decides)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size >= READ_LIMIT:
            return None
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size >= READ_LIMIT:
                return None
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _encode(value: Any, model: type[BaseModel]) -> Any:
    """A validated model as tagged JSON: {"m": fields} for a model, {"d": …} for a mapping,
    {"l": […]} for a list, plain JSON scalars as they are (so nothing is ambiguous)."""
    if isinstance(value, model):
        return {"m": {name: _encode(getattr(value, name), model)
                      for name in type(value).model_fields}}
    if isinstance(value, dict):
        return {"d": {str(k): _encode(v, model) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"l": [_encode(v, model) for v in value]}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__}")


def _decode(value: Any, depth: int = 0) -> Any:
    if depth > 64:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "m" and isinstance(inner, dict):
            return Fields(**{str(k): _decode(v, depth + 1) for k, v in inner.items()})
        if tag == "d" and isinstance(inner, dict):
            return {k: _decode(v, depth + 1) for k, v in inner.items()}
        if tag == "l" and isinstance(inner, list):
            return [_decode(v, depth + 1) for v in inner]
    raise ValueError("not a stored inventory")


def _get(path: Path) -> Fields | None:
    data = _read_regular(path)
    if data is None or len(data) > ENTRY_LIMIT:
        return None
    try:
        inv = _decode(json.loads(data))
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(inv, Fields) or not all(
            hasattr(inv, f) for f in ("name", "ssh", "nodes", "groups")):
        return None
    inv.source = None
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used: pruned last
    return inv


def _put(path: Path, inv: Inventory) -> None:
    folder = path.parent
    for private in (folder.parent, folder):  # hosts, users and env values: not world-readable
        private.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(private, 0o700)
    from pydantic import BaseModel  # imported already: inv was just validated

    text = json.dumps(_encode(inv, BaseModel), separators=(",", ":"), allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    for old in entries[:max(0, len(entries) - KEEP)]:
        with contextlib.suppress(OSError):
            old.unlink()


def _entry(data: bytes | None) -> Path | None:
    """Where the validated fields of these bytes are stored (None: bytes unreadable, no code)."""
    if data is None:
        return None
    try:
        return cache_dir() / f"{hashlib.sha256(_code_fingerprint() + data).hexdigest()}.json"
    except OSError:
        return None


def _validate_and_store(path: str | Path, data: bytes | None, entry: Path | None
                        ) -> tuple[Inventory, bool]:
    """The full validation (raises InventoryError); the result is stored under `entry` only if the
    file still holds `data`, the bytes the key was made from. Returns (inventory, stored)."""
    from .inventory import load_inventory as validate

    inv = validate(path)
    if entry is None or _read_regular(path) != data:
        return inv, False
    try:
        _put(entry, inv)
    except (OSError, TypeError, ValueError):
        return inv, False
    return inv, True


# path -> pid of the child validating it: at most one per inventory and process
_children: dict[str, int] = {}


def prefetch(path: str | Path) -> None:
    """Start validating `path` in a forked child when its bytes are not in the cache yet, so the
    caller's next imports run alongside; `load_inventory` waits for it. Anything unusual (no
    regular file, no fork): do nothing, `load_inventory` validates as always."""
    data = _read_regular(path)
    entry = _entry(data)
    if data is None or entry is None or str(path) in _children or entry.is_file():
        return
    try:
        pid = os.fork()
    except OSError:
        return
    if pid == 0:  # the child: validate, store, exit; never returns, prints nothing
        code = 1
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            code = 0 if _validate_and_store(path, data, entry)[1] else 1
        except BaseException:  # problems, or an interrupt: the parent validates and reports
            pass
        finally:
            os._exit(code)
    _children[str(path)] = pid


def _wait(pid: int) -> None:
    """Reap the validating child; one stuck past PREFETCH_WAIT is killed (the caller validates)."""
    try:
        fd: int | None = os.pidfd_open(pid)
    except OSError:
        fd = None
    try:
        if fd is not None and not select.select([fd], [], [], PREFETCH_WAIT)[0]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    finally:
        if fd is not None:
            os.close(fd)


def load_inventory(path: str | Path) -> Inventory:
    """`inventory.load_inventory(path)`, answered from the cache when these exact bytes were
    validated before by this exact code. Raises InventoryError exactly as the full load does."""
    child = _children.pop(str(path), None)
    if child is not None:
        _wait(child)
    data = _read_regular(path)
    entry = _entry(data)
    if entry is not None:
        hit = _get(entry)
        if hit is not None:
            return hit  # type: ignore[return-value]  # the fields exec and the transport read
    return _validate_and_store(path, data, entry)[0]
