"""The fake upstream P/D proxy (orchestrator/sim/runtime/proxy.py) in front of fake vLLM ranks, as
real processes on loopback: its CLI checks, the prefill-then-decode flow (streamed and not, with the
official OpenAI client), /healthcheck that never probes, and the blind spots upstream has (200 with
an empty or truncated body when the decoder fails), plus the layerwise variant."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time

import pytest
from test_sim_vllm import (
    PROXY,
    http_get,
    http_post,
    kv,
    refused,
    wait_healthy,
)


def _wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not refused(host, port):
            return
        time.sleep(0.05)
    raise AssertionError(f"{host}:{port} not listening")


def _pd(cluster, connector: str = "MooncakeConnectorV1", **config):
    """One prefill rank, one decode rank, on one node."""
    n = cluster.node("p0", 1, **config)
    p = cluster.vllm(n, "--port", "7100", "--served-model-name", "ds",
                     "--kv-transfer-config", kv("kv_producer", 30000, "0", connector=connector),
                     ASCEND_RT_VISIBLE_DEVICES="0", log="prefill.log")
    d = cluster.vllm(n, "--port", "7200", "--served-model-name", "ds",
                     "--kv-transfer-config", kv("kv_consumer", 30100, "1", connector=connector),
                     ASCEND_RT_VISIBLE_DEVICES="1", log="decode.log")
    wait_healthy(n.address, 7100)
    wait_healthy(n.address, 7200)
    return n, p, d


def _proxy(cluster, n, *extra, script=PROXY, decoders=("7200",)):
    args = ["--host", n.address, "--port", "1999", "--prefiller-hosts", n.address, "--prefiller-ports", "7100",
            "--decoder-hosts", *[n.address] * len(decoders), "--decoder-ports", *decoders, *extra]
    px = cluster.proxy(n, *args, script=script)
    _wait_listening(n.address, 1999)
    return px


@pytest.mark.parametrize("argv, line", [
    (["--prefiller-hosts", "a", "b", "--prefiller-ports", "1"],
     "ValueError: Number of prefiller hosts must match number of prefiller ports"),
    (["--decoder-hosts", "a", "--decoder-ports", "1", "2"],
     "ValueError: Number of decoder hosts must match number of decoder ports"),
])
def test_unequal_host_and_port_lists(cluster, argv, line):
    n = cluster.node("p0", 1)
    px = cluster.proxy(n, "--host", n.address, "--port", "1999", *argv)
    assert px.wait() == 1
    assert line in px.text()


def test_layerwise_proxy_refuses_a_wildcard_host(cluster, tmp_path):
    n = cluster.node("p0", 1)
    script = tmp_path / "load_balance_proxy_layerwise_server_example.py"
    shutil.copy(PROXY, script)
    for f in PROXY.parent.glob("vllm_*.py"):
        shutil.copy(f, tmp_path / f.name)
    px = cluster.proxy(n, "--host", "0.0.0.0", "--port", "1999", script=script)
    assert px.wait() == 1
    assert ("ValueError: Decoder hosts will access Proxy host:port/metaserver, to avoid configuration errors, the "
            "Wildcard Address 0.0.0.0 is not allowed for proxy") in px.text()
    unknown = cluster.proxy(n, "--host", n.address, "--workers", "2", script=script)
    assert unknown.wait() == 2 and "unrecognized arguments: --workers 2" in unknown.text()


def test_healthcheck_never_probes_the_backends(cluster):
    n = cluster.node("p0", 1)
    _proxy(cluster, n, decoders=("7200", "7201"))
    status, body = http_get(n.address, 1999, "/healthcheck")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "prefill_instances": 1, "decode_instances": 2, "request_num": 0}
    status, body = http_get(n.address, 1999, "/v1/models")
    assert status == 503 and json.loads(body)["failed"] == [f"{n.address}:7100", f"{n.address}:7200",
                                                             f"{n.address}:7201"]


def test_prefill_then_decode_through_the_proxy(cluster):
    n, p, d = _pd(cluster)
    _proxy(cluster, n)
    status, body = http_post(n.address, 1999, "/v1/completions", {"model": "ds", "prompt": "hello", "max_tokens": 5})
    out = json.loads(body)
    direct = json.loads(http_post(n.address, 7100, "/v1/completions",
                                  {"model": "ds", "prompt": "hello", "max_tokens": 5})[1])
    assert status == 200 and out["choices"][0]["text"] == direct["choices"][0]["text"]
    assert out["usage"]["completion_tokens"] == 5
    assert json.loads(http_get(n.address, 1999, "/healthcheck")[1])["request_num"] == 1
    # the prefill rank saw max_tokens 1, the decode rank the full request
    assert p.text().count('"POST /v1/completions HTTP/1.1" 200') == 2
    assert d.text().count('"POST /v1/completions HTTP/1.1" 200') == 1
    status, body = http_get(n.address, 1999, "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "ds"


def test_openai_client_through_the_proxy(cluster):
    openai = pytest.importorskip("openai")
    n, _p, _d = _pd(cluster)
    _proxy(cluster, n)
    client = openai.OpenAI(base_url=f"http://{n.address}:1999/v1", api_key="none", max_retries=0, timeout=10)
    whole = client.completions.create(model="ds", prompt="hello there", max_tokens=6)
    parts = list(client.completions.create(model="ds", prompt="hello there", max_tokens=6, stream=True))
    assert whole.usage.completion_tokens == 6
    assert "".join(c.choices[0].text for c in parts) == whole.choices[0].text != ""
    chat = client.chat.completions.create(model="ds", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    streamed = list(client.chat.completions.create(model="ds", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=4, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == chat.choices[0].message.content


def test_dead_backends_prefill_is_500_decode_is_200_with_an_empty_body(cluster):
    n = cluster.node("p0", 1)
    p = cluster.vllm(n, "--port", "7100", "--served-model-name", "ds",
                     "--kv-transfer-config", kv("kv_producer", 30000, "0"), ASCEND_RT_VISIBLE_DEVICES="0")
    wait_healthy(n.address, 7100)
    px = _proxy(cluster, n)  # no decoder on 7200
    status, body = http_post(n.address, 1999, "/v1/completions", {"model": "ds", "prompt": "x", "max_tokens": 3})
    assert (status, body) == (200, b"")
    assert "Error during streaming from decoder" in px.text()
    p.kill_group()
    status, body = http_post(n.address, 1999, "/v1/completions", {"model": "ds", "prompt": "x", "max_tokens": 3})
    assert (status, body) == (500, b"Internal Server Error")
    assert "Error occurred in disagg prefill proxy server - /completions endpoint" in px.text()


def test_decoder_dying_mid_stream_gives_200_and_a_truncated_body(cluster):
    n, _p, d = _pd(cluster, token_s=0.3)
    px = _proxy(cluster, n)
    s = socket.create_connection((n.address, 1999), timeout=10)
    body = json.dumps({"model": "ds", "prompt": "hello", "max_tokens": 20, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    got = b""
    while b"data: {" not in got:
        got += s.recv(65536)
    os.killpg(d.pid, signal.SIGKILL)
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    assert got.startswith(b"HTTP/1.1 200 OK")
    assert got.endswith(b"0\r\n\r\n"), "the proxy ends the response normally"
    assert b"data: [DONE]" not in got and got.count(b"data: {") < 20
    deadline = time.monotonic() + 5
    while "Streaming to client interrupted after response started" not in px.text():
        assert time.monotonic() < deadline, px.text()
        time.sleep(0.05)


def test_layerwise_proxy_decoder_first_then_metaserver(cluster, tmp_path):
    n, p, d = _pd(cluster, connector="MooncakeLayerwiseConnector")
    script = tmp_path / "load_balance_proxy_layerwise_server_example.py"
    shutil.copy(PROXY, script)
    for f in PROXY.parent.glob("vllm_*.py"):
        shutil.copy(f, tmp_path / f.name)
    px = _proxy(cluster, n, script=script)
    status, body = http_post(n.address, 1999, "/v1/completions", {"model": "ds", "prompt": "hello", "max_tokens": 4})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4
    assert '"POST /v1/metaserver HTTP/1.1" 200' in px.text()
    assert p.text().count('"POST /v1/completions HTTP/1.1" 200') == 1
    status, body = http_get(n.address, 1999, "/healthcheck")
    assert json.loads(body) == {"status": "ok", "prefill_instances": 1, "decode_instances": 1}


def test_proxy_sigterm_closes_its_port(cluster):
    n = cluster.node("p0", 1)
    px = _proxy(cluster, n)
    os.kill(px.pid, signal.SIGTERM)
    assert px.wait() == 0
    assert refused(n.address, 1999)
    assert "Finished server process" in px.text()


def test_instances_added_at_run_time_join_after_their_probe(cluster):
    n, _p, _d = _pd(cluster)
    _proxy(cluster, n, "--waiting-retry-interval", "0.2", "--max-waiting-retries", "20")
    status, body = http_post(n.address, 1999, "/instances/add", {"type": "decode", "instances": [f"{n.address}:7300"]})
    assert status == 200 and json.loads(body)["message"] == f"Instances ['{n.address}:7300'] are waiting to be added."
    time.sleep(0.5)
    assert json.loads(http_get(n.address, 1999, "/healthcheck")[1])["decode_instances"] == 1
    extra = cluster.vllm(n, "--port", "7300", "--served-model-name", "ds",
                         "--kv-transfer-config", kv("kv_consumer", 30200, "2"), ASCEND_RT_VISIBLE_DEVICES="2")
    wait_healthy(n.address, 7300)
    deadline = time.monotonic() + 10
    while json.loads(http_get(n.address, 1999, "/healthcheck")[1])["decode_instances"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    status, body = http_post(n.address, 1999, "/instances/remove", {"type": "decode", "instances": [f"{n.address}:7200"]})
    assert json.loads(body)["current_decode_instances"] == [f"{n.address}:7300"]
    assert http_post(n.address, 1999, "/v1/completions", {"model": "ds", "prompt": "x", "max_tokens": 2})[0] == 200
    assert extra.text().count('"POST /v1/completions HTTP/1.1" 200') == 1
    assert http_post(n.address, 1999, "/reset_prefix_cache", {})[0] == 200
