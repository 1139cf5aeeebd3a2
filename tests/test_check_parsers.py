"""Parsers against the real output formats of hccn_tool / npu-smi (HDK 25.2.0), including the
variants real releases print (§8: CRLF, `Socket failed`, `netdetect addr`, `packets loss`)."""
from orchestrator.checks import parsers as P
from orchestrator.checks.facts import parse_sections


def test_link_and_health_variants():
    assert P.link_status("link status: UP\n") == "UP"
    assert P.link_status("link status: down\r\n") == "DOWN"
    assert P.net_health("net health status: Success") == "Success"
    assert P.net_health("net health status: Socket failed\r\n") == "Socket failed"
    assert P.net_health("net health status: Detect ip set") == "Detect ip set"
    assert P.net_health("") is None


def test_netdetect_both_spellings_and_gateway():
    assert P.netdetect("netdetect address: 11.12.165.1") == "11.12.165.1"
    assert P.netdetect("netdetect addr: 11.12.165.1") == "11.12.165.1"
    assert P.gateway("default gateway:11.12.165.1, Iface:eth0") == "11.12.165.1"
    assert P.gateway("Get gateway failed, because no gateway was preset there!") is None


def test_ip_and_vnic():
    assert P.ip_config("ipaddr:10.10.0.10\nnetmask:255.255.255.0\n") == ("10.10.0.10", "255.255.255.0")
    assert P.ip_config("") == (None, None)
    assert P.vnic("vnic link status: UP\nvnic ipaddr: 192.168.2.199\nvnic netmask: 255.255.255.0") == \
        ("UP", "192.168.2.199", "255.255.255.0")


def test_tls_formats():
    new = "dev_id:0, tls switch[1](0:disable, 1:enable), tls preconfigured[1](0:non-preset, 1:preset), tls alarm time threshold[60]days"
    old = "dev_id:0, tls switch[0](0:disable, 1:enable), tls alarm time threshold[60]days"
    assert P.tls_switch(new) == 1 and P.tls_switch(old) == 0
    assert P.tls_switch("No certificate found, please set certs firstly!") is None


def test_lldp_ifname():
    text = "Chassis ID TLV\n\tMAC: x\nPort ID TLV\n\tIfname: 400GE1/1/5:1\nSystem Description TLV\n"
    assert P.lldp_ifname(text) == "400GE1/1/5:1"
    assert P.lldp_ifname("") is None


def test_roce_ping_ok_partial_and_total_loss():
    ok = ("device 0 PING 11.12.165.80\nrecv seq=0,time=0.114000ms\nrecv seq=1,time=0.067000ms\n"
          "recv seq=2,time=0.063000ms\n3 packets transmitted, 3 received, 0.00% packet loss\n")
    assert P.ping(ok, 0).ok
    partial = ("recv time out seq=0\nrecv seq=1,time=0.097000ms\nrecv seq=2,time=0.066000ms\n"
               "3 packets transmitted, 2 received, 33.33% packet loss\n")
    r = P.ping(partial, 1)
    assert not r.ok and r.received == 2 and "recv time out" in r.detail
    assert not P.ping(ok, 1).ok  # rc != 0 fails whatever the text says
    assert not P.ping("", 1).ok


def test_hccs_ping_plural_loss_and_send_fail():
    good = ("device 0 PING 192.4.3.198\n\nThis pkt ping success!\nrecv seq 0, time = 12.345us, L1 plane check result = 0x0\n\n"
            "3 packets transmitted, 3 received, 0.00% packets loss\nmax time 13.001us\n")
    assert P.ping(good, 0).ok
    bad = good.replace("This pkt ping success!", "This pkt send fail!").replace("3 received", "0 received")
    assert not P.ping(bad, 0).ok  # hccs_ping exits 0 on loss: judged by the statistics line
    l1 = good.replace("result = 0x0", "result = 0x4")
    assert not P.ping(l1, 0).ok


def test_npu_info_a3_table_and_processes():
    text = """\
| npu-smi 25.2.0                   Version: 25.2.0                                               |
+===========================+===============+====================================================+
| 0     Ascend910           | OK            | 162.8       37                0    / 0             |
| 0     0                   | 0000:9C:00.0  | 0           0    / 0          3133 / 65536         |
+------------------------------------------------------------------------------------------------+
| 0     Ascend910           | Alarm         | -           37                0    / 0             |
| 1     1                   | 0000:9E:00.0  | 0           0    / 0          62876/ 65536         |
+===========================+===============+====================================================+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| 0       1                 | 990711        | VLLM::EngineCore         | 60000                   |
"""
    info = P.npu_info(text)
    assert info.version == "25.2.0"
    assert info.chips[(0, 0)]["health"] == "OK" and info.chips[(0, 0)]["hbm_used"] == 3133
    assert info.chips[(0, 1)]["health"] == "Alarm" and info.chips[(0, 1)]["hbm_used"] == 62876
    assert [(p.npu, p.chip, p.pid, p.name) for p in info.processes] == [(0, 1, 990711, "VLLM::EngineCore")]


def test_npu_smi_list_and_map():
    assert P.npu_count("\tTotal Count                    : 8\n\n\tNPU ID                         : 0\n"
                       "\tChip Count                     : 2\n") == (8, 2)
    a3 = ("\tNPU ID                         Chip ID                        Chip Logic ID                  "
          "Chip Phy-ID                    Chip Name\n"
          "\t0                              0                              0                              0                              Ascend910\n"
          "\t0                              2                              -                              -                              Mcu\n"
          "\t1                              1                              3                              3                              Ascend910\n")
    rows = P.chip_map(a3)
    assert [(r.npu, r.chip, r.phy) for r in rows] == [(0, 0, 0), (1, 1, 3)]
    a2 = ("\tNPU ID                         Chip ID                        Chip Logic ID                  Chip Name\n"
          "\t0                              0                              0                              Ascend 910B3\n"
          "\t0                              1                              -                              Mcu\n")
    assert [(r.phy, r.name) for r in P.chip_map(a2)] == [(0, "Ascend 910B3")]


def test_hccn_conf_and_sections_with_busy_retries():
    conf = P.hccn_conf("address_0=29.1.137.205\r\nnetmask_0=255.255.0.0\n# comment\ntls_enable_0=0\n")
    assert conf == {"address_0": "29.1.137.205", "netmask_0": "255.255.0.0", "tls_enable_0": "0"}
    out = "@@link 3\nhccn_tool is busy, please try again.\n@@busy\nlink status: UP\n@@rc 0\n@@ip 3\n"
    secs = parse_sections(out)
    assert secs["link 3"].text == "link status: UP" and secs["link 3"].busy == 1 and secs["link 3"].rc == 0
    assert secs["ip 3"].rc is None  # cut short: never finished


def test_report_json_is_the_stdlib_indented_text():
    """check-network --json prints with checks/jsonout.py: the same bytes as json.dumps(indent=2)."""
    import json

    from orchestrator.checks.jsonout import dumps

    cases = [{}, [], {"a": [], "b": {}}, "s", 5, None, (1, 2), {"k": (3,)}, {1: "int key"},
             {"x": [1, 2.5, -0.0, 1e300, True, None, 'é"\n\\\u2028', float("inf")], "y": {"z": [{"q": 1}], "w": [[], [[]]]}},
             {"checks": [{"node": "p0", "check": "link", "status": "fail", "observed": "link status: DOWN",
                          "reason": "", "fix": "hccn_tool -i 5 -link -g", "device": 5}] * 3,
              "pings": [{"src": "p0", "src_device": 0, "dst": "d1", "dst_device": 0, "kind": "ping",
                         "address": "10.0.0.13", "ok": False, "observed": "3 packets transmitted, 0 received",
                         "busy_retries": 2}], "unreachable": {"d1": "connect: timed out"}, "interrupted": None}]
    for obj in cases:
        assert dumps(obj) == json.dumps(obj, indent=2), obj
