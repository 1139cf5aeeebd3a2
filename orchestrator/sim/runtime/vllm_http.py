"""A small HTTP/1.1 server and client on asyncio streams, for the fake `vllm serve` and the fake
P/D proxy (stdlib only: the simulated image has no fastapi/uvicorn/httpx).

Why our own: the programs must bind a socket early and start listening only later (vLLM's
start-up), stream Server-Sent Events with chunked transfer encoding (what the OpenAI client reads),
keep connections alive (the OpenAI client pools them) and, in the proxy, read an upstream chunked
stream and notice when it breaks off. Bounded everywhere: header block 64 KiB, body 16 MiB.
"""
from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           411: "Length Required", 413: "Payload Too Large", 422: "Unprocessable Entity",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class HTTPError(Exception):
    """A malformed request or response: the connection is closed."""


class Request:
    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes):
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body or b"null")


class Response:
    """A complete response, or a streamed one when `stream` is an async iterator of bytes."""

    __slots__ = ("status", "headers", "body", "stream")

    def __init__(self, status: int = 200, body: bytes = b"", content_type: str | None = "application/json",
                 stream: AsyncIterator[bytes] | None = None, headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.stream = stream
        self.headers = dict(headers or {})
        if content_type:
            self.headers.setdefault("content-type", content_type)


def json_response(obj, status: int = 200) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode())


def text_response(text: str, status: int) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise HTTPError("truncated header") from None
    except asyncio.LimitOverrunError:
        raise HTTPError("header too large") from None
    if len(head) > MAX_HEAD:
        raise HTTPError("header too large")
    return head


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise HTTPError("bad header line")
        headers[name.strip().lower()] = value.strip()
    return headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        async for piece in _iter_chunks(reader):
            out += piece
            if len(out) > MAX_BODY:
                raise HTTPError("body too large")
        return bytes(out)
    length = int(headers.get("content-length", "0") or 0)
    if length < 0 or length > MAX_BODY:
        raise HTTPError("bad content-length")
    return await reader.readexactly(length) if length else b""


async def _iter_chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Chunked transfer decoding; raises IncompleteReadError/HTTPError when the stream breaks off."""
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return
        if size > MAX_BODY:
            raise HTTPError("chunk too large")
        data = await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise HTTPError("bad chunk terminator")
        yield data


Handler = Callable[[Request], Awaitable[Response]]


class Server:
    """Serves `handler` on an already bound socket; `start()` is the moment the port starts
    accepting connections (before it, connects are refused: bound, not listening)."""

    def __init__(self, sock: socket.socket, handler: Handler):
        self.sock = sock
        self.handler = handler
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, sock=self.sock, limit=MAX_HEAD, backlog=512)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.close()
        self.sock.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                lines = head.split(b"\r\n")
                parts = lines[0].decode("latin-1").split()
                if len(parts) != 3:
                    raise HTTPError("bad request line")
                method, target, version = parts
                headers = _parse_headers(lines[1:])
                if headers.get("expect", "").lower() == "100-continue":  # curl, for bodies over 1 KiB
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await _read_body(reader, headers)
                try:
                    resp = await self.handler(Request(method, target, headers, body))
                except Exception:  # a handler bug answers 500 like uvicorn, and is printed
                    import traceback
                    traceback.print_exc()
                    resp = text_response("Internal Server Error", 500)
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                await self._send(writer, resp, keep)
                if not keep:
                    return
        except (HTTPError, ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, resp: Response, keep: bool) -> None:
        head = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'OK')}"]
        hdrs = dict(resp.headers)
        hdrs["connection"] = "keep-alive" if keep else "close"
        if resp.stream is None:
            hdrs["content-length"] = str(len(resp.body))
        else:
            hdrs["transfer-encoding"] = "chunked"
        head += [f"{k}: {v}" for k, v in hdrs.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if resp.stream is None:
            writer.write(resp.body)
            await writer.drain()
            return
        try:
            async for piece in resp.stream:
                if piece:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
        finally:
            aclose = getattr(resp.stream, "aclose", None)
            if aclose is not None:
                await aclose()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


# ---------------------------------------------------------------------------------------------
# client


class ClientResponse:
    def __init__(self, status: int, headers: dict[str, str], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.status = status
        self.headers = headers
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await _read_body(self._reader, self.headers) if "content-length" in self.headers or \
                self.headers.get("transfer-encoding", "").lower() == "chunked" else await self._reader.read(MAX_BODY)
        finally:
            self.close()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Raises (IncompleteReadError, ConnectionError) if it breaks off."""
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                async for piece in _iter_chunks(self._reader):
                    yield piece
            elif "content-length" in self.headers:
                left = int(self.headers["content-length"])
                while left > 0:
                    piece = await self._reader.read(min(left, 65536))
                    if not piece:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(piece)
                    yield piece
            else:
                while piece := await self._reader.read(65536):
                    yield piece
        finally:
            self.close()

    def close(self) -> None:
        self._writer.close()


async def request(host: str, port: int, method: str, path: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None, timeout: float | None = None) -> ClientResponse:
    """Open a connection, send one request, read the status line and headers (connection: close).
    Raises OSError (connection refused, ...) or asyncio.TimeoutError."""
    async def go() -> ClientResponse:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
        try:
            hdrs = {"host": f"{host}:{port}", "connection": "close", "accept": "*/*"}
            hdrs.update({k.lower(): v for k, v in (headers or {}).items()})
            if body is not None:
                hdrs["content-length"] = str(len(body))
                hdrs.setdefault("content-type", "application/json")
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
            writer.write(head.encode("latin-1") + (body or b""))
            await writer.drain()
            raw = await _read_head(reader)
            if raw is None:
                raise ConnectionResetError("Server disconnected without sending a response.")
            lines = raw.split(b"\r\n")
            status = int(lines[0].split()[1])
            return ClientResponse(status, _parse_headers(lines[1:]), reader, writer)
        except BaseException:
            writer.close()
            raise
    return await asyncio.wait_for(go(), timeout) if timeout else await go()
