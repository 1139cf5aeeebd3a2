"""Install the fake tools into ``DIR/bin``: the sh scripts (bin/) and the compiled fast path.

The sh scripts are the reference implementation; ``fastpath.c`` answers the hot read-only calls
and execs the script for everything else (docs/simulator-tools.md, "The compiled fast path").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

EXEC_MODE = 0o755
BIN_SRC = Path(__file__).resolve().parent / "bin"
FASTPATH_SRC = Path(__file__).resolve().parent / "fastpath.c"
NOLIBC_SRC = Path(__file__).resolve().parent / "nolibc.h"
TOOLS = ("hccn_tool", "npu-smi")
# Build variants, cheapest first: without libc (nolibc.h: ~0.15 ms a call instead of ~0.45 ms,
# the static glibc start-up), static glibc, dynamic glibc.
NOLIBC = ["-DFASTPATH_NOLIBC", "-nostdlib", "-static", "-no-pie", "-fno-pie", "-ffreestanding",
          "-fno-stack-protector", "-fno-tree-loop-distribute-patterns", "-fno-asynchronous-unwind-tables"]
BUILDS: tuple[list[str], ...] = (NOLIBC, ["-static"], [])

def _install(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, EXEC_MODE)
    os.replace(tmp, dst)


_fastpath_built: dict[str, Path] = {}  # source hash -> a binary built by this process


def _build_fastpath(bindir: Path) -> Path | None:
    """``DIR/bin/.fastpath-<source hash>``, compiled from fastpath.c (and nolibc.h) unless
    already there.

    None when there is no ``cc``, no source, or every build fails.  Tried in `BUILDS` order:
    without libc (no libc start-up: ~0.3 ms less a call on this VM), static glibc (~0.1 ms less
    than dynamic), dynamic; a build that does not start (`_runs`) counts as failed.
    """
    cc = shutil.which("cc")
    if cc is None or not FASTPATH_SRC.is_file():
        return None
    digest = hashlib.sha256(FASTPATH_SRC.read_bytes() + (NOLIBC_SRC.read_bytes() if NOLIBC_SRC.is_file()
                                                         else b"")).hexdigest()[:16]
    binary = bindir / f".fastpath-{digest}"
    if binary.is_file():
        return binary
    tmp = bindir / f".fastpath-{digest}.{os.getpid()}.tmp"
    built = _fastpath_built.get(digest)
    try:
        if built is not None and built.is_file():
            shutil.copyfile(built, tmp)
        else:
            for flags in BUILDS:
                cmd = [cc, "-std=c99", "-O2", *flags, "-o", str(tmp), str(FASTPATH_SRC)]
                if subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0 and _runs(tmp):
                    break
            else:
                return None
        os.chmod(tmp, EXEC_MODE)
        os.replace(tmp, binary)
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fastpath_built[digest] = binary
    for old in bindir.glob(".fastpath-*"):  # builds of older sources
        if old != binary and not old.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                old.unlink()
    return binary


def _runs(binary: Path) -> bool:
    """A build that starts: under its own name it says "install me as ..." and exits 127 (a
    nolibc build for an architecture it does not fit would crash instead)."""
    try:
        p = subprocess.run([str(binary)], capture_output=True, timeout=10, env={})
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 127 and b"install me as hccn_tool or npu-smi" in p.stderr


def install_tools(root: str | os.PathLike[str]) -> Path:
    """Install the fake tools into ``DIR/bin`` (mode 0755).

    The sh scripts are the reference implementation.  If a C compiler (``cc``) is available
    and ``DEPLOY_SIM_NO_FASTPATH`` is unset (or ``0``), ``fastpath.c`` is compiled once into
    ``DIR/bin`` and installed as ``hccn_tool`` and ``npu-smi``, with the scripts next to it
    as ``hccn_tool.sh`` and ``npu-smi.sh``: it answers the hot read-only calls itself and
    runs the script for everything else.  Otherwise the scripts are installed under the tool
    names, as they always were.
    """
    bindir = Path(root) / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    os.chmod(bindir, 0o755)
    no_fastpath = os.environ.get("DEPLOY_SIM_NO_FASTPATH", "") not in ("", "0")
    binary = None if no_fastpath else _build_fastpath(bindir)
    for tool in TOOLS:
        if binary is not None:
            _install(BIN_SRC / tool, bindir / f"{tool}.sh")  # first: the binary execs it
            _install(binary, bindir / tool)
        else:
            _install(BIN_SRC / tool, bindir / tool)
            with contextlib.suppress(FileNotFoundError):
                (bindir / f"{tool}.sh").unlink()
    return bindir


RUNTIME_SRC = Path(__file__).resolve().parent / "runtime"
DEFAULT_REGISTRY = {"quay.io/ascend/vllm-ascend": ["*"]}


def install_runtime(root: str | os.PathLike[str], images: Sequence[str] = ()) -> Path:
    """Copy sim/runtime/*.py into ``DIR/runtime`` (the nodes run them with /usr/bin/python3: the
    package itself may not be readable by the nodes' user) and install ``DIR/bin/docker``.

    ``DIR/runtime/registry.json`` says what the fake registry holds: every tag of
    quay.io/ascend/vllm-ascend and the given image references (the inventory's).
    """
    import json

    rdir = Path(root) / "runtime"
    rdir.mkdir(parents=True, exist_ok=True)
    os.chmod(rdir, 0o755)
    for src in sorted(RUNTIME_SRC.glob("*.py")):
        tmp = rdir / f".{src.name}.{os.getpid()}.tmp"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, rdir / src.name)
    registry = {k: list(v) for k, v in DEFAULT_REGISTRY.items()}
    for ref in images:
        repo, tag = split_ref(ref)
        registry.setdefault(repo, [])
        if tag not in registry[repo] and "*" not in registry[repo]:
            registry[repo].append(tag)
    (rdir / "registry.json").write_text(json.dumps(registry, indent=1) + "\n")
    bindir = Path(root) / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    docker = bindir / ".docker.tmp"
    docker.write_text(f'#!/bin/sh\n# deploy sim: the fake docker (DIR/runtime/docker.py)\n'
                      f'exec /usr/bin/python3 {rdir}/docker.py "$@"\n')
    os.chmod(docker, EXEC_MODE)
    os.replace(docker, bindir / "docker")
    return rdir


def split_ref(ref: str) -> tuple[str, str]:
    """'quay.io/ascend/vllm-ascend:v0.11' -> ('quay.io/ascend/vllm-ascend', 'v0.11'); no tag: latest."""
    name, _, digest = ref.partition("@")
    head, sep, tag = name.rpartition(":")
    if sep and "/" not in tag:
        return head, tag
    return name, digest or "latest"
