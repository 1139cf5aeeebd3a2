"""`import asyncssh` without its shared-library search when the library is not installed.

On import, asyncssh looks for liboqs (post-quantum sntrup761) and libnettle (umac) with
`ctypes.util.find_library`, which on Linux runs `/sbin/ldconfig -p` and, when that finds
nothing, `gcc` and `ld` (tens of ms of CPU for every CLI run on a machine without liboqs).
While asyncssh imports, that search goes through `_find_library` here: a library that the
dynamic loader could not load anyway (not in /etc/ld.so.cache, LD_LIBRARY_PATH, LIBRARY_PATH
or the standard library folders) is answered "absent" at once; anything that might be present
still goes to ctypes' own search, so what asyncssh finds and loads is unchanged. (A wrong
"absent" could only disable sntrup761, which deploy ranks below curve25519 and ML-KEM anyway.)
tests/test_asyncssh_private.py checks that asyncssh still searches this way.
"""
from __future__ import annotations

import ctypes.util
import os
import sys
import sysconfig
from collections.abc import Callable

LD_CACHE = "/etc/ld.so.cache"
asked: list[str] = []  # names asyncssh looked up while importing (for the guard test)


def _library_dirs() -> list[str]:
    """Where the dynamic loader (and a gcc/ld search) would look for a shared library."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = []
    for var in ("LD_LIBRARY_PATH", "LIBRARY_PATH"):
        if var in os.environ:  # an empty entry is the current folder
            dirs += [d or "." for d in os.environ[var].split(":")]
    for root in ("/lib", "/usr/lib", "/usr/local/lib"):
        dirs += [root, root + "64"] + ([f"{root}/{multiarch}"] if multiarch else [])
    return dirs


class _Places:
    """The loader cache and the library folders, read once for all of asyncssh's look-ups."""

    def __init__(self) -> None:
        try:
            with open(LD_CACHE, "rb") as f:
                self.cache: bytes | None = f.read()
        except OSError:
            self.cache = None
        entries: list[str] = []
        for d in dict.fromkeys(_library_dirs()):
            try:
                entries += os.listdir(d)
            except OSError:
                continue
        self.entries = "\n" + "\n".join(entries)  # one substring search per name

    def might_have(self, name: str) -> bool:
        """False only when `lib<name>.so*` is in none of the places a loader would find it."""
        stem = f"lib{name}.so"
        if self.cache is None or stem.encode() in self.cache:
            return True  # no cache to consult, or it lists the library: let ctypes search
        return "\n" + stem in self.entries


def _finder(real: Callable[[str], str | None]) -> Callable[[str], str | None]:
    places: list[_Places] = []

    def _find_library(name: str) -> str | None:
        asked.append(name)
        if not places:
            places.append(_Places())
        if not places[0].might_have(name):
            return None
        return real(name)
    return _find_library


def _import_asyncssh():
    if "asyncssh" in sys.modules or not sys.platform.startswith("linux"):
        import asyncssh
        return asyncssh
    real = ctypes.util.find_library
    ctypes.util.find_library = _finder(real)
    try:
        import asyncssh
    finally:
        ctypes.util.find_library = real
    return asyncssh


asyncssh = _import_asyncssh()

# the asyncssh internals the transport uses (guarded by tests/test_asyncssh_private.py), imported
# from here so that nothing imports asyncssh before the line above
from asyncssh.config import SSHClientConfig  # noqa: E402
from asyncssh.encryption import get_encryption_algs  # noqa: E402
from asyncssh.kex import get_kex_algs  # noqa: E402
from asyncssh.mac import get_mac_algs  # noqa: E402

__all__ = ["SSHClientConfig", "asyncssh", "get_encryption_algs", "get_kex_algs", "get_mac_algs"]
