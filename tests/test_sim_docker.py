"""The simulated node's fake `docker`, driven over SSH as `deploy up` drives it (CONTRACT items 1-4, 8).

Containers are real (user + mount namespace, chroot into a rootfs of bind mounts); every check is
made on the node: exit codes and texts of docker itself, /proc, npu-smi. Both sshd modes.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import time

import pytest
from test_sim_cluster import Handle, available, cli, new_base, sim_processes

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("unshare") is None
                                or shutil.which("nsenter") is None, reason="needs ssh, unshare, nsenter")

IMAGE = "quay.io/ascend/vllm-ascend:v0.11.0rc1"
INVENTORY = """\
name: dock
soc: a2
nodes:
  n0: {host: 10.1.0.1, nic: eth0}
  n1: {host: 10.1.0.2, nic: eth0}
container: {image: example.com/team/vllm-ascend:pinned}
model: {path: /mnt/weights/m}
groups:
  - {name: s, role: serve, nodes: [n0, n1], dp: 2, tp: 8}
"""
# The reference mounts, as `deploy up` sends them (CONTRACT item 3), both option forms mixed.
MOUNTS = ("--device /dev/davinci_manager --device=/dev/devmm_svm --device /dev/hisi_hdc "
          "-v /usr/local/dcmi:/usr/local/dcmi "
          "-v /usr/local/Ascend/driver/tools/hccn_tool:/usr/local/Ascend/driver/tools/hccn_tool "
          "--volume=/usr/local/bin/npu-smi:/usr/local/bin/npu-smi "
          "-v /usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/ "
          "-v /usr/local/Ascend/driver/version.info:/usr/local/Ascend/driver/version.info "
          "-v /etc/ascend_install.info:/etc/ascend_install.info -v /etc/hccn.conf:/etc/hccn.conf "
          "-v /var/tmp/deploy/dock:/var/tmp/deploy/dock -v /mnt/weights:/mnt/weights:ro")


@pytest.fixture(scope="module", params=["openssh", "embedded"])
def sim(request):
    available(request.param)
    base = new_base()
    (base / "inv.yaml").write_text(INVENTORY)
    root = base / "sim"
    try:
        r = cli("up", str(base / "inv.yaml"), "--dir", str(root), "--sshd", request.param)
        assert r.exit_code == 0, r.stderr
        yield Handle(root)
    finally:
        cli("down", "--dir", str(root))
        shutil.rmtree(base, ignore_errors=True)


def run(sim, node: str, name: str, extra: str = "", mounts: str = MOUNTS, cmd: str = "sleep infinity") -> str:
    r = sim.ssh(node, f"docker run -d --name {name} --net=host --shm-size=1g --privileged "
                      f"--device /dev/davinci0 --device=/dev/davinci1 {mounts} {extra} {IMAGE} {cmd}")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", cid), r.stdout
    return cid


def rm(sim, node: str, name: str) -> None:
    sim.ssh(node, f"docker rm -f {name}")


def gone(sim, node: str, pid: int) -> bool:
    """Checked on the node: no such process, or a zombie (PID 1 reaps slowly here)."""
    r = sim.ssh(node, f"cat /proc/{pid}/stat 2>/dev/null")
    return r.stdout == "" or r.stdout.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_gone(sim, node: str, pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(sim, node, pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_pull_known_unknown_and_images(sim):
    r = sim.ssh("n0", f"docker image inspect {IMAGE}")
    assert (r.returncode, r.stdout.strip(), r.stderr.strip()) == (
        1, "[]", f"Error response from daemon: No such image: {IMAGE}")
    r = sim.ssh("n0", f"docker pull {IMAGE}")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == IMAGE
    assert f"Status: Downloaded newer image for {IMAGE}" in r.stdout
    r = sim.ssh("n0", "docker images --format '{{.Repository}}:{{.Tag}}'")
    assert r.stdout.splitlines() == [IMAGE]
    r = sim.ssh("n0", f"docker image inspect {IMAGE}")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["RepoTags"] == [IMAGE]
    assert sim.ssh("n0", "docker pull example.com/team/vllm-ascend:pinned").returncode == 0  # the inventory's
    r = sim.ssh("n0", "docker pull example.com/team/vllm-ascend:other")
    assert (r.returncode, r.stderr.strip()) == (1, "Error response from daemon: manifest for "
                                                "example.com/team/vllm-ascend:other not found: manifest unknown: "
                                                "manifest unknown")
    r = sim.ssh("n0", "docker pull nobody/nothing:1")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("Error response from daemon: pull access denied for nobody/nothing, "
                                       "repository does not exist or may require 'docker login'")
    assert sim.ssh("n1", "docker images -q").stdout == ""  # pulled on n0 only


def test_run_pulls_and_inspect_has_the_contract_fields(sim):
    cid = run(sim, "n1", "vllm-dock", "-e FOO=bar --env=ASCEND_RT_VISIBLE_DEVICES=0,1")
    try:
        r = sim.ssh("n1", "docker ps -a --filter 'name=^vllm-dock$' --format '{{.ID}} {{.State}}'")
        assert r.stdout == f"{cid[:12]} running\n"
        assert sim.ssh("n1", "docker ps -a --filter 'name=^vllm-do$' -q").stdout == ""
        [c] = json.loads(sim.ssh("n1", "docker inspect vllm-dock").stdout)
        assert (c["Id"], c["Name"], c["Config"]["Image"], c["Config"]["Cmd"]) == (
            cid, "/vllm-dock", IMAGE, ["sleep", "infinity"])
        assert {"FOO=bar", "ASCEND_RT_VISIBLE_DEVICES=0,1", "TASK_QUEUE_ENABLE=1", "OMP_NUM_THREADS=1"} <= set(
            c["Config"]["Env"])
        assert any(e.startswith("SOC_VERSION=") for e in c["Config"]["Env"])
        assert [d["PathOnHost"] for d in c["HostConfig"]["Devices"]] == [
            "/dev/davinci0", "/dev/davinci1", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
        assert all(d["PathInContainer"] == d["PathOnHost"] and d["CgroupPermissions"] == "rwm"
                   for d in c["HostConfig"]["Devices"])
        assert "/etc/hccn.conf:/etc/hccn.conf" in c["HostConfig"]["Binds"]
        assert "/mnt/weights:/mnt/weights:ro" in c["HostConfig"]["Binds"]
        assert (c["HostConfig"]["NetworkMode"], c["HostConfig"]["Privileged"], c["HostConfig"]["ShmSize"]) == (
            "host", True, 1073741824)
        assert (c["State"]["Running"], c["State"]["Status"]) == (True, "running")
        assert not gone(sim, "n1", c["State"]["Pid"])
        r = sim.ssh("n1", "docker inspect --format '{{.State.Running}} {{json .HostConfig.Devices}}' vllm-dock")
        assert r.stdout.startswith('true [{"PathOnHost":"/dev/davinci0"')
        assert sim.ssh("n1", "docker images --format '{{.Repository}}:{{.Tag}}'").stdout == IMAGE + "\n"  # run pulled
    finally:
        rm(sim, "n1", "vllm-dock")


def test_name_conflict_and_missing_container_texts(sim):
    cid = run(sim, "n0", "dup")
    try:
        r = sim.ssh("n0", f"docker run -d --name dup {IMAGE} sleep infinity")
        assert r.returncode == 125
        assert (f'Error response from daemon: Conflict. The container name "/dup" is already in use by container '
                f'"{cid}". You have to remove (or rename) that container to be able to reuse that name.') in r.stderr
        r = sim.ssh("n0", "docker rm dup")
        assert (r.returncode, r.stderr.strip()) == (1, 'Error response from daemon: cannot remove container "/dup": '
                                                    "container is running: stop the container before removing or "
                                                    "force remove")
    finally:
        rm(sim, "n0", "dup")
    for cmd in ("docker rm -f dup", "docker exec dup true", "docker stop dup"):
        r = sim.ssh("n0", cmd)
        assert (r.returncode, r.stderr.strip()) == (1, "Error response from daemon: No such container: dup"), cmd
    r = sim.ssh("n0", "docker inspect dup")
    assert (r.returncode, r.stdout.strip(), r.stderr.strip()) == (1, "[]", "Error: No such object: dup")
    r = sim.ssh("n0", f"docker run -d --bogus {IMAGE}")
    assert r.returncode == 125 and r.stderr.startswith("unknown flag: --bogus")
    r = sim.ssh("n0", f"docker run -d -v ../../x:/x {IMAGE} sleep 1")  # never outside the node
    assert r.returncode == 125 and "includes invalid characters for a local volume name" in r.stderr


def test_exec_env_image_shell_context_and_python(sim):
    run(sim, "n0", "ctx", "-e FOO=bar")
    try:
        r = sim.ssh("n0", "docker exec -e BAR=baz -w /tmp ctx sh -c "
                          + shlex.quote('echo "$FOO $BAR $TASK_QUEUE_ENABLE $(pwd) ${ASCEND_TOOLKIT_HOME-unset}"'))
        assert r.stdout == "bar baz 1 /tmp unset\n", r.stderr  # exec does not read ~/.bashrc
        r = sim.ssh("n0", "docker exec ctx sh -c " + shlex.quote(
            ". /usr/local/Ascend/ascend-toolkit/set_env.sh; . /usr/local/Ascend/nnal/atb/set_env.sh; "
            'echo "$ASCEND_TOOLKIT_HOME|$ASCEND_HOME_PATH|$ATB_HOME_PATH"; echo "$LD_LIBRARY_PATH"'))
        home, ld = r.stdout.splitlines()
        assert home.split("|")[0] == "/usr/local/Ascend/ascend-toolkit/latest" and "atb" in home.split("|")[2]
        assert "ascend-toolkit/latest/lib64" in ld and "atb" in ld
        assert "ascend-toolkit" in sim.ssh("n0", "docker exec ctx bash -ic 'echo $ASCEND_TOOLKIT_HOME'").stdout
        r = sim.ssh("n0", "docker exec ctx sh -c " + shlex.quote(
            "command -v vllm; command -v python; command -v python3; "
            "ls /vllm-workspace/vllm-ascend/examples/disaggregated_prefill_v1/; "
            "p=$(python3 -c \"import sysconfig; print(sysconfig.get_paths()['purelib'])\"); echo $p; "
            "echo 'import os; os.environ[\"SITE_SEEN\"] = \"1\"' > $p/sitecustomize.py; "
            "python -c 'import os; print(os.environ.get(\"SITE_SEEN\"))'"))
        lines = r.stdout.splitlines()
        assert lines[:3] == ["/usr/local/python3.11.14/bin/vllm", "/usr/local/python3.11.14/bin/python",
                             "/usr/local/python3.11.14/bin/python3"], r.stderr
        assert lines[3:5] == ["load_balance_proxy_layerwise_server_example.py", "load_balance_proxy_server_example.py"]
        assert lines[5].startswith("/usr/local/python3.11.14/lib/python3") and lines[5].endswith("/site-packages")
        assert lines[6] == "1"  # the image's sitecustomize.py is imported by every python
        assert sim.ssh("n0", "docker exec ctx ls /mnt/weights/m").stdout == "config.json\n"
        r = sim.ssh("n0", "docker exec ctx touch /mnt/weights/x")
        assert r.returncode != 0  # :ro
    finally:
        rm(sim, "n0", "ctx")


def test_only_the_containers_devices_and_mounted_tools(sim):
    run(sim, "n1", "devs")
    run(sim, "n1", "bare", mounts="")
    try:
        r = sim.ssh("n1", "docker exec devs npu-smi info")
        assert r.returncode == 0, r.stderr
        npus = re.findall(r"^\| (\d+)\s+910B3", r.stdout, re.M)
        assert npus == ["0", "1"]
        assert len(re.findall(r"^\| (\d+)\s+910B3", sim.ssh("n1", "npu-smi info").stdout, re.M)) == 8
        assert sim.ssh("n1", "docker exec devs hccn_tool -i 0 -link -g").returncode == 127  # not on PATH
        r = sim.ssh("n1", "docker exec devs /usr/local/Ascend/driver/tools/hccn_tool -i 0 -link -g")
        assert r.stdout == "link status: UP\n", r.stderr
        assert "address_0=" in sim.ssh("n1", "docker exec devs cat /etc/hccn.conf").stdout
        assert sim.ssh("n1", "docker exec devs cat /usr/local/Ascend/driver/version.info").stdout == "Version=25.2.0\n"
        r = sim.ssh("n1", "docker exec bare npu-smi info")
        assert (r.returncode, r.stderr.strip()) == (
            127, 'OCI runtime exec failed: exec failed: unable to start container process: exec: "npu-smi": '
                 "executable file not found in $PATH: unknown")
        r = sim.ssh("n1", "docker exec bare sh -c 'ls /etc/hccn.conf /usr/local/Ascend/driver/tools/hccn_tool'")
        assert r.returncode != 0 and "No such file" in r.stderr
    finally:
        rm(sim, "n1", "devs")
        rm(sim, "n1", "bare")


RANK = ("docker exec {name} sh -c 'setsid sh \"$1\" </dev/null >\"$2\" 2>&1 & echo $! >\"$3\"' sh "
        "/var/tmp/deploy/dock/r.sh /var/tmp/deploy/dock/r.log /var/tmp/deploy/dock/r.pid")


def start_rank(sim, node: str, name: str, script: str = "echo started; exec sleep 1000\n") -> int:
    sim.ssh(node, 'mkdir -p "$DEPLOY_NODE_ROOT/var/tmp/deploy/dock"; cat > "$DEPLOY_NODE_ROOT/var/tmp/deploy/dock/r.sh"',
            input=script)
    r = sim.ssh(node, RANK.format(name=name))
    assert r.returncode == 0, r.stderr
    return int(sim.ssh(node, 'cat "$DEPLOY_NODE_ROOT/var/tmp/deploy/dock/r.pid"').stdout)


def test_rank_started_with_setsid_survives_and_dies_with_rm_f(sim):
    run(sim, "n0", "ranks")
    try:
        pid = start_rank(sim, "n0", "ranks")
        time.sleep(0.3)
        assert not gone(sim, "n0", pid)  # after docker exec and the SSH channel closed
        assert sim.ssh("n0", 'cat "$DEPLOY_NODE_ROOT/var/tmp/deploy/dock/r.log"').stdout == "started\n"
        assert sim.ssh("n0", f"docker exec ranks kill -0 {pid}").returncode == 0  # valid inside
        assert sim.ssh("n0", f"kill -0 {pid}").returncode == 0  # and on the host
        ns = sim.ssh("n0", f"readlink /proc/{pid}/ns/user; docker inspect -f '{{{{.State.Pid}}}}' ranks")
        mine, init = ns.stdout.split()
        assert sim.ssh("n0", f"readlink /proc/{init}/ns/user").stdout.strip() == mine  # a member
        pid2 = int(sim.ssh("n0", "docker exec -d ranks sleep 778; sleep 0.3; pgrep -f '^sleep 778$'").stdout)
        r = sim.ssh("n0", "docker rm -f ranks")
        assert (r.returncode, r.stdout) == (0, "ranks\n")
        assert wait_gone(sim, "n0", pid) and wait_gone(sim, "n0", pid2) and wait_gone(sim, "n0", int(init))
        assert sim.ssh("n0", "docker ps -aq").stdout == ""
    finally:
        rm(sim, "n0", "ranks")


def test_stop_kills_after_the_timeout_and_restart_reruns(sim):
    run(sim, "n1", "stubborn")
    try:
        pid = start_rank(sim, "n1", "stubborn", "trap '' TERM; while :; do sleep 0.1; done\n")
        r = sim.ssh("n1", "docker stop -t 1 stubborn")
        assert (r.returncode, r.stdout) == (0, "stubborn\n")
        assert wait_gone(sim, "n1", pid)
        r = sim.ssh("n1", "docker ps -a --filter name=^stubborn$ --format '{{.State}}'; "
                          "docker inspect -f '{{.State.ExitCode}} {{.State.Running}}' stubborn")
        assert r.stdout == "exited\n137 false\n"
        r = sim.ssh("n1", "docker exec stubborn true")
        assert r.returncode == 1 and "is not running" in r.stderr
        assert sim.ssh("n1", "docker restart stubborn").stdout == "stubborn\n"
        assert sim.ssh("n1", "docker ps --format '{{.Names}} {{.State}}'").stdout == "stubborn running\n"
        pid = start_rank(sim, "n1", "stubborn")
        old_init = sim.ssh("n1", "docker inspect -f '{{.State.Pid}}' stubborn").stdout.strip()
        assert sim.ssh("n1", "docker restart -t 0 stubborn").returncode == 0
        assert wait_gone(sim, "n1", pid)
        new_init = sim.ssh("n1", "docker inspect -f '{{.State.Pid}}' stubborn").stdout.strip()
        assert new_init != old_init and not gone(sim, "n1", int(new_init))
    finally:
        rm(sim, "n1", "stubborn")


def test_missing_mount_source_is_created_as_a_folder(sim):
    run(sim, "n0", "mk", mounts="-v /data/new/cache:/cache")
    try:
        assert sim.ssh("n0", 'test -d "$DEPLOY_NODE_ROOT/data/new/cache"').returncode == 0
        sim.ssh("n0", "docker exec mk sh -c 'echo hi > /cache/f'")
        assert sim.ssh("n0", 'cat "$DEPLOY_NODE_ROOT/data/new/cache/f"').stdout == "hi\n"
    finally:
        rm(sim, "n0", "mk")


CLAIM = ("/usr/bin/python3 -c 'import sys, os; sys.path.insert(0, os.environ[\"DEPLOY_SIM_ROOT\"] + \"/runtime\"); "
         "import occupancy as o; n = os.environ[\"DEPLOY_SIM_NODE\"]; o.claim(n, [{dev}], {pid}, 40000, \"python3\")'")


def test_claims_show_in_npu_smi_inside_only_for_own_devices(sim):
    run(sim, "n1", "occ")
    try:
        pid = start_rank(sim, "n1", "occ")
        sim.ssh("n1", "docker exec occ " + CLAIM.format(dev="1, 5", pid=pid))
        inside = sim.ssh("n1", "docker exec occ npu-smi info").stdout
        host = sim.ssh("n1", "npu-smi info").stdout
        assert [ln.split("|")[1].split()[0] for ln in inside.splitlines() if f"| {pid} " in ln] == ["1"]
        assert [ln.split("|")[1].split()[0] for ln in host.splitlines() if f"| {pid} " in ln] == ["1", "5"]
        sim.ssh("n1", "docker rm -f occ")
        assert wait_gone(sim, "n1", pid)
        assert f"| {pid} " not in sim.ssh("n1", "npu-smi info").stdout  # the claim died with it
    finally:
        rm(sim, "n1", "occ")


def test_sim_down_stops_containers_and_keeps_files():
    available("embedded")
    base = new_base()
    root = base / "sim"
    try:
        assert cli("up", "--nodes", "1", "--soc", "a2", "--dir", str(root), "--sshd", "embedded").exit_code == 0
        h = Handle(root)
        image = "quay.io/ascend/vllm-ascend:sim-placeholder"
        r = h.ssh("n0", f"docker run -d --name keep -v /var/tmp/deploy/x:/var/tmp/deploy/x {image} sleep infinity && "
                        "docker exec keep sh -c 'setsid sleep 999 </dev/null >/dev/null 2>&1 & echo ok > /var/tmp/deploy/x/f'")
        assert r.returncode == 0, r.stderr
        assert any("sleep 999" in p for p in sim_processes(root))
        down = cli("down", "--dir", str(root))
        assert down.exit_code == 0 and "nothing" in down.stdout
        assert sim_processes(root) == []
        assert (root / "nodes/n0/root/var/tmp/deploy/x/f").read_text() == "ok\n"
        assert (root / "nodes/n0/containers/keep/config.json").exists()
    finally:
        cli("down", "--dir", str(root))
        shutil.rmtree(base, ignore_errors=True)
