"""The fake upstream P/D proxy of the simulated vllm-ascend image (stdlib only):
examples/disaggregated_prefill_v1/load_balance_proxy_server_example.py and, when installed under a
name containing "layerwise" (or DEPLOY_SIM_PROXY_MODE=layerwise), the layerwise variant
load_balance_proxy_layerwise_server_example.py.

Same CLI, checks and flow as upstream (vllm-ascend HEAD 182b75ea), including its blind spots, which
an orchestrator must work around:
- host and port lists of unequal length raise ValueError; the layerwise proxy refuses a wildcard
  --host (decoders call it back on /v1/metaserver);
- request flow: the prefiller gets a copy with max_tokens=1, min_tokens=1, stream=false and
  kv_transfer_params {do_remote_decode: true, ...}; its kv_transfer_params go into the decoder request,
  whose reply is streamed back as it comes (layerwise: the decoder first, it posts to the
  metaserver, which runs the prefill);
- /healthcheck never probes a backend; /v1/models asks each backend in turn (3 s);
- a prefiller that cannot be reached is a 500; a decoder that fails before or during its reply
  gives HTTP 200 with an empty or truncated body (vllm-ascend#13140); no backend is ever evicted.
--host is bound literally (deploy passes the proxy node's IP); 0.0.0.0 means the simulated node's
address, never the real wildcard.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
import traceback
import uuid

_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, _HERE)  # the sibling modules: DIR/runtime/ on a node, this package in tests
if os.environ.get("DEPLOY_SIM_ROOT"):  # a copy or stub elsewhere (the image's proxy path) finds them there
    sys.path.append(os.path.join(os.environ["DEPLOY_SIM_ROOT"], "runtime"))

import vllm_http as http  # noqa: E402

SCRIPT = "/vllm-workspace/vllm-ascend/examples/disaggregated_prefill_v1/load_balance_proxy_server_example.py"
SCRIPT_LW = "/vllm-workspace/vllm-ascend/examples/disaggregated_prefill_v1/load_balance_proxy_layerwise_server_example.py"
WILDCARDS = ("0.0.0.0", "::", "0:0:0:0:0:0:0:0")


class Log:
    """`logging.basicConfig(format="%(asctime)s %(levelname)s [%(name)s] %(message)s")` of upstream."""

    def __init__(self, name: str, level: str = "INFO"):
        self.name = name
        self.levels = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
        self.level = self.levels.get(level.upper(), 20)

    def _out(self, level: str, msg: str) -> None:
        if self.levels[level] < self.level:
            return
        t = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f",{int((t % 1) * 1000):03d}"
        _write(f"{stamp} {level} [{self.name}] {msg}\n")

    def info(self, msg: str) -> None:
        self._out("INFO", msg)

    def warning(self, msg: str) -> None:
        self._out("WARNING", msg)

    def error(self, msg: str) -> None:
        self._out("ERROR", msg)

    def debug(self, msg: str) -> None:
        self._out("DEBUG", msg)


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def _uvicorn(msg: str) -> None:
    _write(f"INFO:     {msg}\n")


def _raise_at_top(script: str, func_line: int, raise_line: int, func: str, last: str) -> int:
    sys.stderr.write("Traceback (most recent call last):\n"
                     f'  File "{script}", line {func_line}, in <module>\n    global_args = parse_args()\n'
                     f'  File "{script}", line {raise_line}, in {func}\n    raise ValueError(\n{last}\n')
    sys.stderr.flush()
    return 1


# -------------------------------------------------------------------------------------------------
# command line

def parse_args(argv: list[str], layerwise: bool, log: Log) -> argparse.Namespace | int:
    prog = os.path.basename(SCRIPT_LW if layerwise else SCRIPT)
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", type=str, default="localhost")
    p.add_argument("--prefiller-hosts", type=str, nargs="+", default=["localhost"])
    p.add_argument("--prefiller-ports", type=int, nargs="+", default=[8001])
    p.add_argument("--decoder-hosts", type=str, nargs="+", default=["localhost"])
    p.add_argument("--decoder-ports", type=int, nargs="+", default=[8002])
    p.add_argument("--max-retries", type=int, default=3, help="Maximum number of retries for HTTP requests")
    p.add_argument("--retry-delay", type=float, default=0.001,
                   help="Base delay (seconds) for exponential backoff retries")
    if not layerwise:
        p.add_argument("--max-waiting-retries", type=int, default=3,
                       help="Maximum number of retries for waiting nodes to be started")
        p.add_argument("--waiting-retry-interval", type=float, default=10,
                       help="Check interval (seconds) for waiting nodes to be started")
        p.add_argument("--workers", type=int, default=1,
                       help="Number of uvicorn worker processes. Scheduling state is shared across workers.")
        p.add_argument("--log-level", type=str, default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR",
                                                                         "CRITICAL"],
                       help="Log level for the proxy server.")
    args = p.parse_args(argv)
    script = SCRIPT_LW if layerwise else SCRIPT
    if layerwise:
        log.info(f"Decoder hosts will access Proxy host:port/metaserver, ensure that {set(args.decoder_hosts)} can "
                 f"access {args.host}:{args.port}/metaserver")
        if args.host in WILDCARDS:
            return _raise_at_top(script, 758, 338, "parse_args",
                                 "ValueError: Decoder hosts will access Proxy host:port/metaserver, to avoid "
                                 f"configuration errors, the Wildcard Address {args.host} is not allowed for proxy")
        for arg_name, hosts in (("--prefiller-hosts", args.prefiller_hosts), ("--decoder-hosts", args.decoder_hosts)):
            for i, host in enumerate(hosts):
                bad = _bad_host(host)
                if bad:
                    return _raise_at_top(script, 758, 307, "_validate_host",
                                         f"ValueError: Invalid host {host!r} in {arg_name}[{i}]: {bad}")
    if len(args.prefiller_hosts) != len(args.prefiller_ports):
        return _raise_at_top(script, 1261 if not layerwise else 758, 706 if not layerwise else 348, "parse_args",
                             "ValueError: Number of prefiller hosts must match number of prefiller ports")
    if len(args.decoder_hosts) != len(args.decoder_ports):
        return _raise_at_top(script, 1261 if not layerwise else 758, 708 if not layerwise else 350, "parse_args",
                             "ValueError: Number of decoder hosts must match number of decoder ports")
    return args


def _bad_host(host: str) -> str | None:
    import ipaddress
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if host and not all(label.isdigit() for label in host.split(".")):
        return None
    return ("looks like a concatenated IP address; check for missing whitespace before line-continuation "
            "backslashes" if host else "must be a valid IP or hostname")


# -------------------------------------------------------------------------------------------------
# scheduling (min load, ties by insertion order, as the upstream heaps)

class Backend:
    def __init__(self, host: str, port: int, ordinal: int):
        self.host, self.port, self.ordinal = host, int(port), ordinal
        self.active_tokens = 0.0
        self.active_kv = 0.0

    @property
    def key(self) -> str:
        return f"{self.host.replace('localhost', '0.0.0.0').replace('127.0.0.1', '0.0.0.0')}:{self.port}"


def prefill_score(n: int) -> float:
    return n / 4.0 * 0.0345 + 120.0745


class Proxy:
    def __init__(self, args: argparse.Namespace, layerwise: bool, node_address: str):
        self.args = args
        self.layerwise = layerwise
        self.node_address = node_address
        self.log = Log("__main__" if not layerwise else "load_balance_proxy_layerwise_server_example",
                       getattr(args, "log_level", "INFO"))
        self.prefillers: list[Backend] = []
        self.decoders: list[Backend] = []
        self._ordinal = 0
        for h, p in zip(args.prefiller_hosts, args.prefiller_ports):
            self._add(self.prefillers, h, p)
        for h, p in zip(args.decoder_hosts, args.decoder_ports):
            self._add(self.decoders, h, p)
        self.request_num = 0
        self.waiting: dict[str, tuple[str, tuple[str, int], int]] = {}
        self.meta: dict[str, dict] = {}  # layerwise: api request id -> record

    def _add(self, pool: list[Backend], host: str, port: int) -> bool:
        b = Backend(host, port, self._ordinal)
        if any(x.key == b.key for x in pool):
            return False
        self._ordinal += 1
        pool.append(b)
        return True

    @staticmethod
    def pick(pool: list[Backend], prefill: bool) -> Backend:
        if not pool:
            raise RuntimeError(f"No available {'prefill' if prefill else 'decode'} servers")
        return min(pool, key=lambda b: ((b.active_tokens + 0.3 * b.active_kv) if prefill else b.active_tokens,
                                        b.ordinal))

    def headers(self, request_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY')}", "X-Request-Id": request_id}

    # backend calls -------------------------------------------------------------------------
    async def post_prefill(self, b: Backend, api: str, payload: dict, request_id: str) -> dict:
        """send_request_to_service: up to --max-retries attempts, none after a 400."""
        body = json.dumps(payload).encode()
        attempts = max(1, self.args.max_retries)
        for attempt in range(1, attempts + 1):
            try:
                resp = await http.request(b.host, b.port, "POST", "/v1" + api, body, self.headers(request_id))
                data = await resp.read()
                if resp.status >= 400:
                    err = BackendStatus(resp.status, data, f"http://{b.host}:{b.port}/v1{api}")
                    if resp.status == 400 or attempt == attempts:
                        raise err
                    self.log.warning(f"Attempt {attempt} failed for {api}: {err}")
                else:
                    return json.loads(data or b"{}")
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                if attempt == attempts:
                    raise
                self.log.warning(f"Attempt {attempt} failed for {api}: {_exc_text(e)}")
            await asyncio.sleep(self.args.retry_delay * (2 ** (attempt - 1)))
        raise RuntimeError("unreachable")

    async def stream_decoder(self, b: Backend, api: str, payload: dict, request_id: str):
        """stream_service_response: retried until the first chunk; after it, a break ends the stream."""
        body = json.dumps(payload).encode()
        attempts = max(1, self.args.max_retries)
        for attempt in range(1, attempts + 1):
            first = False
            try:
                resp = await http.request(b.host, b.port, "POST", "/v1" + api, body, self.headers(request_id))
                if resp.status >= 400:
                    data = await resp.read()
                    err = BackendStatus(resp.status, data, f"http://{b.host}:{b.port}/v1{api}")
                    if resp.status == 400 or attempt == attempts:
                        raise err
                    self.log.warning(f"Attempt {attempt} failed for streaming {api}: {err}")
                else:
                    async for piece in resp.iter_bytes():
                        first = True
                        yield piece
                    return
            except BackendStatus:
                raise
            except (OSError, asyncio.IncompleteReadError, http.HTTPError, ValueError) as e:
                if first:
                    self.log.error(f"Streaming to client interrupted after response started: {_exc_text(e)}")
                    return
                if attempt == attempts:
                    raise
                self.log.warning(f"Attempt {attempt} failed for streaming {api}: {_exc_text(e)}")
            await asyncio.sleep(self.args.retry_delay * (2 ** (attempt - 1)))

    # endpoints -----------------------------------------------------------------------------
    async def handle(self, req: http.Request) -> http.Response:
        resp = await self.route(req)
        _uvicorn(f'{req.headers.get("host", "-")} - "{req.method} {req.path} HTTP/1.1" {resp.status} '
                 f'{http.REASONS.get(resp.status, "")}')
        return resp

    async def route(self, req: http.Request) -> http.Response:
        path, method = req.path, req.method
        if path == "/healthcheck" and method == "GET":
            out = {"status": "ok", "prefill_instances": len(self.prefillers), "decode_instances": len(self.decoders)}
            if not self.layerwise:
                out["request_num"] = self.request_num
            return http.json_response(out)
        if path in ("/v1/completions", "/v1/chat/completions") and method == "POST":
            api = "/chat/completions" if "chat" in path else "/completions"
            if self.layerwise:
                return await self.completions_layerwise(api, req)
            return await self.completions(api, req)
        if path == "/v1/models" and method == "GET" and not self.layerwise:
            return await self.models()
        if path == "/v1/metaserver" and method == "POST" and self.layerwise:
            return await self.metaserver(req)
        if path == "/reset_prefix_cache" and method == "POST":
            return await self.reset_prefix_cache(req)
        if path in ("/instances/add", "/instances/remove") and method == "POST" and not self.layerwise:
            return await self.adjust(path.rsplit("/", 1)[1], req)
        if path in ("/healthcheck", "/v1/completions", "/v1/chat/completions", "/v1/models", "/reset_prefix_cache"):
            return http.json_response({"detail": "Method Not Allowed"}, 405)
        return http.json_response({"detail": "Not Found"}, 404)

    def _print_error(self, api: str) -> None:
        print(f"Error occurred in disagg prefill proxy server - {api} endpoint", flush=True)
        print(traceback.format_exc(), flush=True)

    async def completions(self, api: str, req: http.Request) -> http.Response:
        try:
            req_data = req.json()
        except ValueError:
            self._print_error(api)
            return http.text_response("Internal Server Error", 500)
        length = len(req.body)
        p_score, d_score = prefill_score(length), float(length)
        request_id = str(uuid.uuid4())
        self.request_num += 1
        try:
            prefiller = self.pick(self.prefillers, True)
        except RuntimeError:
            self._print_error(api)
            return http.text_response("Internal Server Error", 500)
        prefiller.active_tokens += p_score
        prefiller.active_kv += p_score
        payload = dict(req_data)
        payload["kv_transfer_params"] = {"do_remote_decode": True, "do_remote_prefill": False,
                                         "remote_engine_id": None, "remote_block_ids": None, "remote_host": None,
                                         "remote_port": None}
        payload["stream"] = False
        payload["max_tokens"] = 1
        payload["min_tokens"] = 1
        if "max_completion_tokens" in payload:
            payload["max_completion_tokens"] = 1
        payload.pop("stream_options", None)
        released = {"kv": False}

        def release_kv() -> None:
            if not released["kv"]:
                prefiller.active_kv -= p_score
                released["kv"] = True
        try:
            response_json = await self.post_prefill(prefiller, api, payload, request_id)
        except BackendStatus as e:
            self._print_error(api)
            prefiller.active_tokens -= p_score
            release_kv()
            try:
                err_body = json.loads(e.body)
            except ValueError:
                err_body = {"error": {"message": e.body.decode(errors="replace") or "upstream error"}}
            return http.json_response(err_body, e.status)
        except Exception:
            self._print_error(api)
            prefiller.active_tokens -= p_score
            release_kv()
            return http.text_response("Internal Server Error", 500)
        kv = response_json.get("kv_transfer_params", {}) if isinstance(response_json, dict) else {}
        if kv:
            req_data["kv_transfer_params"] = kv
        cached = (((response_json.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
                  if isinstance(response_json, dict) else None)
        cached = cached if isinstance(cached, int) else 0
        decoder = self.pick(self.decoders, False) if self.decoders else None
        if decoder is None:
            self._print_error(api)
            prefiller.active_tokens -= p_score
            release_kv()
            return http.text_response("Internal Server Error", 500)
        decoder.active_tokens += d_score
        stream_flag = bool(req_data.get("stream", False))

        async def generate():
            try:
                async for chunk in self.stream_decoder(decoder, api, req_data, request_id):
                    if chunk:
                        release_kv()
                    try:
                        chunk_str = chunk.decode("utf-8").strip()
                    except UnicodeDecodeError:
                        yield chunk
                        continue
                    if not chunk_str:
                        continue
                    is_sse = chunk_str.startswith("data: ")
                    if is_sse:
                        chunk_str = chunk_str[len("data: "):]
                    try:
                        chunk_json = json.loads(chunk_str)
                    except ValueError:
                        yield chunk
                        continue
                    choices = chunk_json.get("choices", []) if isinstance(chunk_json, dict) else []
                    if isinstance(chunk_json, dict) and (not choices or not stream_flag):
                        if _update_cached(chunk_json, cached):
                            chunk = _encode(chunk_json, is_sse)
                            if not choices:
                                yield chunk
                                continue
                    yield chunk
            except asyncio.CancelledError:
                self.log.warning(f"Streaming from decoder {decoder.host}:{decoder.port} was cancelled; releasing "
                                 f"request {request_id} resources")
                raise
            except Exception as exc:
                self.log.error(f"Error during streaming from decoder {decoder.host}:{decoder.port}: "
                               f"{_exc_text(exc)} while handling request {request_id}; releasing prefiller KV")
            finally:
                release_kv()
                prefiller.active_tokens -= p_score
                decoder.active_tokens -= d_score
        media = "text/event-stream; charset=utf-8" if stream_flag else "application/json"
        return http.Response(200, content_type=media, stream=generate())

    async def completions_layerwise(self, api: str, req: http.Request) -> http.Response:
        try:
            req_data = req.json()
            if not isinstance(req_data, dict):
                raise ValueError("not an object")
        except ValueError:
            self._print_error(api)
            return http.text_response("Internal Server Error", 500)
        length = len(req.body)
        request_id = str(uuid.uuid4())
        if api == "/completions":
            prompt = req_data.get("prompt")
            tokens = isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
            count = len(prompt) if isinstance(prompt, list) and prompt and not tokens else 1
            ids = [f"cmpl-{request_id}-{i}" for i in range(count)]
        else:
            ids = [f"chatcmpl-{request_id}"]
        for rid in ids:
            self.meta[rid] = {"req": dict(req_data), "length": length, "api": api, "parent": request_id,
                              "event": asyncio.Event(), "task": None}
        req_data["kv_transfer_params"] = {"do_remote_decode": False, "do_remote_prefill": True,
                                          "metaserver": f"http://{self.args.host}:{self.args.port}/v1/metaserver"}
        d_score = float(length)
        try:
            decoder = self.pick(self.decoders, False)
        except RuntimeError:
            self._print_error(api)
            return http.text_response("Internal Server Error", 500)
        decoder.active_tokens += d_score
        stream_flag = bool(req_data.get("stream", False))

        async def generate():
            try:
                async for chunk in self.stream_decoder(decoder, api, req_data, request_id):
                    yield chunk
            except Exception as e:
                self.log.error(f"Error during streaming from decoder http://{decoder.host}:{decoder.port}/v1: "
                               f"{_exc_text(e)} the aborted request {request_id} will be routing to the target "
                               "prefiller when new request is ready to dispatch to it")
            finally:
                decoder.active_tokens -= d_score
                for rid in ids:
                    self.meta.pop(rid, None)
        media = "text/event-stream" if stream_flag else "application/json"
        return http.Response(200, content_type=media, stream=generate())

    async def metaserver(self, req: http.Request) -> http.Response:
        try:
            params = req.json()
        except ValueError:
            return http.json_response({"detail": "bad body"}, 400)
        rid = params.get("request_id") if isinstance(params, dict) else None
        rec = self.meta.get(rid) if isinstance(rid, str) else None
        if rec is None:
            return http.json_response({"detail": f"Unknown metaserver request_id: {rid!r}"}, 404)
        if rec["task"] is None:
            rec["task"] = asyncio.ensure_future(self.dispatch_prefill(rec, params))
        try:
            await asyncio.shield(rec["task"])
        except Exception as error:
            self.log.error(f"Post metaserver failed for parent request {rec['parent']}")
            return http.json_response({"detail": _exc_text(error)}, 502)
        return http.json_response({"status": "ok"})

    async def dispatch_prefill(self, rec: dict, params: dict) -> None:
        score = prefill_score(rec["length"])
        prefiller = self.pick(self.prefillers, True)
        prefiller.active_tokens += score
        try:
            payload = dict(rec["req"])
            payload["kv_transfer_params"] = params
            payload["stream"] = False
            payload["max_tokens"] = 1
            payload["min_tokens"] = 1
            if "max_completion_tokens" in payload:
                payload["max_completion_tokens"] = 1
            payload.pop("stream_options", None)
            await self.post_prefill(prefiller, rec["api"], payload, rec["parent"])
        finally:
            prefiller.active_tokens -= score

    async def models(self) -> http.Response:
        failures = []
        for b in self.prefillers + self.decoders:
            try:
                resp = await http.request(b.host, b.port, "GET", "/v1/models", None,
                                          self.headers(str(uuid.uuid4())), timeout=3.0)
                data = await asyncio.wait_for(resp.read(), 3.0)
                if resp.status == 200:
                    return http.Response(200, data, "application/json")
                self.log.warning(f"GET /models from {b.host}:{b.port} failed: HTTP {resp.status}")
            except (TimeoutError, OSError, asyncio.IncompleteReadError, http.HTTPError, ValueError) as e:
                self.log.warning(f"GET /models from {b.host}:{b.port} failed: {_exc_text(e)}")
            failures.append(f"{b.host}:{b.port}")
        if not self.prefillers and not self.decoders:
            return http.json_response({"error": "No available backend instances"}, 503)
        return http.json_response({"error": "All backend instances failed to serve /v1/models", "failed": failures},
                                  503)

    async def reset_prefix_cache(self, req: http.Request) -> http.Response:
        failures = []
        for b in self.prefillers + self.decoders:
            url = f"http://{b.host}:{b.port}"
            try:
                resp = await http.request(b.host, b.port, "POST", "/reset_prefix_cache" +
                                          (f"?{req.query}" if req.query else ""), b"")
                await resp.read()
                if resp.status >= 400:
                    raise OSError(f"HTTP {resp.status}")
            except (OSError, asyncio.IncompleteReadError, http.HTTPError, ValueError) as e:
                self.log.error(f"reset_prefix_cache failed for {url}: {_exc_text(e)}")
                failures.append(url)
        if failures:
            return http.json_response({"failed": failures}, 500)
        return http.Response(200, b"", None)

    async def adjust(self, mode: str, req: http.Request) -> http.Response:
        try:
            data = req.json()
            kind = data.get("type", "")
            inst = data.get("instances", [])
            if isinstance(inst, str):
                inst = [inst]
            parsed = [(h, int(p)) for h, p in (i.split(":") for i in inst)]
        except (ValueError, AttributeError, TypeError):
            return http.text_response("Internal Server Error", 500)
        msg = f"{mode} {kind} instances: {[f'{h}:{p}' for h, p in parsed]}."
        if kind not in ("prefill", "decode"):
            return http.json_response({"error": f"Instance type {kind!r} is not supported. Only 'prefill' and "
                                                "'decode' are allowed."})
        pool = self.prefillers if kind == "prefill" else self.decoders
        if mode == "add":
            waiting = []
            for h, p in parsed:
                key = Backend(h, p, 0).key
                if key not in {b.key for b in pool} and key not in self.waiting:
                    self.waiting[key] = (kind, (h, p), 0)
                    waiting.append(key)
                    asyncio.ensure_future(self.probe(key))
            if waiting:
                msg = f"Instances {waiting} are waiting to be added."
        else:
            keys = {Backend(h, p, 0).key for h, p in parsed}
            pool[:] = [b for b in pool if b.key not in keys]
        return http.json_response({"message": msg,
                                   "current_prefill_instances": [f"{b.host}:{b.port}" for b in self.prefillers],
                                   "current_decode_instances": [f"{b.host}:{b.port}" for b in self.decoders]})

    async def probe(self, key: str) -> None:
        """Instances added at run time join once GET /v1/models answers (5 s timeout)."""
        kind, (h, p), _ = self.waiting[key]
        for _try in range(max(1, self.args.max_waiting_retries)):
            try:
                resp = await http.request(h, p, "GET", "/v1/models", None, timeout=5.0)
                await resp.read()
                if resp.status == 200:
                    self._add(self.prefillers if kind == "prefill" else self.decoders, h, p)
                    self.waiting.pop(key, None)
                    return
            except (TimeoutError, OSError, asyncio.IncompleteReadError, http.HTTPError, ValueError):
                pass
            await asyncio.sleep(self.args.waiting_retry_interval)
        self.waiting.pop(key, None)


class BackendStatus(Exception):
    """httpx.HTTPStatusError of upstream: an answer >= 400."""

    def __init__(self, status: int, body: bytes, url: str):
        super().__init__(f"Server error '{status} {http.REASONS.get(status, '')}' for url '{url}'"
                         if status >= 500 else
                         f"Client error '{status} {http.REASONS.get(status, '')}' for url '{url}'")
        self.status = status
        self.body = body


def _exc_text(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "All connection attempts failed"
    if isinstance(e, asyncio.IncompleteReadError):
        return "peer closed connection without sending complete message body (incomplete chunked read)"
    return str(e) or type(e).__name__


def _update_cached(chunk_json: dict, cached: int | None) -> bool:
    if cached is None:
        return False
    u = chunk_json.get("usage")
    if not isinstance(u, dict):
        return False
    details = u.get("prompt_tokens_details")
    if not isinstance(details, dict):
        details = {}
    u["prompt_tokens_details"] = details
    details["cached_tokens"] = cached
    return True


def _encode(chunk_json: dict, is_sse: bool) -> bytes:
    chunk = json.dumps(chunk_json, ensure_ascii=False).encode("utf-8")
    return b"data: " + chunk + b"\n\n" if is_sse else chunk


def _node_address() -> str:
    try:
        with open(os.path.join(os.environ.get("DEPLOY_SIM_NODE", "."), "state.json")) as f:
            return json.load(f).get("address") or "127.0.0.1"
    except (OSError, ValueError):
        return "127.0.0.1"


async def _serve(proxy: Proxy, sock: socket.socket, display: str) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = http.Server(sock, proxy.handle)
    _uvicorn(f"Started server process [{os.getpid()}]")
    _uvicorn("Waiting for application startup.")
    if proxy.layerwise:
        print(f"Initialized {len(proxy.prefillers)} prefill clients and {len(proxy.decoders)} decode clients.",
              flush=True)
    else:
        proxy.log.info(f"Initialized {len(proxy.prefillers)} prefill clients and {len(proxy.decoders)} decode "
                       f"clients in worker {os.getpid()}.")
    await server.start()
    _uvicorn("Application startup complete.")
    _uvicorn(f"Uvicorn running on http://{display}:{proxy.args.port} (Press CTRL+C to quit)")
    await stop.wait()
    _uvicorn("Shutting down")
    await server.close()
    _uvicorn("Waiting for application shutdown.")
    _uvicorn("Application shutdown complete.")
    _uvicorn(f"Finished server process [{os.getpid()}]")
    return 0


def main(argv: list[str] | None = None, layerwise: bool | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if layerwise is None:
        layerwise = ("layerwise" in os.path.basename(sys.argv[0])
                     or os.environ.get("DEPLOY_SIM_PROXY_MODE") == "layerwise")
    log = Log("load_balance_proxy_layerwise_server_example" if layerwise else "__main__")
    args = parse_args(argv, layerwise, log)
    if isinstance(args, int):
        return args
    node_address = _node_address()
    host = args.host
    bind = node_address if host in WILDCARDS else ("127.0.0.1" if host == "localhost" else host)
    sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, args.port))
    except OSError as e:
        sock.close()
        _write(f"ERROR:    [Errno {e.errno}] error while attempting to bind on address ('{bind}', {args.port}): "
               f"{e.strerror.lower() if e.strerror else e}\n")
        return 1
    proxy = Proxy(args, layerwise, node_address)
    try:
        return asyncio.run(_serve(proxy, sock, host))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
