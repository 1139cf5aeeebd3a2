"""HTTP to a rank or the proxy through the SSH connection already open to its node.

Readiness, status and the smoke request ride a direct-tcpip channel of the node's connection
(`ssh -L` without a local port): no extra connection per poll, nothing to install on the node,
and it works through jump hosts. Each request is HTTP/1.1 with `Connection: close`; responses
are read to EOF with a size cap, so a misbehaving server cannot make us buffer without bound.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

MAX_BODY = 4 * 1024 * 1024  # bytes kept of one response


@dataclass
class Response:
    status: int  # 0: no HTTP answer (refused, reset, timed out); see `error`
    body: bytes = b""
    error: str = ""
    headers: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status else (self.error or "no answer")


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        try:
            size = int(data[pos:end].split(b";")[0].strip() or b"0", 16)
        except ValueError:  # not a chunk size: keep what was read
            break
        if size == 0:
            break
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def parse_response(raw: bytes) -> Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return Response(0, error="incomplete HTTP response")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (parts[1].isascii() and parts[1].isdigit()):
        return Response(0, error=f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif headers.get("content-length", "").isascii() and headers.get("content-length", "").isdigit():
        body = body[:int(headers["content-length"])]
    return Response(int(parts[1]), body, headers=headers)


async def request(open_connection, host: str, port: int, method: str, path: str,
                  body: dict | None = None, timeout: float = 5.0,
                  headers: dict[str, str] | None = None) -> Response:
    """One request over `open_connection(host, port) -> (reader, writer)` (a tunnel factory)."""
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
            "Accept: */*", f"Content-Length: {len(data)}"]
    if body is not None:
        head.append("Content-Type: application/json")
    for k, v in (headers or {}).items():
        if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
            raise ValueError("header with a line break")
        head.append(f"{k}: {v}")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + data

    async def go() -> Response:
        try:
            reader, writer = await open_connection(host, port)
        except OSError as e:  # the transport raises ConnectionRefusedError for a refused channel
            return Response(0, error=_refusal(e))
        try:
            writer.write(raw)
            buf = bytearray()
            while len(buf) <= MAX_BODY:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
            return parse_response(bytes(buf)) if buf else Response(0, error="connection closed without an answer")
        except (OSError, EOFError) as e:
            return Response(0, error=f"connection lost: {e}")
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        return Response(0, error=f"no answer within {timeout:g}s")


def _refusal(exc: BaseException) -> str:
    reason = getattr(exc, "reason", "") or str(exc) or type(exc).__name__
    return f"connection refused ({reason})"
