"""The simulated node's `docker` (stdlib only; DIR/bin/docker runs it with /usr/bin/python3).

CLI shapes, output formats and error texts are docker 28's. A container is a record and real
processes:

    DIR/nodes/<n>/docker/images.json           images pulled on this node
    DIR/nodes/<n>/containers/<name>/config.json  the record: `docker inspect`'s object, plus "Sim"
    DIR/nodes/<n>/containers/<name>/rootfs/    its root: the image's files, mount points
    DIR/nodes/<n>/containers/<name>/log        its init's stdout/stderr (`docker logs`)

`run` starts the container's init with `unshare -Urm` (own user and mount namespace), which
bind-mounts the host's /usr/{bin,sbin,lib,lib64,libexec,share}, /dev, /proc, /sys, DIR (at its
own path, so the sim's programs and state work inside) and the `-v` mounts (sources resolved in
the node's host view, DIR/nodes/<n>/root; missing ones are created as folders, as docker does)
into rootfs, chroots there and execs the command. No PID or network namespace: processes bind the
node's loopback address, and a PID is the same inside and out. `exec` joins with
`nsenter -t <init> -U -m --preserve-credentials -r`; a process belongs to the container iff it is
in the init's user namespace, which is how `stop`/`rm -f`/`restart` find and kill every one of
them (a `setsid` rank started with `docker exec` included). Every container process carries
DEPLOY_SIM_ROOT / DEPLOY_SIM_NODE / DEPLOY_SIM_CONTAINER (plumbing, not in Config.Env).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import image
from docker_cli import Fail, Opts, ago, daemon_error, last, render, table
from occupancy import alive, proc_state  # noqa: F401  (one /proc reading for the runtime)

ROOT = os.environ.get("DEPLOY_SIM_ROOT", "")
NODE = os.environ.get("DEPLOY_SIM_NODE", "")
RUNTIME = os.path.dirname(os.path.abspath(__file__))
HOST_DIRS = ("usr/bin", "usr/sbin", "usr/lib", "usr/lib32", "usr/lib64", "usr/libexec", "usr/share")
TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_COPY = ("passwd", "group", "hosts", "nsswitch.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")
ETC_BIND = ("alternatives", "ssl")  # hundreds of symlinks each: bound from the host, not copied
UNSHARE = shutil.which("unshare", path="/usr/bin:/bin") or "/usr/bin/unshare"
NSENTER = shutil.which("nsenter", path="/usr/bin:/bin") or "/usr/bin/nsenter"
NODE_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")


# ---------------------------------------------------------------------------- node paths


def node_root() -> str:
    return os.path.join(NODE, "root")


def containers_dir() -> str:
    return os.path.join(NODE, "containers")


def host_path(path: str) -> str:
    """A node path -> its place in the node's host view (never outside it)."""
    norm = posixpath.normpath("/" + path).lstrip("/")
    return os.path.join(node_root(), norm) if norm not in ("", ".") else node_root()


@contextlib.contextmanager
def lock():
    os.makedirs(os.path.join(NODE, "docker"), exist_ok=True)
    fd = os.open(os.path.join(NODE, "docker", ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_json(path: str, data) -> None:  # type: ignore[no-untyped-def]
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=4)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str, default=None):  # type: ignore[no-untyped-def]
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


# ---------------------------------------------------------------------------- processes


def userns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return ""


def members(ns: str) -> list[int]:
    """Live processes in user namespace `ns` (the container's)."""
    out: list[int] = []
    if not ns:
        return out
    for entry in os.listdir("/proc"):
        if entry.isdigit() and userns(int(entry)) == ns and alive(int(entry)):
            out.append(int(entry))
    return out


def kill_members(ns: str, timeout: float | None) -> int:
    """SIGTERM every member, SIGKILL what is left after `timeout` s (None: SIGKILL at once).
    Returns the signal that ended it (15 or 9)."""
    sig_used = signal.SIGKILL if timeout is None else signal.SIGTERM
    for pid in members(ns):
        with contextlib.suppress(OSError):
            os.kill(pid, sig_used)
    if timeout is not None:
        deadline = time.monotonic() + timeout
        while members(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
    for _ in range(200):  # bounded: a member may fork while we kill
        left = members(ns)
        if not left:
            break
        sig_used = signal.SIGKILL
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return int(sig_used)


# ---------------------------------------------------------------------------- containers


def cdir(name: str) -> str:
    return os.path.join(containers_dir(), name)


def all_containers() -> list[dict]:
    out = []
    base = containers_dir()
    if os.path.isdir(base):
        for name in sorted(os.listdir(base)):
            rec = read_json(os.path.join(base, name, "config.json"))
            if isinstance(rec, dict):
                out.append(refresh(rec))
    return sorted(out, key=lambda r: r["Created"], reverse=True)


def find(ref: str) -> dict | None:
    """A container by name (with or without the leading /) or by ID prefix."""
    name = ref.lstrip("/")
    rec = read_json(os.path.join(cdir(name), "config.json")) if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) else None
    if isinstance(rec, dict):
        return refresh(rec)
    if re.fullmatch(r"[0-9a-f]{1,64}", ref):
        hits = [r for r in all_containers() if r["Id"].startswith(ref)]
        if len(hits) == 1:
            return hits[0]
    return None


def must_find(ref: str) -> dict:
    rec = find(ref)
    if rec is None:
        raise Fail(daemon_error(f"No such container: {ref}"))
    return rec


def running(rec: dict) -> bool:
    pid = rec["State"]["Pid"]
    return bool(pid) and alive(pid) and userns(pid) == rec["Sim"]["userns"]


def refresh(rec: dict) -> dict:
    """Reconcile the record with the processes: an init that is gone ends the container, and,
    as with a PID namespace, takes every other member with it."""
    st = rec["State"]
    if st["Status"] in ("running", "restarting") and not running(rec):
        kill_members(rec["Sim"]["userns"], None)
        st.update(Status="exited", Running=False, Pid=0, FinishedAt=now())
        if st.get("ExitCode") is None:
            st["ExitCode"] = 0
        save(rec)
    return rec


def save(rec: dict) -> None:
    write_json(os.path.join(cdir(rec["Name"].lstrip("/")), "config.json"), rec)


def stop(rec: dict, timeout: float | None) -> None:
    if rec["State"]["Status"] not in ("running", "restarting") and not members(rec["Sim"]["userns"]):
        return
    sig = kill_members(rec["Sim"]["userns"], timeout)
    rec["State"].update(Status="exited", Running=False, Pid=0, ExitCode=128 + sig, FinishedAt=now())
    save(rec)


# ---------------------------------------------------------------------------- images


def images() -> list[dict]:
    return read_json(os.path.join(NODE, "docker", "images.json"), []) or []


def normalize(ref: str) -> str:
    name, _, digest = ref.partition("@")
    head, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name + ":latest" if not digest else ref
    return ref


def split(ref: str) -> tuple[str, str]:
    ref = normalize(ref)
    head, _, tag = ref.rpartition(":")
    return head, tag


def local_image(ref: str) -> dict | None:
    ref = normalize(ref)
    for img in images():
        if ref in img["RepoTags"] or img["Id"].startswith("sha256:" + ref) or img["Id"] == ref:
            return img
    return None


def registry_has(ref: str) -> str | None:
    """None if the registry holds `ref`, else the daemon's error text."""
    repo, tag = split(ref)
    reg = read_json(os.path.join(RUNTIME, "registry.json"), {}) or {}
    if repo not in reg:
        short = repo.split("/", 1)[1] if "." in repo.split("/", 1)[0] and "/" in repo else repo
        return (f"pull access denied for {short}, repository does not exist or may require "
                "'docker login': denied: requested access to the resource is denied")
    if "*" not in reg[repo] and tag not in reg[repo]:
        return f"manifest for {repo}:{tag} not found: manifest unknown: manifest unknown"
    return None


def pull(ref: str, out) -> dict:  # type: ignore[no-untyped-def]
    err = registry_has(ref)
    if err:
        raise Fail(daemon_error(err))
    ref = normalize(ref)
    repo, tag = split(ref)
    digest = hashlib.sha256(ref.encode()).hexdigest()
    img = local_image(ref)
    layer = digest[:12]
    if img is None:
        img = {"Id": "sha256:" + hashlib.sha256(("image " + ref).encode()).hexdigest(), "RepoTags": [ref],
               "RepoDigests": [f"{repo}@sha256:{digest}"], "Created": now(), "Size": 17179869184,
               "Config": {"Env": image.image_env(ref), "Cmd": image.IMAGE_CMD,
                          "WorkingDir": image.IMAGE_WORKDIR}}
        with lock():
            imgs = [i for i in images() if ref not in i["RepoTags"]] + [img]
            write_json(os.path.join(NODE, "docker", "images.json"), imgs)
        out.write(f"{tag}: Pulling from {repo.split('/', 1)[-1]}\n{layer}: Pull complete\n"
                  f"Digest: sha256:{digest}\nStatus: Downloaded newer image for {ref}\n{ref}\n")
    else:
        out.write(f"{tag}: Pulling from {repo.split('/', 1)[-1]}\nDigest: sha256:{digest}\n"
                  f"Status: Image is up to date for {ref}\n{ref}\n")
    out.flush()
    return img


# ---------------------------------------------------------------------------- option parsing


def ram_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmgtp]?)b?", text.strip().lower())
    if not m:
        raise Fail(f'invalid argument "{text}" for "--shm-size" flag: invalid size: \'{text}\'', 125)
    return int(float(m.group(1)) * 1024 ** "bkmgtp".index(m.group(2) or "b"))


def parse_env(items: list[str], files: list[str]) -> list[str]:
    out = []
    for path in files:
        try:
            with open(path) as f:
                items = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")] + items
        except OSError as e:
            raise Fail(f"open {path}: {(e.strerror or str(e)).lower()}", 125) from None
    for item in items:
        if "=" in item:
            out.append(item)
        elif item in os.environ:
            out.append(f"{item}={os.environ[item]}")
    return out


def merge_env(base: list[str], extra: list[str]) -> list[str]:
    env: dict[str, str] = {}
    for item in base + extra:
        k, _, v = item.partition("=")
        env[k] = v
    return [f"{k}={v}" for k, v in env.items()]


# ---------------------------------------------------------------------------- docker run

RUN = Opts("run", "[OPTIONS] IMAGE [COMMAND] [ARG...]",
           {"--name": "name", "--device": "device", "-v": "volume", "--volume": "volume", "-e": "env",
            "--env": "env", "--env-file": "env_file", "--net": "net", "--network": "net",
            "--shm-size": "shm", "-w": "workdir", "--workdir": "workdir", "--entrypoint": "entrypoint",
            "-u": "user", "--user": "user", "--ipc": "ipc", "--pid": "pid", "-l": "label", "--label": "label",
            "--restart": "restart", "--cap-add": "cap_add", "--cap-drop": "cap_drop",
            "--security-opt": "security_opt", "--ulimit": "ulimit", "-h": "hostname", "--hostname": "hostname",
            "--memory": "memory", "-m": "memory", "--cpus": "cpus", "--pull": "pull", "--mount": "mount",
            "--add-host": "add_host", "-p": "publish", "--publish": "publish", "--group-add": "group_add"},
           {"-d": "detach", "--detach": "detach", "--privileged": "privileged", "--rm": "rm", "-i": "interactive",
            "--interactive": "interactive", "-t": "tty", "--tty": "tty", "--init": "init"})


def parse_device(spec: str) -> dict:
    parts = spec.split(":")
    host = parts[0]
    ctr = parts[1] if len(parts) > 1 and parts[1].startswith("/") else host
    perms = parts[-1] if len(parts) > 1 and not parts[-1].startswith("/") else "rwm"
    return {"PathOnHost": host, "PathInContainer": ctr, "CgroupPermissions": perms}


def node_devices() -> set[str]:
    state = read_json(os.path.join(NODE, "state.json"), {}) or {}
    return {f"/dev/davinci{d['id']}" for d in state.get("devices", [])} | set(NODE_DEVICES)


def parse_bind(spec: str) -> tuple[str, str, bool]:
    parts = spec.split(":")
    if len(parts) < 2 or not parts[1].startswith("/"):
        raise Fail(f'docker: Error response from daemon: invalid volume specification: \'{spec}\'\n\n'
                   "Run 'docker run --help' for more information", 125)
    src, dst = parts[0], parts[1]
    if not src.startswith("/") and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", src):
        raise Fail(f'docker: Error response from daemon: create {src}: "{src}" includes invalid characters for a '
                   'local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a '
                   "host directory, use absolute path.\n\nRun 'docker run --help' for more information", 125)
    opts = parts[2].split(",") if len(parts) > 2 else []
    return src, dst, "ro" in opts


def cmd_run(argv: list[str]) -> int:
    got, rest = RUN.parse(argv, 1)
    ref, cmd = rest[0], rest[1:]
    name = last(got, "name")
    if name is not None and not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
        raise Fail(f'docker: Error response from daemon: Invalid container name ({name}), only '
                   "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed.\n\nRun 'docker run --help' for more information", 125)
    devices = [parse_device(d) for d in got.get("device", [])]
    known = node_devices()
    for d in devices:
        if d["PathOnHost"] not in known:
            raise Fail(f"docker: Error response from daemon: error gathering device information while adding "
                       f"custom device \"{d['PathOnHost']}\": no such file or directory\n\n"
                       "Run 'docker run --help' for more information", 125)
    binds = [parse_bind(v) for v in got.get("volume", [])]
    shm = ram_bytes(last(got, "shm", "64m"))
    env_extra = parse_env(got.get("env", []), got.get("env_file", []))
    img = local_image(ref)
    if img is None:
        sys.stderr.write(f"Unable to find image '{normalize(ref)}' locally\n")
        sys.stderr.flush()
        try:
            img = pull(ref, sys.stderr)
        except Fail as e:
            raise Fail(f"docker: {e.msg}\n\nRun 'docker run --help' for more information", 125) from None
    ref = normalize(ref) if ref in img["RepoTags"] or normalize(ref) in img["RepoTags"] else ref
    with lock():
        if name is None:
            name = "sim_" + hashlib.sha256(f"{time.time_ns()}".encode()).hexdigest()[:8]
        old = find(name)
        if old is not None:
            raise Fail(f'docker: Error response from daemon: Conflict. The container name "/{name}" is already in use '
                       f'by container "{old["Id"]}". You have to remove (or rename) that container to be able to '
                       "reuse that name.\n\nRun 'docker run --help' for more information", 125)
        cid = hashlib.sha256(f"{NODE}/{name}/{time.time_ns()}/{os.getpid()}".encode()).hexdigest()
        entry = got.get("entrypoint")
        rec = {
            "Id": cid, "Created": now(), "Name": "/" + name,
            "Path": (entry[-1] if entry else (cmd or img["Config"]["Cmd"])[0]),
            "Args": (cmd or img["Config"]["Cmd"])[0 if entry else 1:],
            "State": {"Status": "created", "Running": False, "Paused": False, "Restarting": False,
                      "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
                      "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
            "Image": img["Id"],
            "LogPath": os.path.join(cdir(name), "log"),
            "Config": {"Hostname": last(got, "hostname", cid[:12]), "User": last(got, "user", ""),
                       "Env": merge_env(img["Config"]["Env"], env_extra),
                       "Cmd": cmd or (img["Config"]["Cmd"] if not entry else []),
                       "Image": ref, "WorkingDir": last(got, "workdir", img["Config"]["WorkingDir"]),
                       "Entrypoint": [entry[-1]] if entry else None,
                       "Labels": dict(lb.partition("=")[::2] for lb in got.get("label", []))},
            "HostConfig": {"Binds": [v for v in got.get("volume", [])],
                           "NetworkMode": last(got, "net", "bridge"),
                           "Privileged": bool(last(got, "privileged", False)),
                           "ShmSize": shm, "IpcMode": last(got, "ipc", "private"),
                           "PidMode": last(got, "pid", ""), "Devices": devices,
                           "AutoRemove": bool(last(got, "rm", False)),
                           "RestartPolicy": {"Name": last(got, "restart", "no"), "MaximumRetryCount": 0}},
            "Mounts": [{"Type": "bind", "Source": s, "Destination": d, "Mode": "ro" if ro else "",
                        "RW": not ro, "Propagation": "rprivate"} for s, d, ro in binds],
            "Sim": {"userns": "", "devices": sorted(int(d["PathOnHost"][len("/dev/davinci"):])
                                                     for d in devices if d["PathOnHost"][len("/dev/davinci"):].isdigit())},
        }
        os.makedirs(os.path.join(cdir(name), "rootfs"), exist_ok=True)
        save(rec)
        build_rootfs(rec)
    start(rec)
    if last(got, "detach", False):
        print(cid)
        return 0
    # attached: wait for the init to finish, streaming its log
    return follow(rec)


def follow(rec: dict) -> int:
    pos = 0
    log = rec["LogPath"]
    while True:
        with contextlib.suppress(OSError), open(log, "rb") as f:
            f.seek(pos)
            data = f.read()
            pos += len(data)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        if not running(rec):
            break
        time.sleep(0.05)
    return 0


def build_rootfs(rec: dict) -> None:
    """The container's own files (image + mount points); the mounts themselves are made by the
    init inside its namespace."""
    name = rec["Name"].lstrip("/")
    rootfs = os.path.join(cdir(name), "rootfs")
    for d in ("etc", "tmp", "var/tmp", "root", "run", "home", "opt", "mnt", "dev", "proc", "sys", "usr/local/bin"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    os.chmod(os.path.join(rootfs, "var/tmp"), 0o1777)
    for item in ETC_COPY:
        src, dst = "/etc/" + item, os.path.join(rootfs, "etc", item)
        if os.path.lexists(dst) or not os.path.lexists(src):
            continue
        with contextlib.suppress(OSError):
            if os.path.isdir(src) and not os.path.islink(src):
                shutil.copytree(src, dst, symlinks=True)
            elif os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            else:
                shutil.copyfile(src, dst)
    with open(os.path.join(rootfs, "etc", "hostname"), "w") as f:
        f.write(rec["Config"]["Hostname"] + "\n")
    image.populate(rootfs, ROOT, rec["Config"]["Image"])


def mount_plan(rec: dict) -> list[tuple[str, str, bool, bool]]:
    """(source on the host, target in rootfs, recursive, read-only) in mount order."""
    name = rec["Name"].lstrip("/")
    rootfs = os.path.join(cdir(name), "rootfs")
    plan = []
    for d in HOST_DIRS:
        if os.path.isdir("/" + d) and not os.path.islink("/" + d):
            plan.append(("/" + d, os.path.join(rootfs, d), True, False))
    for d in ("dev", "proc", "sys"):
        plan.append(("/" + d, os.path.join(rootfs, d), True, False))
    for d in ETC_BIND:
        if os.path.isdir("/etc/" + d):
            plan.append(("/etc/" + d, os.path.join(rootfs, "etc", d), True, False))
    plan.append((ROOT, rootfs + ROOT, False, False))
    binds = []
    for spec in rec["HostConfig"]["Binds"]:
        src, dst, ro = parse_bind(spec)
        if src.startswith("/"):
            src = host_path(src)
        else:  # a named volume
            src = os.path.join(NODE, "docker", "volumes", src, "_data")
        binds.append((src, rootfs + posixpath.normpath(dst), True, ro))
    binds.sort(key=lambda b: b[1].count("/"))  # parents first, as docker sorts mounts
    return plan + binds


def start(rec: dict) -> None:
    """Prepare the mount points, start the init in its namespaces, wait until it has exec'd."""
    name = rec["Name"].lstrip("/")
    rootfs = os.path.join(cdir(name), "rootfs")
    for d in TOP_LINKS:
        link, target = os.path.join(rootfs, d), "/" + d
        if os.path.islink(target) and not os.path.lexists(link):
            os.symlink(os.readlink(target), link)
        elif os.path.isdir(target) and not os.path.islink(target) and not os.path.lexists(link):
            os.makedirs(link)
    for src, dst, _rec, _ro in mount_plan(rec):
        if not os.path.exists(src):  # docker creates missing bind sources as folders
            os.makedirs(os.path.realpath(src), exist_ok=True)  # (a dangling link's target, as the host view's)
        if os.path.isdir(src):
            if os.path.islink(dst) or (os.path.exists(dst) and not os.path.isdir(dst)):
                os.unlink(dst)
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.islink(dst) or os.path.isdir(dst):
                (os.unlink if os.path.islink(dst) else os.rmdir)(dst)
            if not os.path.exists(dst):
                open(dst, "a").close()
    r, w = os.pipe()
    log = os.open(rec["LogPath"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    env = process_env(rec, [])
    p = subprocess.Popen([UNSHARE, "-Urm", sys.executable, os.path.abspath(__file__), "_init", cdir(name), str(w)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(w,), env=env,
                         start_new_session=True, cwd="/")
    os.close(w)
    os.close(log)
    msg = b""
    while chunk := os.read(r, 4096):
        msg += chunk
    os.close(r)
    if msg != b"ok":
        p.wait()
        rec["State"].update(Status="created", Error=msg.decode(errors="replace"), ExitCode=127)
        save(rec)
        raise Fail("docker: Error response from daemon: failed to create task for container: failed to create shim "
                   "task: OCI runtime create failed: runc create failed: unable to start container process: "
                   f"{msg.decode(errors='replace')}: unknown\n\nRun 'docker run --help' for more information",
                   127 if b"executable file not found" in msg else 125)
    rec["State"].update(Status="running", Running=True, Pid=p.pid, ExitCode=None, Error="", StartedAt=now(),
                        FinishedAt="0001-01-01T00:00:00Z")
    rec["Sim"]["userns"] = userns(p.pid)
    save(rec)


def process_env(rec: dict, extra: list[str]) -> dict[str, str]:
    """The container's env (image + -e), plumbing, then the exec's -e."""
    env = dict(item.partition("=")[::2] for item in merge_env(rec["Config"]["Env"], extra))
    env.update(DEPLOY_SIM_ROOT=ROOT, DEPLOY_SIM_NODE=NODE, DEPLOY_SIM_CONTAINER=cdir(rec["Name"].lstrip("/")))
    env.setdefault("HOSTNAME", rec["Config"]["Hostname"])
    env.setdefault("HOME", "/root")
    return env


# ---------------------------------------------------------------------------- the init (in the namespace)

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384


def _mount(libc, src: str, dst: str, flags: int) -> None:  # type: ignore[no-untyped-def]
    if libc.mount(src.encode(), dst.encode(), None, flags, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dst)


def init(container: str, fd: int) -> None:
    """Runs as `unshare -Urm python3 docker.py _init DIR/nodes/<n>/containers/<name> FD`: mount,
    chroot, report "ok" on FD (or the error) and exec the command (same PID: the container's)."""
    rec = read_json(os.path.join(container, "config.json"))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for src, dst, recursive, ro in mount_plan(rec):
            _mount(libc, src, dst, MS_BIND | (MS_REC if recursive else 0))
            if ro:
                with contextlib.suppress(OSError):  # best effort: locked flags may forbid it
                    _mount(libc, "none", dst, MS_BIND | MS_REMOUNT | MS_RDONLY)
        rootfs = os.path.join(container, "rootfs")
        os.chroot(rootfs)
        workdir = rec["Config"]["WorkingDir"] or "/"
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
        argv = (rec["Config"]["Entrypoint"] or []) + rec["Config"]["Cmd"]
        exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=os.environ.get("PATH", ""))
        if exe is None or not os.path.exists(exe):
            raise OSError(f'exec: "{argv[0]}": executable file not found in $PATH')
    except OSError as e:
        os.write(fd, str(e).encode())
        os._exit(127)
    os.write(fd, b"ok")
    os.close(fd)
    os.execv(exe, argv)


# ---------------------------------------------------------------------------- other commands

EXEC = Opts("exec", "[OPTIONS] CONTAINER COMMAND [ARG...]",
            {"-e": "env", "--env": "env", "--env-file": "env_file", "-w": "workdir", "--workdir": "workdir",
             "-u": "user", "--user": "user", "--detach-keys": "detach_keys"},
            {"-d": "detach", "--detach": "detach", "-i": "interactive", "--interactive": "interactive",
             "-t": "tty", "--tty": "tty", "--privileged": "privileged"})


def cmd_exec(argv: list[str]) -> int:
    got, rest = EXEC.parse(argv, 2)
    rec = must_find(rest[0])
    if not running(rec):
        raise Fail(daemon_error(f"container {rec['Id']} is not running"))
    env = process_env(rec, parse_env(got.get("env", []), got.get("env_file", [])))
    workdir = last(got, "workdir") or rec["Config"]["WorkingDir"] or "/"
    missing = exec_missing(rec["State"]["Pid"], rest[1], env.get("PATH", ""))
    if missing:
        raise Fail("OCI runtime exec failed: exec failed: unable to start container process: " + missing + ": unknown",
                   127)
    argv2 = [NSENTER, "-t", str(rec["State"]["Pid"]), "-U", "-m", "--preserve-credentials", "-r",
             f"--wdns={workdir}", *rest[1:]]
    if last(got, "detach", False):
        subprocess.Popen(argv2, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        return 0
    os.execve(NSENTER, argv2, env)
    return 127  # not reached


def exec_missing(pid: int, cmd: str, path: str) -> str | None:
    """Why `cmd` cannot be exec'd in the container (runc's text), or None. Looked up through
    /proc/<init>/root, the container's root as seen from outside."""
    root = f"/proc/{pid}/root"
    if "/" in cmd:
        target = cmd if cmd.startswith("/") else "/" + cmd
        return None if os.path.exists(root + target) else f'exec: "{cmd}": stat {cmd}: no such file or directory'
    for d in path.split(":"):
        if d.startswith("/") and os.access(f"{root}{d}/{cmd}", os.X_OK):
            return None
    return f'exec: "{cmd}": executable file not found in $PATH'


def cmd_ps(argv: list[str]) -> int:
    got, _ = Opts("ps", "[OPTIONS]", {"--filter": "filter", "-f": "filter", "--format": "format", "-n": "last",
                                      "--last": "last"},
                  {"-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet", "--no-trunc": "no_trunc",
                   "-s": "size", "--size": "size", "-l": "latest", "--latest": "latest"}).parse(argv, 0)
    recs = all_containers()
    if not last(got, "all", False):
        recs = [r for r in recs if r["State"]["Status"] == "running"]
    for flt in got.get("filter", []):
        key, _, val = flt.partition("=")
        if key == "name":
            rx = re.compile(val)
            recs = [r for r in recs if rx.search(r["Name"].lstrip("/")) or rx.search(r["Name"])]
        elif key == "id":
            recs = [r for r in recs if r["Id"].startswith(val)]
        elif key == "status":
            recs = [r for r in recs if r["State"]["Status"] == val]
        elif key == "ancestor":
            recs = [r for r in recs if r["Config"]["Image"] in (val, normalize(val))]
        else:
            raise Fail(f"Error response from daemon: invalid filter '{key}'")
    trunc = not last(got, "no_trunc", False)
    if last(got, "quiet", False):
        for r in recs:
            print(r["Id"][:12] if trunc else r["Id"])
        return 0
    rows = [ps_fields(r, trunc) for r in recs]
    fmt = last(got, "format")
    if fmt and fmt != "table":
        for r, fields in zip(recs, rows):
            print(render(fmt, fields, r))
        return 0
    cols = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    keys = ["ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names"]
    table([cols] + [[f[k] for k in keys] for f in rows])
    return 0


def ps_fields(r: dict, trunc: bool) -> dict[str, str]:
    st = r["State"]
    if st["Status"] == "running":
        status = f"Up {ago(st['StartedAt'])}"
    elif st["Status"] == "exited":
        status = f"Exited ({st.get('ExitCode') or 0}) {ago(st['FinishedAt'])} ago"
    else:
        status = "Created"
    command = " ".join([r["Path"], *r["Args"]])
    if trunc and len(command) > 20:
        command = command[:19] + "…"
    return {"ID": r["Id"][:12] if trunc else r["Id"], "Image": r["Config"]["Image"], "Command": f'"{command}"',
            "CreatedAt": r["Created"], "RunningFor": f"{ago(r['Created'])} ago", "Status": status,
            "State": st["Status"], "Ports": "", "Names": r["Name"].lstrip("/"), "Size": "0B",
            "Mounts": ",".join(m["Source"] for m in r["Mounts"]), "Networks": r["HostConfig"]["NetworkMode"],
            "Labels": ",".join(f"{k}={v}" for k, v in r["Config"]["Labels"].items())}


def public(rec: dict) -> dict:
    out = {k: v for k, v in rec.items() if k != "Sim"}
    out["State"] = dict(rec["State"], ExitCode=rec["State"].get("ExitCode") or 0)
    return out


def cmd_inspect(argv: list[str], kind: str | None = None) -> int:
    got, rest = Opts("inspect", "[OPTIONS] NAME|ID [NAME|ID...]", {"-f": "format", "--format": "format",
                                                                   "--type": "type"},
                     {"-s": "size", "--size": "size"}).parse(argv, 1)
    kind = kind or last(got, "type")
    objs, rc = [], 0
    for ref in rest:
        obj = None
        if kind in (None, "container"):
            rec = find(ref)
            obj = public(rec) if rec else None
        if obj is None and kind in (None, "image"):
            obj = local_image(ref)
        if obj is None:
            rc = 1
            sys.stderr.write(f"Error response from daemon: No such image: {normalize(ref)}\n" if kind == "image"
                             else f"Error: No such object: {ref}\n")
            continue
        objs.append(obj)
    fmt = last(got, "format")
    if fmt:
        for o in objs:
            print(render(fmt, {}, o))
    else:
        print(json.dumps(objs, indent=4))
    return rc


def cmd_stop(argv: list[str], cmd: str = "stop") -> int:
    got, rest = Opts(cmd, "[OPTIONS] CONTAINER [CONTAINER...]", {"-t": "time", "--time": "time",
                                                                  "--timeout": "time", "-s": "signal",
                                                                  "--signal": "signal"}, {}).parse(argv, 1)
    timeout = float(last(got, "time", 10))
    rc = 0
    for ref in rest:
        rec = find(ref)
        if rec is None:
            sys.stderr.write(daemon_error(f"No such container: {ref}") + "\n")
            rc = 1
            continue
        stop(rec, max(0.0, timeout))
        if cmd == "restart":
            start(rec)
        print(ref)
    return rc


def cmd_start(argv: list[str]) -> int:
    _, rest = Opts("start", "[OPTIONS] CONTAINER [CONTAINER...]", {}, {"-a": "attach", "-i": "interactive"}).parse(argv, 1)
    for ref in rest:
        rec = must_find(ref)
        if not running(rec):
            start(rec)
        print(ref)
    return 0


def cmd_kill(argv: list[str]) -> int:
    got, rest = Opts("kill", "[OPTIONS] CONTAINER [CONTAINER...]", {"-s": "signal", "--signal": "signal"},
                     {}).parse(argv, 1)
    sig = str(last(got, "signal", "KILL")).upper().removeprefix("SIG")
    num = int(sig) if sig.isdigit() else int(getattr(signal, "SIG" + sig))
    for ref in rest:
        rec = must_find(ref)
        if not running(rec):
            raise Fail(daemon_error(f"cannot kill container: {ref}: container {rec['Id']} is not running"))
        if num == signal.SIGKILL:
            stop(rec, None)
        else:
            os.kill(rec["State"]["Pid"], num)
        print(ref)
    return 0


def cmd_rm(argv: list[str]) -> int:
    got, rest = Opts("rm", "[OPTIONS] CONTAINER [CONTAINER...]", {},
                     {"-f": "force", "--force": "force", "-v": "volumes", "--volumes": "volumes",
                      "-l": "link", "--link": "link"}).parse(argv, 1)
    rc = 0
    for ref in rest:
        rec = find(ref)
        if rec is None:
            sys.stderr.write(daemon_error(f"No such container: {ref}") + "\n")
            rc = 1
            continue
        if running(rec) and not last(got, "force", False):
            sys.stderr.write(daemon_error(f'cannot remove container "{rec["Name"]}": container is running: stop '
                                          "the container before removing or force remove") + "\n")
            rc = 1
            continue
        stop(rec, None)
        with lock():
            shutil.rmtree(cdir(rec["Name"].lstrip("/")), ignore_errors=True)
        print(ref)
    return rc


def cmd_logs(argv: list[str]) -> int:
    got, rest = Opts("logs", "[OPTIONS] CONTAINER", {"--tail": "tail", "-n": "tail", "--since": "since"},
                     {"-f": "follow", "--follow": "follow", "-t": "timestamps"}).parse(argv, 1)
    rec = must_find(rest[0])
    with contextlib.suppress(OSError), open(rec["LogPath"], "rb") as f:
        data = f.read()
        tail = last(got, "tail")
        if tail and tail != "all":
            data = b"".join(data.splitlines(keepends=True)[-int(tail):])
        sys.stdout.buffer.write(data)
    return 0


def cmd_images(argv: list[str]) -> int:
    got, rest = Opts("images", "[OPTIONS] [REPOSITORY[:TAG]]", {"--format": "format", "--filter": "filter",
                                                                 "-f": "filter"},
                     {"-q": "quiet", "--quiet": "quiet", "-a": "all", "--all": "all",
                      "--no-trunc": "no_trunc", "--digests": "digests"}).parse(argv, 0)
    rows = []
    for img in images():
        for tagref in img["RepoTags"]:
            repo, tag = split(tagref)
            if rest and rest[0] not in (repo, tagref):
                continue
            rows.append({"Repository": repo, "Tag": tag, "ID": img["Id"][7:19], "CreatedSince": f"{ago(img['Created'])} ago",
                         "CreatedAt": img["Created"], "Size": "17.2GB", "Digest": img["RepoDigests"][0].partition("@")[2]})
    if last(got, "quiet", False):
        for r in rows:
            print(r["ID"])
        return 0
    fmt = last(got, "format")
    if fmt and fmt != "table":
        for r in rows:
            print(render(fmt, r, r))
        return 0
    table([["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]] +
          [[r["Repository"], r["Tag"], r["ID"], r["CreatedSince"], r["Size"]] for r in rows])
    return 0


def cmd_pull(argv: list[str]) -> int:
    _, rest = Opts("pull", "[OPTIONS] NAME[:TAG|@DIGEST]", {"--platform": "platform"},
                   {"-q": "quiet", "--quiet": "quiet", "-a": "all_tags"}).parse(argv, 1)
    pull(rest[0], sys.stdout)
    return 0


def cmd_rmi(argv: list[str]) -> int:
    _, rest = Opts("rmi", "[OPTIONS] IMAGE [IMAGE...]", {}, {"-f": "force", "--force": "force"}).parse(argv, 1)
    with lock():
        imgs = images()
        for ref in rest:
            img = local_image(ref)
            if img is None:
                raise Fail(daemon_error(f"No such image: {normalize(ref)}"))
            imgs = [i for i in imgs if i["Id"] != img["Id"]]
            print(f"Untagged: {normalize(ref)}")
        write_json(os.path.join(NODE, "docker", "images.json"), imgs)
    return 0


def cmd_image(argv: list[str]) -> int:
    sub = argv[0] if argv else ""
    table_ = {"inspect": lambda a: cmd_inspect(a, "image"), "ls": cmd_images, "list": cmd_images,
              "pull": cmd_pull, "rm": cmd_rmi}
    if sub not in table_:
        raise Fail(f'docker: unknown command: docker image {sub}\n\nRun \'docker image --help\' for more information')
    return table_[sub](argv[1:])


def cmd_container(argv: list[str]) -> int:
    sub = argv[0] if argv else ""
    if sub not in COMMANDS:
        raise Fail(f"docker: unknown command: docker container {sub}\n\nRun 'docker container --help' for more information")
    return COMMANDS[{"ls": "ps", "list": "ps"}.get(sub, sub)](argv[1:])


def cmd_version(argv: list[str]) -> int:
    print("Client:\n Version:           28.2.2\n API version:       1.50\n\nServer: deploy sim\n Engine:\n"
          "  Version:          28.2.2\n  API version:      1.50 (minimum version 1.24)")
    return 0


COMMANDS = {
    "run": cmd_run, "exec": cmd_exec, "ps": cmd_ps, "inspect": cmd_inspect, "stop": cmd_stop,
    "restart": lambda a: cmd_stop(a, "restart"), "start": cmd_start, "kill": cmd_kill, "rm": cmd_rm,
    "logs": cmd_logs, "images": cmd_images, "pull": cmd_pull, "rmi": cmd_rmi, "image": cmd_image,
    "container": cmd_container, "version": cmd_version, "ls": cmd_ps, "list": cmd_ps,
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["_init"]:
        init(argv[1], int(argv[2]))
        return 127
    if not NODE or not os.path.isdir(NODE):
        sys.stderr.write("docker: DEPLOY_SIM_NODE does not name a simulated node\n")
        return 127
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("Usage:  docker [OPTIONS] COMMAND\n\nA self-sufficient runtime for containers (deploy sim)\n\nCommands:\n  "
              + "\n  ".join(sorted(k for k in COMMANDS if k not in ("ls", "list"))))
        return 0
    if argv[0] not in COMMANDS or argv[0] in ("ls", "list"):
        sys.stderr.write(f"docker: unknown command: docker {argv[0]}\n\nRun 'docker --help' for more information\n")
        return 1
    try:
        return COMMANDS[argv[0]](argv[1:])
    except Fail as e:
        sys.stderr.write(e.msg + "\n")
        return e.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
