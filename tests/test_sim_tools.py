"""The simulator's per-node state and fake Ascend tools (orchestrator/sim/state.py,
faults.py, bin/hccn_tool, bin/npu-smi).

The tools run as real subprocesses under /bin/sh with the environment a simulated
node's SSH session gets.  Expected lines and exit codes are the ones in
ascend-tools.md (the shared reference); fixture lines quoted below are real
npu-smi captures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.sim.faults import SSH_FAULTS, TOOL_FAULTS, apply_fault, parse_fault_spec
from orchestrator.sim.state import (
    NET_HEALTH_STATUSES,
    NodeState,
    Process,
    build_states,
    load_state,
    save_state,
    write_cluster,
)

A2_NODES = [("a2n0", "127.0.10.1"), ("a2n1", "127.0.10.2")]
A3_NODES = [("a3n0", "127.0.11.1"), ("a3n1", "127.0.11.2")]

BUSY = "hccn_tool is busy, please try again."
FAILED = "Command execute failed!"


# ---------------------------------------------------------------------------------------
# fixtures and helpers


IMPLS = ["c", "sh"]  # the compiled fast path (with its sh fallback), the sh scripts alone
HAVE_CC = shutil.which("cc") is not None


def make_cluster(root: Path, nodes: list[tuple[str, str]], soc: str, impl: str, **kw) -> Path:  # type: ignore[no-untyped-def]
    """write_cluster with the tools of ``impl``: "c" (fastpath.c + sh scripts) or "sh" only."""
    with pytest.MonkeyPatch.context() as mp:
        if impl == "sh":
            mp.setenv("DEPLOY_SIM_NO_FASTPATH", "1")
        else:
            mp.delenv("DEPLOY_SIM_NO_FASTPATH", raising=False)
        write_cluster(root, build_states(nodes, soc, **kw))
    is_elf = (root / "bin" / "hccn_tool").read_bytes()[:4] == b"\x7fELF"
    assert is_elf == (impl == "c")
    return root


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    """Every test that runs the tools runs against both implementations."""
    if request.param == "c" and not HAVE_CC:
        pytest.skip("no C compiler: the fast path is not installed")
    return str(request.param)


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cache: dict[tuple[str, str], Path] = {}

    def get(impl: str, soc: str) -> Path:
        if (impl, soc) not in cache:
            nodes = A2_NODES if soc == "a2" else A3_NODES
            cache[impl, soc] = make_cluster(tmp_path_factory.mktemp(f"sim-{impl}-{soc}"), nodes, soc, impl)
        return cache[impl, soc]

    return get


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture
def a2(_templates, impl: str, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    return _copy(_templates(impl, "a2"), tmp_path / "a2")


@pytest.fixture
def a3(_templates, impl: str, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    return _copy(_templates(impl, "a3"), tmp_path / "a3")


def env_for(root: Path, node: str) -> dict[str, str]:
    ndir = root / "nodes" / node
    return {
        "PATH": f"{root}/bin:/usr/local/bin:/usr/bin:/bin",
        "DEPLOY_SIM_NODE": str(ndir),
        "DEPLOY_SIM_ROOT": str(root),
        "HCCN_CONF": str(ndir / "etc" / "hccn.conf"),
        "LC_ALL": "C",
    }


def run(root: Path, node: str, cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` on simulated ``node`` the way the SSH server does: /bin/sh -c."""
    return subprocess.run(
        ["/bin/sh", "-c", cmd], env=env_for(root, node), capture_output=True, text=True, timeout=30
    )


def ok(root: Path, node: str, cmd: str) -> list[str]:
    p = run(root, node, cmd)
    assert p.returncode == 0, (cmd, p.returncode, p.stdout, p.stderr)
    assert p.stderr == "", (cmd, p.stderr)
    return p.stdout.splitlines()


def state(root: Path, node: str) -> NodeState:
    return load_state(root / "nodes" / node)


def edit(root: Path, node: str, fn) -> None:  # type: ignore[no-untyped-def]
    st = state(root, node)
    fn(st)
    save_state(root / "nodes" / node, st)


def roce_ip(root: Path, node: str, dev: int) -> str:
    ip = state(root, node).device(dev).ip
    assert ip
    return ip


# ---------------------------------------------------------------------------------------
# build_states / save / load / layout


def test_build_states_a2() -> None:
    states = build_states(A2_NODES, "a2")
    assert list(states) == ["a2n0", "a2n1"]
    n0 = states["a2n0"]
    assert n0.soc == "a2" and n0.chip_name == "910B3" and n0.address == "127.0.10.1"
    assert [d.id for d in n0.devices] == list(range(8))
    assert all(d.npu == d.id and d.chip == 0 for d in n0.devices)
    assert n0.super_pod_id is None and all(d.sdid is None and d.vnic_ip is None for d in n0.devices)
    ips = [d.ip for s in states.values() for d in s.devices]
    assert len(set(ips)) == len(ips) == 16
    d3 = n0.device(3)
    assert d3.ip == "10.3.0.11" and d3.netmask == "255.255.0.0"
    assert d3.gateway == d3.netdetect == "10.3.0.1"
    assert d3.link == "UP" and d3.net_health == "Success" and d3.tls_switch == 0 and d3.tls_certs
    assert d3.health == "OK" and 3000 <= d3.hbm_used_mb < 3500 and d3.hbm_total_mb == 65536
    assert d3.processes == [] and d3.optical_present and d3.lldp_ifname
    assert n0.busy == 0
    assert build_states(A2_NODES, "a2") == states  # deterministic


def test_build_states_a3_identity() -> None:
    nodes = [(f"n{i}", f"127.0.12.{i + 1}") for i in range(5)]
    states = build_states(nodes, "a3")
    n4 = states["n4"]
    assert [d.id for d in n4.devices] == list(range(16))
    assert all(d.id == d.npu * 2 + d.chip for d in n4.devices)
    assert n4.chip_name == "Ascend910"
    assert (n4.super_pod_id, n4.super_pod_size, n4.server_index) == (0, 384, 4)
    # the reference example: SDID 16777216 = 4 << 22 -> server index 4, npu 0, die 0, dev 0
    assert n4.device(0).sdid == 16777216
    d13 = n4.device(13)
    assert d13.sdid == (4 << 22) | (6 << 18) | (1 << 16) | 13
    assert d13.vnic_ip == "192.4.3.186" and d13.vnic_netmask == "255.255.255.0"
    assert n4.device(0).vnic_ip == "192.4.2.199"
    sdids = [d.sdid for s in states.values() for d in s.devices]
    assert len(set(sdids)) == len(sdids)
    assert n4.device(1).power_w is None and n4.device(0).power_w is not None
    # small pods: server index wraps and the pod id increments
    small = build_states(nodes, "a3", super_pod_size=16)
    assert [(s.super_pod_id, s.server_index) for s in small.values()] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]


def test_build_states_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        build_states(A2_NODES, "a5")
    with pytest.raises(ValueError):
        build_states([("x", "1"), ("x", "2")], "a2")


def test_layout_and_modes(a2: Path, impl: str) -> None:
    for tool in ("hccn_tool", "npu-smi"):
        mode = stat.S_IMODE((a2 / "bin" / tool).stat().st_mode)
        assert mode == 0o755
        if impl == "c":  # the compiled fast path, with the sh scripts next to it
            assert (a2 / "bin" / tool).read_bytes()[:4] == b"\x7fELF"
            script = a2 / "bin" / f"{tool}.sh"
            assert stat.S_IMODE(script.stat().st_mode) == 0o755
            assert script.read_text().startswith("#!/bin/sh\n")
        else:
            assert (a2 / "bin" / tool).read_text().startswith("#!/bin/sh\n")
            assert not (a2 / "bin" / f"{tool}.sh").exists()
    ndir = a2 / "nodes" / "a2n0"
    for rel in ("state.json", "etc/hccn.conf", "render/dev0.sh", "render/dev0.fp", "render/busy"):
        assert stat.S_IMODE((ndir / rel).stat().st_mode) & 0o666 == 0o666, rel
    for rel in ("", "etc", "render"):
        assert stat.S_IMODE((ndir / rel).stat().st_mode) == 0o777, rel
    json.loads((ndir / "state.json").read_text())
    assert (a2 / "addr" / "10.0.0.11" / "a2n0@0").exists()
    assert (a2 / "addr" / "10.7.0.12" / "a2n1@7").exists()


def test_save_load_roundtrip_and_hccn_conf(a2: Path) -> None:
    ndir = a2 / "nodes" / "a2n1"
    st = load_state(ndir)
    assert st == build_states(A2_NODES, "a2")["a2n1"]
    conf = (ndir / "etc" / "hccn.conf").read_text().splitlines()
    assert conf[:6] == [
        "address_0=10.0.0.12",
        "netmask_0=255.255.0.0",
        "netdetect_0=10.0.0.1",
        "gateway_0=10.0.0.1",
        "send_arp_status_0=1",
        "tls_enable_0=0",
    ]
    assert len(conf) == 8 * 6
    st.device(2).tls_switch = 1
    save_state(ndir, st)
    assert load_state(ndir).device(2).tls_switch == 1
    assert "tls_enable_2=1" in (ndir / "etc" / "hccn.conf").read_text().splitlines()
    assert ok(a2, "a2n1", "hccn_tool -i 2 -tls -g")[0].startswith("dev_id:2, tls switch[1]")


# ---------------------------------------------------------------------------------------
# hccn_tool: healthy outputs


def test_hccn_basic_gets_a2(a2: Path) -> None:
    assert ok(a2, "a2n0", "hccn_tool -i 0 -link -g") == ["link status: UP"]
    assert ok(a2, "a2n0", "hccn_tool -i 0 -net_health -g") == ["net health status: Success"]
    assert ok(a2, "a2n0", "hccn_tool -i 5 -netdetect -g") == ["netdetect address: 10.5.0.1"]
    assert ok(a2, "a2n0", "hccn_tool -i 5 -gateway -g") == ["default gateway:10.5.0.1, Iface:eth5"]
    assert ok(a2, "a2n1", "hccn_tool -i 7 -ip -g") == ["ipaddr:10.7.0.12", "netmask:255.255.0.0"]


def test_hccn_basic_gets_a3(a3: Path) -> None:
    assert ok(a3, "a3n1", "hccn_tool -i 15 -link -g") == ["link status: UP"]
    assert ok(a3, "a3n1", "hccn_tool -i 15 -ip -g") == ["ipaddr:10.15.0.12", "netmask:255.255.0.0"]
    assert ok(a3, "a3n1", "hccn_tool -i 13 -vnic -g") == [
        "vnic link status: UP",
        "vnic ipaddr: 192.1.3.186",
        "vnic netmask: 255.255.255.0",
    ]
    assert ok(a3, "a3n0", "hccn_tool -i 0 -vnic -g")[1] == "vnic ipaddr: 192.0.2.199"


def test_vnic_not_supported_on_a2(a2: Path) -> None:
    p = run(a2, "a2n0", "hccn_tool -i 0 -vnic -g")
    assert (p.returncode, p.stdout) == (13, "The command is not supported on this product.\n")


def test_lldp(a2: Path, a3: Path) -> None:
    for root, node, dev in ((a2, "a2n0", 3), (a3, "a3n1", 14)):
        lines = ok(root, node, f"hccn_tool -i {dev} -lldp -g")
        assert lines[0] == "Chassis ID TLV" and lines[-1] == "End of LLDPDU TLV"
        i = lines.index("Port ID TLV")
        assert lines[i + 1].startswith("\tIfname: 400GE1/")
        assert ":" in lines[i + 1].split("400GE1/", 1)[1]
        assert lines[lines.index("System Name TLV") + 1] == "\troce-leaf-01"
        assert any(line.startswith("\tIPv4: ") for line in lines)
    # Ifnames are distinct per device of a node
    names = {ok(a3, "a3n0", f"hccn_tool -i {d} -lldp -g")[3] for d in range(16)}
    assert len(names) == 16


def test_tls_get(a3: Path) -> None:
    lines = ok(a3, "a3n0", "hccn_tool -i 9 -tls -g")
    assert lines[0] == (
        "dev_id:9, tls switch[0](0:disable, 1:enable), tls preconfigured[1](0:non-preset, 1:preset), "
        "tls alarm time threshold[60]days"
    )
    assert lines[1] == "dev_id:9, [pub cert] info:"
    assert lines[2] == "         issuer[/C=CN/ST=GD/O=HUAWEI/OU=2012/CN=2_1thCA]"
    assert lines[3] == "         start_time[Wed Feb 19 03:19:21 2020 GMT]"
    assert lines[5] == "         tls expiration status[0](0:normal, 1:near expiration, 2:has expired)"
    assert "dev_id:9, [ca1 cert] info:" in lines and "dev_id:9, [ca2 cert] info:" in lines
    assert sum("switch" in line for line in lines) == 1


def test_optical(a2: Path) -> None:
    lines = ok(a2, "a2n0", "hccn_tool -i 1 -optical -g")
    assert lines[:2] == ["optical info:", "present              : present"]
    assert any(line.startswith("Tx Power0            : ") and line.endswith(" mW") for line in lines)
    assert any(line.startswith("Rx Power3            : ") for line in lines)


@pytest.mark.parametrize("dev", ["8", "99", "-1", "x", ""])
def test_invalid_device_id_a2(a2: Path, dev: str) -> None:
    p = run(a2, "a2n0", f"hccn_tool -i '{dev}' -link -g")
    assert p.returncode != 0 and p.stdout == "" and p.stderr == "Get invalid device id.\n"


def test_invalid_device_id_a3(a3: Path) -> None:
    p = run(a3, "a3n0", "hccn_tool -i 16 -ip -g")
    assert (p.returncode != 0, p.stderr) == (True, "Get invalid device id.\n")
    assert ok(a3, "a3n0", "hccn_tool -i 15 -link -g") == ["link status: UP"]


def test_malformed_commands(a2: Path) -> None:
    for cmd in ("hccn_tool -i 0 -link", "hccn_tool -i 0 -link -g extra", "hccn_tool -i 0 -bogus -g",
                "hccn_tool -i 0 -ping -g", "hccn_tool -i 0 -ping -g address 10.0.0.12 pkt 70000",
                "hccn_tool -i 0 -tls -s enable 2"):
        p = run(a2, "a2n0", cmd)
        assert p.returncode != 0 and p.stderr == FAILED + "\n", cmd
    assert run(a2, "a2n0", "hccn_tool").returncode != 0


# ---------------------------------------------------------------------------------------
# RoCE ping


def assert_ping_ok(p: subprocess.CompletedProcess[str], dev: int, target: str) -> None:
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and p.stderr == "", p
    assert lines[0] == f"device {dev} PING {target}"
    assert len(lines) == 5
    for seq in range(3):
        assert lines[1 + seq].startswith(f"recv seq={seq},time=") and lines[1 + seq].endswith("ms")
        float(lines[1 + seq].split("time=")[1][:-2])
    assert lines[4] == "3 packets transmitted, 3 received, 0.00% packet loss"


def assert_ping_fails(p: subprocess.CompletedProcess[str], dev: int, target: str) -> None:
    assert p.returncode == 1, p
    assert p.stdout.splitlines() == [
        f"device {dev} PING {target}",
        "recv time out seq=0",
        "recv time out seq=1",
        "recv time out seq=2",
        "3 packets transmitted, 0 received, 100.00% packet loss",
    ]
    assert p.stderr == FAILED + "\n"


def ping(root: Path, node: str, dev: int, target: str, extra: str = "") -> subprocess.CompletedProcess[str]:
    return run(root, node, f"hccn_tool -i {dev} -ping -g address {target}{extra}")


def test_ping_healthy_a2(a2: Path) -> None:
    target = roce_ip(a2, "a2n1", 4)
    assert_ping_ok(ping(a2, "a2n0", 4, target), 4, target)
    assert_ping_ok(ping(a2, "a2n0", 4, target, " pkt 1024"), 4, target)
    back = roce_ip(a2, "a2n0", 4)
    assert_ping_ok(ping(a2, "a2n1", 4, back), 4, back)
    # same node, other device: RoCE through the switch works on A2
    assert_ping_ok(ping(a2, "a2n0", 0, roce_ip(a2, "a2n0", 1)), 0, roce_ip(a2, "a2n0", 1))


def test_ping_unknown_target_fails(a2: Path) -> None:
    assert_ping_fails(ping(a2, "a2n0", 0, "10.0.9.9"), 0, "10.0.9.9")
    assert_ping_fails(ping(a2, "a2n0", 0, "not-an-ip"), 0, "not-an-ip")


def test_ping_a3_cross_node_and_die_pair(a3: Path) -> None:
    t = roce_ip(a3, "a3n1", 6)
    assert_ping_ok(ping(a3, "a3n0", 6, t), 6, t)
    # the other die of the same NPU does not answer
    assert_ping_fails(ping(a3, "a3n0", 6, roce_ip(a3, "a3n0", 7)), 6, roce_ip(a3, "a3n0", 7))
    assert_ping_fails(ping(a3, "a3n0", 7, roce_ip(a3, "a3n0", 6)), 7, roce_ip(a3, "a3n0", 6))
    # another NPU of the same node does
    assert_ping_ok(ping(a3, "a3n0", 6, roce_ip(a3, "a3n0", 8)), 6, roce_ip(a3, "a3n0", 8))


# ---------------------------------------------------------------------------------------
# HCCS ping


def test_hccs_ping_a3(a3: Path) -> None:
    target = state(a3, "a3n1").device(3).vnic_ip
    lines = ok(a3, "a3n0", f"hccn_tool -i 0 -hccs_ping -g address {target}")
    assert lines[:2] == [f"device 0 PING {target}", ""]
    for seq in range(3):
        block = lines[2 + 3 * seq: 5 + 3 * seq]
        assert block[0] == "This pkt ping success!"
        assert block[1].startswith(f"recv seq {seq}, time = ") and block[1].endswith(
            "us, L1 plane check result = 0x0"
        )
        assert block[2] == ""
    assert lines[11] == "3 packets transmitted, 3 received, 0.00% packets loss"
    assert [line.split(" time ")[0] for line in lines[12:16]] == ["max", "min", "average", "TP95"]
    assert all(line.endswith("us") for line in lines[12:16])
    assert lines[16:] == ["Cmd executed successfully!"]
    five = ok(a3, "a3n0", f"hccn_tool -i 0 -hccs_ping -g address {target} pkt 1792 cnt 5")
    assert "5 packets transmitted, 5 received, 0.00% packets loss" in five


def test_hccs_ping_unknown_target_and_bad_args(a3: Path) -> None:
    lines = ok(a3, "a3n0", "hccn_tool -i 0 -hccs_ping -g address 192.7.2.199")
    assert lines[2] == "This pkt send fail!"
    assert "3 packets transmitted, 0 received, 100.00% packets loss" in lines
    for bad in ("address 10.0.0.12", "address 192.48.2.199", "address 192.1.2.199 cnt 0", "foo 1"):
        p = run(a3, "a3n0", f"hccn_tool -i 0 -hccs_ping -g {bad}")
        assert p.returncode == 1 and p.stderr == FAILED + "\n", bad


def test_hccs_ping_not_supported_on_a2(a2: Path) -> None:
    p = run(a2, "a2n0", "hccn_tool -i 0 -hccs_ping -g address 192.1.2.199")
    assert (p.returncode, p.stdout) == (13, "The command is not supported on this product.\n")


# ---------------------------------------------------------------------------------------
# faults


def test_fault_link_down(a2: Path) -> None:
    t1 = roce_ip(a2, "a2n1", 2)
    t0 = roce_ip(a2, "a2n0", 2)
    assert apply_fault(a2, "a2n1", "link-down", device=2) == ["a2n1"]
    assert ok(a2, "a2n1", "hccn_tool -i 2 -link -g") == ["link status: DOWN"]
    assert ok(a2, "a2n1", "hccn_tool -i 2 -net_health -g") == ["net health status: Fault"]
    assert ok(a2, "a2n1", "hccn_tool -i 3 -link -g") == ["link status: UP"]
    assert_ping_fails(ping(a2, "a2n0", 2, t1), 2, t1)  # to the down port
    assert_ping_fails(ping(a2, "a2n1", 2, t0), 2, t0)  # from the down port
    assert_ping_ok(ping(a2, "a2n0", 3, roce_ip(a2, "a2n1", 3)), 3, roce_ip(a2, "a2n1", 3))
    apply_fault(a2, "a2n0", "link-down")  # every device
    assert all(ok(a2, "a2n0", f"hccn_tool -i {d} -link -g") == ["link status: DOWN"] for d in range(8))
    assert state(a2, "a2n0").faults == ["link-down"]
    assert state(a2, "a2n1").faults == ["link-down@2"]


@pytest.mark.parametrize("status", NET_HEALTH_STATUSES)
def test_fault_net_health(a2: Path, status: str) -> None:
    apply_fault(a2, "a2n0", f"net-health:{status}", device=6)
    assert ok(a2, "a2n0", "hccn_tool -i 6 -net_health -g") == [f"net health status: {status}"]
    assert ok(a2, "a2n0", "hccn_tool -i 5 -net_health -g") == ["net health status: Success"]


def test_fault_net_health_case_insensitive(a3: Path) -> None:
    apply_fault(a3, "a3n0", "net-health:receive TIMEOUT")
    assert ok(a3, "a3n0", "hccn_tool -i 15 -net_health -g") == ["net health status: Receive timeout"]


def test_fault_tls_on_and_fix(a3: Path) -> None:
    apply_fault(a3, "a3n1", "tls-on", device=4)
    conf = a3 / "nodes" / "a3n1" / "etc" / "hccn.conf"
    assert ok(a3, "a3n1", "hccn_tool -i 4 -tls -g")[0].startswith("dev_id:4, tls switch[1](0:disable, 1:enable)")
    assert ok(a3, "a3n1", "hccn_tool -i 5 -tls -g")[0].startswith("dev_id:5, tls switch[0]")
    assert "tls_enable_4=1" in conf.read_text().splitlines()
    # the documented fix
    assert ok(a3, "a3n1", "hccn_tool -i 4 -tls -s enable 0") == ["Cmd executed successfully!"]
    assert ok(a3, "a3n1", "hccn_tool -i 4 -tls -g")[0].startswith("dev_id:4, tls switch[0]")
    assert state(a3, "a3n1").device(4).tls_switch == 0
    assert "tls_enable_4=0" in conf.read_text().splitlines()
    # a later save (e.g. another fault) keeps the value the tool wrote
    apply_fault(a3, "a3n1", "link-down", device=0)
    assert state(a3, "a3n1").device(4).tls_switch == 0
    assert "tls_enable_4=0" in conf.read_text().splitlines()


def test_tls_set_enable_persists(a2: Path) -> None:
    conf = a2 / "nodes" / "a2n0" / "etc" / "hccn.conf"
    assert ok(a2, "a2n0", "hccn_tool -i 3 -tls -s enable 1") == ["Cmd executed successfully!"]
    assert state(a2, "a2n0").device(3).tls_switch == 1
    lines = conf.read_text().splitlines()
    assert "tls_enable_3=1" in lines and "tls_enable_2=0" in lines
    assert ok(a2, "a2n0", "hccn_tool -i 3 -tls -g")[0].startswith("dev_id:3, tls switch[1]")
    json.loads((a2 / "nodes" / "a2n0" / "state.json").read_text())


def test_tls_set_concurrent(a3: Path) -> None:
    """`-tls -s` on all 16 devices at once (as a parallel fix would): nothing is lost."""
    apply_fault(a3, "a3n0", "tls-on")
    procs = [
        subprocess.Popen(["/bin/sh", "-c", f"hccn_tool -i {d} -tls -s enable 0"], env=env_for(a3, "a3n0"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for d in range(16)
    ]
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert (p.returncode, out, err) == (0, "Cmd executed successfully!\n", "")
    st = state(a3, "a3n0")
    assert [d.tls_switch for d in st.devices] == [0] * 16
    conf = (a3 / "nodes" / "a3n0" / "etc" / "hccn.conf").read_text().splitlines()
    assert [line for line in conf if line.startswith("tls_enable_")] == [f"tls_enable_{d}=0" for d in range(16)]
    assert not (a3 / "nodes" / "a3n0" / ".lock").exists()


def test_fault_no_cert(a2: Path) -> None:
    apply_fault(a2, "a2n0", "no-cert", device=1)
    p = run(a2, "a2n0", "hccn_tool -i 1 -tls -g")
    assert (p.returncode, p.stdout, p.stderr) == (14, "", "No certificate found, please set certs firstly!\n")


def test_fault_no_ip(a2: Path) -> None:
    ip = roce_ip(a2, "a2n1", 0)
    apply_fault(a2, "a2n1", "no-ip", device=0)
    p = run(a2, "a2n1", "hccn_tool -i 0 -ip -g")
    assert (p.returncode, p.stdout) == (13, "")
    assert p.stderr == "Get ipconf failed, because no ip was preset there!\n"
    assert_ping_fails(ping(a2, "a2n0", 0, ip), 0, ip)
    t = roce_ip(a2, "a2n0", 0)
    assert_ping_fails(ping(a2, "a2n1", 0, t), 0, t)  # a device without an IP cannot send
    # hccn.conf still holds the configured address
    assert f"address_0={ip}" in (a2 / "nodes" / "a2n1" / "etc" / "hccn.conf").read_text().splitlines()
    assert not (a2 / "addr" / ip).exists()


def test_fault_hccn_conf_drift(a3: Path) -> None:
    apply_fault(a3, "a3n0", "hccn-conf-drift", device=11)
    live = ok(a3, "a3n0", "hccn_tool -i 11 -ip -g")[0].split(":", 1)[1]
    conf = dict(
        line.split("=", 1) for line in (a3 / "nodes" / "a3n0" / "etc" / "hccn.conf").read_text().splitlines()
    )
    assert live == roce_ip(a3, "a3n0", 11)
    assert conf["address_11"] != live
    assert conf["address_10"] == roce_ip(a3, "a3n0", 10)
    # the conf drifts, the live data plane does not
    assert_ping_ok(ping(a3, "a3n1", 11, live), 11, live)


def test_fault_ping_loss(a2: Path) -> None:
    assert sorted(apply_fault(a2, "a2n0", "ping-loss:a2n1")) == ["a2n0", "a2n1"]
    for dev in (0, 5):
        t1, t0 = roce_ip(a2, "a2n1", dev), roce_ip(a2, "a2n0", dev)
        assert_ping_fails(ping(a2, "a2n0", dev, t1), dev, t1)
        assert_ping_fails(ping(a2, "a2n1", dev, t0), dev, t0)
    # within a node, pings still work
    assert_ping_ok(ping(a2, "a2n0", 0, roce_ip(a2, "a2n0", 3)), 0, roce_ip(a2, "a2n0", 3))
    assert state(a2, "a2n1").ping_loss == ["a2n0"]


def test_fault_ping_loss_hccs(a3: Path) -> None:
    apply_fault(a3, "a3n1", "ping-loss:a3n0")
    target = state(a3, "a3n0").device(2).vnic_ip
    lines = ok(a3, "a3n1", f"hccn_tool -i 2 -hccs_ping -g address {target}")
    assert "3 packets transmitted, 0 received, 100.00% packets loss" in lines


def test_fault_dup_ip(a2: Path) -> None:
    peer_ip = roce_ip(a2, "a2n1", 3)
    apply_fault(a2, "a2n0", "dup-ip:a2n1", device=3)
    assert ok(a2, "a2n0", "hccn_tool -i 3 -ip -g")[0] == f"ipaddr:{peer_ip}"
    assert ok(a2, "a2n1", "hccn_tool -i 3 -ip -g")[0] == f"ipaddr:{peer_ip}"
    assert f"address_3={peer_ip}" in (a2 / "nodes" / "a2n0" / "etc" / "hccn.conf").read_text().splitlines()
    assert sorted(p.name for p in (a2 / "addr" / peer_ip).iterdir()) == ["a2n0@3", "a2n1@3"]
    assert ok(a2, "a2n0", "hccn_tool -i 4 -ip -g")[0] == f"ipaddr:{roce_ip(a2, 'a2n0', 4)}"


def test_fault_busy(a2: Path) -> None:
    apply_fault(a2, "a2n0", "busy")
    for _ in range(3):
        p = run(a2, "a2n0", "hccn_tool -i 0 -link -g")
        assert (p.returncode, p.stdout, p.stderr) == (11, BUSY + "\n", "")
    assert ok(a2, "a2n0", "hccn_tool -i 0 -link -g") == ["link status: UP"]
    assert state(a2, "a2n0").busy == 0
    assert ok(a2, "a2n1", "hccn_tool -i 0 -link -g") == ["link status: UP"]  # other node unaffected


def test_fault_busy_n_counts_any_command(a3: Path) -> None:
    apply_fault(a3, "a3n1", "busy:2")
    assert state(a3, "a3n1").busy == 2
    assert run(a3, "a3n1", "hccn_tool -i 3 -ip -g").returncode == 11
    assert state(a3, "a3n1").busy == 1
    assert run(a3, "a3n1", "hccn_tool -i 9 -tls -s enable 1").returncode == 11
    assert ok(a3, "a3n1", "hccn_tool -i 9 -tls -s enable 1") == ["Cmd executed successfully!"]
    assert ok(a3, "a3n1", "npu-smi info -t spod-info -i 0 -c 0")  # npu-smi is never busy


def test_fault_busy_concurrent(a2: Path) -> None:
    apply_fault(a2, "a2n0", "busy:5")
    with ThreadPoolExecutor(8) as ex:
        rcs = list(ex.map(lambda d: run(a2, "a2n0", f"hccn_tool -i {d % 8} -link -g").returncode, range(12)))
    assert sorted(rcs) == [0] * 7 + [11] * 5


def test_fault_health(a2: Path, a3: Path) -> None:
    apply_fault(a2, "a2n0", "health:Critical", device=5)
    lines = ok(a2, "a2n0", "npu-smi info")
    row = next(line for line in lines if line.startswith("| 5     910B3"))
    assert row.split("|")[2].strip() == "Critical"
    assert ok(a2, "a2n0", "npu-smi info -t health -i 5")[0] == "\tHealth Status                  : Critical"
    assert ok(a2, "a2n0", "npu-smi info -t health -i 4") == [
        "\tHealth Status                  : OK",
        "\tError Code                     : NA",
        "\tError Information              : NA",
    ]
    apply_fault(a3, "a3n0", "health:Warning", device=3)  # npu 1, die 1
    assert ok(a3, "a3n0", "npu-smi info -t health -i 1 -c 1")[0].endswith(": Warning")
    assert ok(a3, "a3n0", "npu-smi info -t health -i 1 -c 0")[0].endswith(": OK")
    assert ok(a3, "a3n0", "npu-smi info -t health -i 1")[0].endswith(": Warning")
    rows = [line for line in ok(a3, "a3n0", "npu-smi info") if line.startswith("| 1     Ascend910")]
    assert [r.split("|")[2].strip() for r in rows] == ["OK", "Warning"]


def test_fault_hbm_held(a2: Path, a3: Path) -> None:
    apply_fault(a2, "a2n1", "hbm-held", device=6)
    lines = ok(a2, "a2n1", "npu-smi info")
    proc = [line for line in lines if "VLLM::EngineCore" in line]
    assert len(proc) == 1
    cells = [c.strip() for c in proc[0].split("|")[1:-1]]
    assert cells[0].split() == ["6", "0"] and cells[2] == "VLLM::EngineCore" and cells[3] == "60000"
    assert int(cells[1]) > 0
    i = lines.index(next(line for line in lines if line.startswith("| 6     910B3")))
    m = re.search(r"(\d+)\s*/\s*(\d+)\s*$", lines[i + 1].split("|")[3])
    assert m
    used, total = m.groups()
    assert 60000 < int(used) <= 65536 and total == "65536"
    assert "| No running processes found in NPU 5" in "\n".join(lines)
    apply_fault(a3, "a3n0", "hbm-held")  # every die
    procs = [line for line in ok(a3, "a3n0", "npu-smi info") if "VLLM::EngineCore" in line]
    assert len(procs) == 16
    assert "No running processes" not in "\n".join(ok(a3, "a3n0", "npu-smi info"))


def test_fault_no_netdetect_no_gateway(a2: Path) -> None:
    apply_fault(a2, "a2n0", "no-netdetect", device=2)
    p = run(a2, "a2n0", "hccn_tool -i 2 -netdetect -g")
    assert (p.returncode, p.stdout, p.stderr) == (1, "", FAILED + "\n")
    assert ok(a2, "a2n0", "hccn_tool -i 2 -net_health -g") == ["net health status: Detect ip set"]
    assert "netdetect_2=" not in (a2 / "nodes" / "a2n0" / "etc" / "hccn.conf").read_text()
    apply_fault(a2, "a2n0", "no-gateway", device=2)
    p = run(a2, "a2n0", "hccn_tool -i 2 -gateway -g")
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr == "Get gateway failed, because no gateway was preset there!\n"


def test_fault_no_lldp_no_optical(a3: Path) -> None:
    apply_fault(a3, "a3n0", "no-lldp", device=1)
    p = run(a3, "a3n0", "hccn_tool -i 1 -lldp -g")
    assert (p.returncode, p.stdout) == (0, "")
    apply_fault(a3, "a3n0", "no-optical", device=2)
    assert ok(a3, "a3n0", "hccn_tool -i 2 -optical -g") == ["optical info:", "present              : not present"]
    assert ok(a3, "a3n0", "hccn_tool -i 2 -link -g") == ["link status: DOWN"]


def test_fault_vnic_down(a3: Path) -> None:
    apply_fault(a3, "a3n1", "vnic-down", device=5)
    assert ok(a3, "a3n1", "hccn_tool -i 5 -vnic -g")[0] == "vnic link status: DOWN"
    target = state(a3, "a3n1").device(5).vnic_ip
    lines = ok(a3, "a3n0", f"hccn_tool -i 5 -hccs_ping -g address {target}")
    assert "3 packets transmitted, 0 received, 100.00% packets loss" in lines


def test_fault_vnic_down_needs_a3(a2: Path) -> None:
    with pytest.raises(ValueError, match="A3"):
        apply_fault(a2, "a2n0", "vnic-down")


def test_fault_errors(a2: Path) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        apply_fault(a2, "a2n0", "melt")
    with pytest.raises(ValueError, match="out of range"):
        apply_fault(a2, "a2n0", "link-down", device=8)
    with pytest.raises(ValueError, match="out of range"):
        apply_fault(a2, "a2n0", "link-down", device=-1)
    with pytest.raises(ValueError, match="no simulated node"):
        apply_fault(a2, "nope", "link-down")
    with pytest.raises(ValueError, match="no simulated node"):
        apply_fault(a2, "a2n0", "ping-loss:nope")
    with pytest.raises(ValueError, match="another node"):
        apply_fault(a2, "a2n0", "dup-ip:a2n0")
    with pytest.raises(ValueError, match="whole node"):
        apply_fault(a2, "a2n0", "busy", device=0)
    with pytest.raises(ValueError, match="SSH"):
        apply_fault(a2, "a2n0", "unreachable")
    with pytest.raises(ValueError, match="health status"):
        apply_fault(a2, "a2n0", "health:Sick")
    assert state(a2, "a2n0") == build_states(A2_NODES, "a2")["a2n0"]  # nothing changed


def test_parse_fault_spec() -> None:
    assert parse_fault_spec("link-down") == ("link-down", None)
    assert parse_fault_spec("busy") == ("busy", None)
    assert parse_fault_spec("busy:5") == ("busy", "5")
    assert parse_fault_spec("net-health:Receive timeout") == ("net-health", "Receive timeout")
    assert parse_fault_spec("net-health:socket failed") == ("net-health", "Socket failed")
    assert parse_fault_spec("ping-loss:d1") == ("ping-loss", "d1")
    assert parse_fault_spec("health:critical") == ("health", "Critical")
    assert parse_fault_spec("auth-fail") == ("auth-fail", None)
    for bad in ("nope", "net-health", "link-down:3", "busy:0", "busy:x", "ping-loss:", "unreachable:1"):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)
    assert SSH_FAULTS == {"unreachable", "auth-fail", "host-key-changed"}
    assert not SSH_FAULTS & set(TOOL_FAULTS)
    for name in ("link-down", "net-health", "tls-on", "no-ip", "hccn-conf-drift", "ping-loss", "dup-ip",
                 "busy", "health", "hbm-held"):
        assert name in TOOL_FAULTS


# ---------------------------------------------------------------------------------------
# npu-smi

A2_FIXTURE = [  # vllm-ascend #6512 (910B3, 25.2.0)
    "+------------------------------------------------------------------------------------------------+",
    "| npu-smi 25.2.0                   Version: 25.2.0                                               |",
    "+---------------------------+---------------+----------------------------------------------------+",
    "| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|",
    "| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |",
    "+===========================+===============+====================================================+",
    "| 0     910B3               | OK            | 97.9        34                0    / 0             |",
    "| 0                         | 0000:C1:00.0  | 0           0    / 0          3408 / 65536         |",
    "+===========================+===============+====================================================+",
]
A2_FIXTURE_NPU2 = [
    "| 2     910B3               | OK            | 92.3        32                0    / 0             |",
    "| 0                         | 0000:81:00.0  | 0           0    / 0          41052/ 65536         |",
]
PROC_FIXTURE = [
    "+---------------------------+---------------+----------------------------------------------------+",
    "| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |",
    "+===========================+===============+====================================================+",
    "| No running processes found in NPU 0                                                            |",
    "+===========================+===============+====================================================+",
    "| No running processes found in NPU 1                                                            |",
    "+===========================+===============+====================================================+",
    "| 2       0                 | 1333928       |                          | 37709                   |",
    "+===========================+===============+====================================================+",
]
A3_FIXTURE = [  # vllm-ascend #960 (Ascend910, 24.1.rc3.5)
    "+------------------------------------------------------------------------------------------------+",
    "| npu-smi 24.1.rc3.5               Version: 24.1.rc3.5                                           |",
    "+---------------------------+---------------+----------------------------------------------------+",
    "| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|",
    "| Chip  Phy-ID              | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |",
    "+===========================+===============+====================================================+",
    "| 0     Ascend910           | OK            | 180.2       38                0    / 0             |",
    "| 0     0                   | 0000:9D:00.0  | 0           0    / 0          3430 / 65536         |",
    "+------------------------------------------------------------------------------------------------+",
    "| 0     Ascend910           | OK            | -           37                0    / 0             |",
    "| 1     1                   | 0000:9F:00.0  | 0           0    / 0          3188 / 65536         |",
    "+===========================+===============+====================================================+",
]
A3_FIXTURE_NPU5 = [
    "| 5     Ascend910           | OK            | 178.4       37                0    / 0             |",
    "| 0     10                  | 0000:89:00.0  | 0           0    / 0          3415 / 65536         |",
]


def _contains_run(lines: list[str], run_: list[str]) -> bool:
    n = len(run_)
    return any(lines[i: i + n] == run_ for i in range(len(lines) - n + 1))


def test_npu_smi_info_a2_matches_fixture(a2: Path) -> None:
    def setup(st: NodeState) -> None:
        d0, d2 = st.device(0), st.device(2)
        d0.power_w, d0.temp_c, d0.hbm_used_mb = 97.9, 34, 3408
        d2.power_w, d2.temp_c, d2.hbm_used_mb = 92.3, 32, 41052
        d2.processes.append(Process(pid=1333928, name="", memory_mb=37709))

    edit(a2, "a2n0", setup)
    lines = ok(a2, "a2n0", "npu-smi info")
    assert lines[: len(A2_FIXTURE)] == A2_FIXTURE
    assert _contains_run(lines, A2_FIXTURE_NPU2)
    assert _contains_run(lines, PROC_FIXTURE)
    assert lines[-1] == "+===========================+===============+====================================================+"
    assert all(len(line) == 98 for line in lines)
    assert sum(line.startswith("| No running processes found in NPU ") for line in lines) == 7


def test_npu_smi_info_a3_matches_fixture(a3: Path) -> None:
    def setup(st: NodeState) -> None:
        st.npu_smi_version = st.driver_version = "24.1.rc3.5"
        for dev, (power, temp, hbm) in {0: (180.2, 38, 3430), 1: (None, 37, 3188), 10: (178.4, 37, 3415)}.items():
            d = st.device(dev)
            d.power_w, d.temp_c, d.hbm_used_mb = power, temp, hbm

    edit(a3, "a3n0", setup)
    lines = ok(a3, "a3n0", "npu-smi info")
    assert lines[: len(A3_FIXTURE)] == A3_FIXTURE
    assert _contains_run(lines, A3_FIXTURE_NPU5)
    assert all(len(line) == 98 for line in lines)
    assert sum(line.startswith("| No running processes found in NPU ") for line in lines) == 8
    rows = [line for line in lines if "Ascend910" in line]
    assert len(rows) == 16
    assert all(r.split("|")[3].split()[0] == "-" for r in rows[1::2])  # die 1 power


def test_npu_smi_process_rows_a3(a3: Path) -> None:
    def setup(st: NodeState) -> None:
        st.device(12).processes.append(Process(pid=3085960, name="", memory_mb=47426))
        st.device(13).processes.append(Process(pid=3085961, name="", memory_mb=47416))

    edit(a3, "a3n0", setup)
    lines = ok(a3, "a3n0", "npu-smi info")
    assert _contains_run(lines, [
        "| 6       0                 | 3085960       |                          | 47426                   |",
        "| 6       1                 | 3085961       |                          | 47416                   |",
        "+===========================+===============+====================================================+",
    ])


def test_npu_smi_list(a2: Path, a3: Path) -> None:
    a2_lines = ok(a2, "a2n0", "npu-smi info -l")
    assert a2_lines[:4] == [
        "\tTotal Count                    : 8",
        "",
        "\tNPU ID                         : 0",
        "\tChip Count                     : 1",
    ]
    assert len(a2_lines) == 1 + 8 * 3
    assert ok(a3, "a3n0", "npu-smi info -l")[3] == "\tChip Count                     : 2"


def test_npu_smi_map(a2: Path, a3: Path) -> None:
    assert ok(a2, "a2n0", "npu-smi info -m")[:4] == [
        "\tNPU ID                         Chip ID                        Chip Logic ID                  Chip Name",
        "\t0                              0                              0                              Ascend 910B3",
        "\t0                              1                              -                              Mcu",
        "\t1                              0                              1                              Ascend 910B3",
    ]
    lines = ok(a3, "a3n0", "npu-smi info -m")
    assert lines[:5] == [
        "\tNPU ID                         Chip ID                        Chip Logic ID                  "
        "Chip Phy-ID                    Chip Name",
        "\t0                              0                              0                              "
        "0                              Ascend910",
        "\t0                              1                              1                              "
        "1                              Ascend910",
        "\t0                              2                              -                              "
        "-                              Mcu",
        "\t1                              0                              2                              "
        "2                              Ascend910",
    ]
    assert len(lines) == 1 + 8 * 3


def test_npu_smi_board(a2: Path, a3: Path) -> None:
    lines = ok(a2, "a2n0", "npu-smi info -t board -i 2")
    assert lines[0] == "\tNPU ID                         : 2"
    assert "\tSoftware Version               : 25.2.0" in lines
    assert "\tFirmware Version               : 7.7.0.6.236" in lines
    assert "\tPCIe Bus Info                  : 0000:81:00.0" in lines
    assert "\tChip Count                     : 1" in lines
    chip = ok(a3, "a3n1", "npu-smi info -t board -i 7 -c 1")
    assert chip[:2] == ["\tNPU ID                         : 7", "\tChip ID                        : 1"]
    assert "\tPCIe Bus Info                  : 0000:83:00.0" in chip
    assert "\tFirmware Version               : 7.7.0.6.236" in chip


def test_npu_smi_spod_info(a3: Path, a2: Path) -> None:
    assert ok(a3, "a3n1", "npu-smi info -t spod-info -i 3 -c 1") == [
        f"\tSDID                           : {(1 << 22) | (3 << 18) | (1 << 16) | 7}",
        "\tSuper Pod Size                 : 384",
        "\tSuper Pod ID                   : 0",
        "\tServer Index                   : 1",
    ]
    p = run(a2, "a2n0", "npu-smi info -t spod-info -i 0 -c 0")
    assert p.returncode != 0 and "does not support" in p.stdout + p.stderr


def test_npu_smi_invalid_ids(a2: Path, a3: Path) -> None:
    for root, node, cmd in ((a2, "a2n0", "npu-smi info -t board -i 8"),
                            (a3, "a3n0", "npu-smi info -t spod-info -i 8 -c 0"),
                            (a3, "a3n0", "npu-smi info -t spod-info -i 0 -c 2"),
                            (a2, "a2n0", "npu-smi info -t health -i 0 -c 1"),
                            (a2, "a2n0", "npu-smi info -t bogus -i 0"),
                            (a2, "a2n0", "npu-smi foo")):
        p = run(root, node, cmd)
        assert p.returncode != 0 and p.stdout == "" and p.stderr, cmd


# ---------------------------------------------------------------------------------------
# environment, other users, speed


def test_tools_need_sim_env(a2: Path) -> None:
    env = env_for(a2, "a2n0")
    del env["DEPLOY_SIM_NODE"]
    p = subprocess.run(["/bin/sh", "-c", "hccn_tool -i 0 -link -g"], env=env, capture_output=True, text=True)
    assert p.returncode == 127 and "DEPLOY_SIM_NODE" in p.stderr


def test_root_fallback_without_sim_root(a2: Path) -> None:
    env = env_for(a2, "a2n0")
    del env["DEPLOY_SIM_ROOT"]
    target = roce_ip(a2, "a2n1", 0)
    p = subprocess.run(["/bin/sh", "-c", f"hccn_tool -i 0 -ping -g address {target}"], env=env,
                       capture_output=True, text=True)
    assert_ping_ok(p, 0, target)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_other_user_can_write(tmp_path: Path, impl: str) -> None:
    """The SSH user may differ from the creator: the write paths must still work."""
    root = Path("/tmp") / f"simuser-{os.getpid()}-{time.monotonic_ns()}"
    root.mkdir(mode=0o755)
    try:
        make_cluster(root, A2_NODES, "a2", impl)
        apply_fault(root, "a2n0", "busy:1")
        env = env_for(root, "a2n0")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/sh", "-c",
               "umask 077; hccn_tool -i 0 -link -g; hccn_tool -i 0 -tls -s enable 1"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        assert p.stdout.splitlines() == [BUSY, "Cmd executed successfully!"], p.stderr
        st = load_state(root / "nodes" / "a2n0")
        assert (st.busy, st.device(0).tls_switch) == (0, 1)
        p = subprocess.run(cmd[:-1] + ["hccn_tool -i 0 -tls -g"], env=env, capture_output=True, text=True, timeout=30)
        assert p.stdout.startswith("dev_id:0, tls switch[1]"), p.stderr
        apply_fault(root, "a2n0", "link-down", device=1)  # the creator can still save
        assert load_state(root / "nodes" / "a2n0").device(0).tls_switch == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# the compiled fast path (orchestrator/sim/fastpath.c) against the sh reference

needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the fast path is not installed")
GETS = ("link", "net_health", "netdetect", "gateway", "ip", "vnic", "lldp", "tls", "optical")
CMP_NODES = [("n0", "127.0.13.1"), ("n1", "127.0.13.2"), ("n2", "127.0.13.3"), ("n3", "127.0.13.4")]
CMP_FAULTS = [
    "link-down@1", "net-health:Unreachable@2", "tls-on@3", "no-ip@4", "hccn-conf-drift@5", "dup-ip:n2@6",
    "health:Critical@0", "hbm-held@7", "no-netdetect@0", "no-gateway@0", "no-lldp@1", "no-optical@2",
    "no-cert@3", "ping-loss:n2",
]
CMP_FAULTS_A3 = ["vnic-down@5", "health:Warning@3", "link-down@9", "no-ip@12", "vnic-down@13"]


def run_both(root: Path, node: str, cmds: list[str], env: dict[str, str] | None = None) -> list[tuple[bytes, ...]]:
    """Run each command (``{hccn}`` / ``{smi}`` placeholders) with the compiled tools and with
    the sh scripts; assert stdout, stderr and rc are byte-identical; return the C results."""
    results = {}
    for impl, suffix in (("c", ""), ("sh", ".sh")):
        out = root / f"cmp-{node}-{impl}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        script = "\n".join(
            f"{cmd.format(hccn='hccn_tool' + suffix, smi='npu-smi' + suffix)} >{out}/{i}.o 2>{out}/{i}.e; "
            f"echo $? >{out}/{i}.r"
            for i, cmd in enumerate(cmds)
        )
        (out / "script").write_text(script + "\n")  # too long for one argv string on A3
        p = subprocess.run(["/bin/sh", str(out / "script")], env=env or env_for(root, node), capture_output=True,
                           timeout=600)
        assert (p.returncode, p.stderr) == (0, b"")
        results[impl] = [tuple((out / f"{i}.{x}").read_bytes() for x in "oer") for i in range(len(cmds))]
    for cmd, c, sh in zip(cmds, results["c"], results["sh"]):
        assert c == sh, cmd
    return results["c"]


def _compare_commands(root: Path, soc: str, node: str) -> list[str]:
    states = {n: state(root, n) for n, _ in CMP_NODES}
    me = states[node]
    devs = [d.id for d in me.devices]
    cmds = [f"{{hccn}} -i {d} -{k} -g" for d in devs for k in GETS]
    # RoCE ping: every own device, and the same / neighbouring device of every other node
    for s in devs:
        targets = {d.ip or d.conf_address for d in me.devices}
        targets |= {d.ip or d.conf_address for n, st in states.items() if n != node
                    for d in st.devices if d.id in (s, s ^ 1)}
        cmds += [f"{{hccn}} -i {s} -ping -g address {t}" for t in sorted(t for t in targets if t)]
    cmds += [f"{{hccn}} -i {devs[-1]} -ping -g address {states['n3'].device(0).ip} pkt {n}"
             for n in ("0", "1024", "65507", "65508", "070000", "x", "")]
    cmds += [f"{{hccn}} -i 0 -ping -g address {t}" for t in ("10.0.9.9", "not-an-ip", "10.0..1", ".", "..",
                                                               "10.0.0.11.", "''")]
    cmds += ["{hccn} -i 0 -ping -g", "{hccn} -i 0 -ping -g address", "{hccn} -i 0 -ping -s address 10.0.0.11",
             "{hccn} -i 0 -ping -g address 10.0.0.11 pkt 1024 extra", "{hccn} -i 0 -ping -g addr 10.0.0.11"]
    # HCCS ping: super pod scoping (n3 is in another pod and has n0's vNIC addresses)
    if soc == "a3":
        for s in devs:
            targets = {states[n].device(x).vnic_ip for n in states for x in (s, s ^ 1)}
            cmds += [f"{{hccn}} -i {s} -hccs_ping -g address {t}" for t in sorted(t for t in targets if t)]
    t = states["n1"].device(3).vnic_ip
    for opts in ("pkt 1792 cnt 5", "cnt 1", "cnt 1000", "interval 10 timeout 20000",
                 "timeout 1 interval 0 cnt 7 pkt 3000", "cnt 0", "cnt 1001", "cnt 01", "pkt 1791", "pkt 3001",
                 "interval 11", "timeout 0", "timeout 20001", "cnt 2.0", "foo 1", "cnt", ""):
        cmds.append(f"{{hccn}} -i 0 -hccs_ping -g address {t} {opts}")
    cmds += [f"{{hccn}} -i 0 -hccs_ping -g address {a}" for a in (
        "192.7.2.199", "10.0.0.12", "192.48.2.199", "192.047.2.199", "192.1.2", "192.1.2.199.5", "192..2.199",
        "192.1.2.x", "192.1000.2.199")]
    cmds += ["{hccn} -i 0 -hccs_ping -g", "{hccn} -i 0 -hccs_ping -s address 192.1.2.199",
             f"{{hccn}} -i 0 -hccs_ping -g cnt 2 address {t}"]
    # malformed and other commands (the fast path hands them to sh)
    cmds += ["{hccn}", "{hccn} -i", "{hccn} -i 0", "{hccn} -i 0 -link", "{hccn} -i 007 -link -g",
             "{hccn} -i 00 -ip -g", f"{{hccn}} -i {len(devs)} -link -g", "{hccn} -i 99 -link -g",
             "{hccn} -i x -link -g", "{hccn} -i '' -link -g", "{hccn} -i -1 -link -g", "{hccn} -x 0 -link -g",
             "{hccn} -i 0 -bogus -g", "{hccn} -i 0 -link -g extra", "{hccn} -i 0 -link -s", "{hccn} -i 0 -node -g",
             "{hccn} -i 0 -hns -g", "{hccn} -i 0 link -g", "{hccn} -i 0 -tls -s enable 2", "{hccn} -i 0 -tls -s"]
    # npu-smi
    cmds += ["{smi} info", "{smi} info -l", "{smi} info -m"]
    for npu in range(9):
        for t in ("board", "health", "spod-info"):
            cmds.append(f"{{smi}} info -t {t} -i {npu}")
            cmds += [f"{{smi}} info -t {t} -i {npu} -c {c}" for c in range(3)]
    cmds += ["{smi}", "{smi} foo", "{smi} info -x", "{smi} info -l -m", "{smi} info -t", "{smi} info -t board",
             "{smi} info -t bogus -i 0", "{smi} info -t board -i 01", "{smi} info -t board -i 0 -c ''",
             "{smi} info -i 1 -t health", "{smi} info -t board -i 0 -t health -c 0", "{smi} info -t board -i x",
             "{smi} info -t board -i 0 -c x", "{smi} info -t board -i 0 -c"]
    return cmds


@needs_cc
@pytest.mark.parametrize("soc", ["a2", "a3"])
def test_fastpath_matches_sh_byte_for_byte(tmp_path: Path, soc: str) -> None:
    """Every command the fast path answers (and many it hands over), healthy and faulted nodes."""
    root = make_cluster(tmp_path / soc, CMP_NODES, soc, "c", super_pod_size=24)  # n3: another super pod
    for spec in CMP_FAULTS + (CMP_FAULTS_A3 if soc == "a3" else []):
        fault, _, dev = spec.partition("@")
        apply_fault(root, "n1", fault, device=int(dev) if dev else None)
    edit(root, "n1", lambda st: st.ping_loss.append("n3"))  # one-sided: only n1's noping/ marker
    for node in ("n0", "n1"):  # healthy, faulted
        cmds = _compare_commands(root, soc, node)
        results = run_both(root, node, cmds)
        rcs = [int(r) for _o, _e, r in results]
        assert rcs.count(0) > len(cmds) // 3 and rcs.count(1) > 20, (node, rcs.count(0), rcs.count(1))
    # n3: the other super pod, and the peer side of the one-sided ping-loss
    run_both(root, "n3", [c for c in _compare_commands(root, soc, "n3") if "ping -g" in c])
    # without DEPLOY_SIM_ROOT the tools derive DIR from DEPLOY_SIM_NODE
    env = env_for(root, "n1")
    del env["DEPLOY_SIM_ROOT"]
    run_both(root, "n1", [f"{{hccn}} -i {d} -ping -g address {state(root, 'n0').device(d).ip}" for d in range(8)],
             env=env)


@needs_cc
def test_fastpath_answers_hot_calls_itself(tmp_path: Path) -> None:
    """With the sh scripts gone, the hot calls still work; everything else fails to exec them."""
    root = make_cluster(tmp_path / "a3", A3_NODES, "a3", "c")
    hot = ["hccn_tool -i 15 -link -g", "hccn_tool -i 3 -lldp -g", "hccn_tool -i 03 -tls -g",
           f"hccn_tool -i 3 -ping -g address {roce_ip(root, 'a3n1', 3)} pkt 1024",
           f"hccn_tool -i 3 -hccs_ping -g address {state(root, 'a3n1').device(3).vnic_ip} cnt 2",
           "npu-smi info", "npu-smi info -l", "npu-smi info -m", "npu-smi info -t board -i 7",
           "npu-smi info -t health -i 7 -c 1", "npu-smi info -t spod-info -i 0 -c 0"]
    expected = [run(root, "a3n0", cmd) for cmd in hot]
    for tool in ("hccn_tool", "npu-smi"):
        (root / "bin" / f"{tool}.sh").rename(root / f"{tool}.sh")
    for cmd, want in zip(hot, expected):
        p = run(root, "a3n0", cmd)
        assert (p.returncode, p.stdout, p.stderr) == (want.returncode, want.stdout, want.stderr), cmd
    for cmd in ("hccn_tool -i 0 -tls -s enable 1", "hccn_tool -i 16 -link -g", "npu-smi info -t board -i 8"):
        p = run(root, "a3n0", cmd)
        assert p.returncode == 127 and "cannot run the sh implementation" in p.stderr, cmd
    shutil.copy(root / "bin" / "hccn_tool", root / "bin" / "other")
    p = run(root, "a3n0", "other -i 0 -link -g")
    assert p.returncode == 127 and "hccn_tool or npu-smi" in p.stderr


@needs_cc
def test_fastpath_stateful_calls_go_through_sh(tmp_path: Path) -> None:
    root = make_cluster(tmp_path / "a3", A3_NODES, "a3", "c")
    apply_fault(root, "a3n0", "busy:2")
    for tool in ("hccn_tool", "hccn_tool.sh"):  # the compiled tool answers busy through sh
        p = run(root, "a3n0", f"{tool} -i 0 -link -g")
        assert (p.returncode, p.stdout, p.stderr) == (11, BUSY + "\n", "")
    assert state(root, "a3n0").busy == 0
    assert (root / "nodes" / "a3n0" / "render" / "busy").read_text() == ""
    assert ok(root, "a3n0", "hccn_tool -i 0 -link -g") == ["link status: UP"]
    # -tls -s runs in sh and patches the fast path's file too
    assert ok(root, "a3n0", "hccn_tool -i 4 -tls -s enable 1") == ["Cmd executed successfully!"]
    assert "tls switch[1]" in (root / "nodes" / "a3n0" / "render" / "dev4.fp").read_text()
    run_both(root, "a3n0", ["{hccn} -i 4 -tls -g", "{hccn} -i 5 -tls -g", "{hccn} -i 4 -link -g"])
    assert ok(root, "a3n0", "hccn_tool -i 4 -tls -g")[0].startswith("dev_id:4, tls switch[1]")
    assert ok(root, "a3n0", "hccn_tool.sh -i 4 -tls -s enable 0") == ["Cmd executed successfully!"]
    assert ok(root, "a3n0", "hccn_tool -i 4 -tls -g")[0].startswith("dev_id:4, tls switch[0]")
    # a later save re-renders both from state.json
    apply_fault(root, "a3n0", "tls-on", device=4)
    run_both(root, "a3n0", ["{hccn} -i 4 -tls -g"])


@needs_cc
def test_fastpath_falls_back_on_missing_or_bad_files(tmp_path: Path) -> None:
    root = make_cluster(tmp_path / "a2", A2_NODES, "a2", "c")
    render = root / "nodes" / "a2n0" / "render"
    cmds = ["{hccn} -i 3 -ip -g", "{hccn} -i 2 -ip -g", "{hccn} -i 1 -link -g", "{smi} info -t board -i 0"]
    want = run_both(root, "a2n0", cmds)
    (render / "dev3.fp").unlink()
    (render / "dev2.fp").write_text("fastpath 0\n")  # another format version
    (render / "dev1.fp").write_text((render / "dev1.fp").read_text()[:-40])  # truncated
    (render / "smi" / "all.fp").write_text("fastpath 1\ninfo 0 99999999999999999999 5\nx\n\n")
    assert run_both(root, "a2n0", cmds) == want
    (render / "busy").unlink()  # sh treats a missing counter as not busy
    assert run_both(root, "a2n0", cmds) == want


@needs_cc
def test_install_tools_compile_cache_and_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.sim.tools as sim_state

    monkeypatch.delenv("DEPLOY_SIM_NO_FASTPATH", raising=False)
    scripts = {t: (sim_state.BIN_SRC / t).read_bytes() for t in ("hccn_tool", "npu-smi")}
    bindir = sim_state.install_tools(tmp_path / "one")
    [built] = bindir.glob(".fastpath-*")
    assert (bindir / "hccn_tool").read_bytes() == (bindir / "npu-smi").read_bytes() == built.read_bytes()
    assert {t: (bindir / f"{t}.sh").read_bytes() for t in scripts} == scripts
    # cached by source hash: no compiler run for this DIR again, nor for another DIR
    monkeypatch.setattr(sim_state.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    mtime = built.stat().st_mtime_ns
    sim_state.install_tools(tmp_path / "one")
    assert built.stat().st_mtime_ns == mtime
    assert (sim_state.install_tools(tmp_path / "two") / "hccn_tool").read_bytes()[:4] == b"\x7fELF"
    monkeypatch.undo()

    def assert_sh_only(bindir: Path) -> None:
        assert {t: (bindir / t).read_bytes() for t in scripts} == scripts
        assert not list(bindir.glob("*.sh"))

    monkeypatch.setenv("DEPLOY_SIM_NO_FASTPATH", "1")  # forced: also replaces an earlier fast install
    assert_sh_only(sim_state.install_tools(tmp_path / "one"))
    monkeypatch.setenv("DEPLOY_SIM_NO_FASTPATH", "0")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no cc
    assert_sh_only(sim_state.install_tools(tmp_path / "three"))
    monkeypatch.undo()
    bad = tmp_path / "bad.c"
    bad.write_text("int main(void) { return }\n")
    monkeypatch.setattr(sim_state, "FASTPATH_SRC", bad)  # the compile fails
    assert_sh_only(sim_state.install_tools(tmp_path / "four"))
    assert not list((tmp_path / "four" / "bin").glob(".fastpath-*"))


# ---------------------------------------------------------------------------------------
# one ping in flight per device, the ping log, the latency knob (`sim up --ping-latency`)

OCCUPIED = "The device is occupied. Please try again later."


def ping_log(root: Path, node: str) -> list[str]:
    return (root / "nodes" / node / "pings" / "log").read_text().splitlines()


def hold_device(root: Path, node: str, dev: int):  # type: ignore[no-untyped-def]
    """What a ping in flight does to its device: hold the flock of pings/dev<N>.lock."""
    import fcntl

    f = open(root / "nodes" / node / "pings" / f"dev{dev}.lock")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def test_ping_on_an_occupied_device_answers_busy(a3: Path) -> None:
    target = state(a3, "a3n1").device(3).vnic_ip
    roce = roce_ip(a3, "a3n1", 3)
    held = hold_device(a3, "a3n0", 3)
    try:
        for cmd in (f"hccn_tool -i 3 -hccs_ping -g address {target}", f"hccn_tool -i 3 -ping -g address {roce}"):
            p = run(a3, "a3n0", cmd)
            assert (p.returncode, p.stdout, p.stderr) == (11, "", OCCUPIED + "\n"), cmd
        assert ok(a3, "a3n0", "hccn_tool -i 3 -link -g") == ["link status: UP"]  # gets are not held
        ok(a3, "a3n0", f"hccn_tool -i 2 -hccs_ping -g address {target}")  # another device is free
    finally:
        held.close()
    ok(a3, "a3n0", f"hccn_tool -i 3 -hccs_ping -g address {target}")  # released: answered
    assert ping_log(a3, "a3n0") == [f"3 -hccs_ping {target} 11", f"3 -ping {roce} 11",
                                    f"2 -hccs_ping {target} 0", f"3 -hccs_ping {target} 0"]
    assert ping_log(a3, "a3n1") == []  # the target logs nothing: it only answers


def test_ping_log_records_failures_with_their_rc(a2: Path) -> None:
    assert_ping_fails(ping(a2, "a2n0", 0, "10.0.9.9"), 0, "10.0.9.9")
    assert ping_log(a2, "a2n0") == ["0 -ping 10.0.9.9 1"]


def test_ping_latency_knob_holds_the_device(tmp_path: Path, impl: str) -> None:
    root = make_cluster(tmp_path / "lat", A3_NODES, "a3", impl)
    for node in ("a3n0", "a3n1"):
        edit(root, node, lambda st: setattr(st, "ping_latency_s", 2.0))
    assert "wait_us 0 7 0\n2000000\n" in (root / "nodes" / "a3n0" / "render" / "dev5.fp").read_text()
    assert "WAIT=2.000000\n" in (root / "nodes" / "a3n0" / "render" / "dev5.sh").read_text()
    target = state(root, "a3n1").device(5).vnic_ip
    cmd = f"hccn_tool -i 5 -hccs_ping -g address {target}"
    first = subprocess.Popen(["/bin/sh", "-c", cmd], env=env_for(root, "a3n0"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        import fcntl

        with open(root / "nodes" / "a3n0" / "pings" / "dev5.lock") as f:
            for _ in range(400):  # until the first ping holds device 5 (bounded: 20 s)
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except BlockingIOError:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the first ping never held its device")
        second = run(root, "a3n0", cmd)
        assert (second.returncode, second.stderr) == (11, OCCUPIED + "\n")
        out, err = first.communicate(timeout=30)
    finally:
        first.kill()
    assert first.returncode == 0 and err == "" and "3 packets transmitted, 3 received" in out
    assert ping_log(root, "a3n0") == [f"5 -hccs_ping {target} 11", f"5 -hccs_ping {target} 0"]
