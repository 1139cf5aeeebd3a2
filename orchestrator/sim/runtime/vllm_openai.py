"""OpenAI-compatible bodies of the fake vLLM: deterministic text (so tests can assert it), the
response and Server-Sent-Event chunk shapes of vLLM's OpenAI server (completions and chat), the P/D
kv_transfer_params, and the Prometheus /metrics text with vLLM's metric names and labels.

Streaming as vLLM does it: one `data: {json}\\n\\n` event per token, the last one with a
finish_reason, an optional usage-only chunk (stream_options.include_usage) and `data: [DONE]\\n\\n`.
"""
from __future__ import annotations

import json
import time
import uuid
import zlib

WORDS = ("Ascend", "serves", "tokens", "from", "the", "simulated", "NPU", "cluster", "with", "prefill", "and",
         "decode", "ranks", "in", "step", "while", "HCCL", "links", "stay", "up")


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def prompt_text(body: dict) -> str:
    if "messages" in body:
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content") if isinstance(m, dict) else ""
            if isinstance(c, list):
                c = " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
            parts.append(str(c or ""))
        return "\n".join(parts)
    p = body.get("prompt", "")
    if isinstance(p, list):
        if p and isinstance(p[0], str):
            return p[0]
        return " ".join(str(x) for x in p)
    return str(p)


def count_prompt_tokens(body: dict) -> int:
    p = body.get("prompt")
    if isinstance(p, list) and p and isinstance(p[0], int):
        return len(p)
    n = len(prompt_text(body).split())
    if "messages" in body:
        n += 4 * len(body.get("messages") or [])
    return max(1, n)


def tokens_for(prompt: str, n: int, garbage: bool = False) -> list[str]:
    """The deterministic continuation of `prompt`: the same on every rank, so a decode rank
    continues what its prefill rank started. `garbage`: what a rank whose HCCL could not find its
    device IPs produces (vllm-ascend#7711: first token wrong, then repetition)."""
    if garbage:
        return [" ?"] + [" !"] * max(0, n - 1)
    h = zlib.crc32(prompt.encode())
    return [" " + WORDS[(h + i) % len(WORDS)] for i in range(n)]


def max_tokens(body: dict, max_model_len: int, prompt_tokens: int) -> int:
    n = body.get("max_completion_tokens") if "messages" in body else None
    if n is None:
        n = body.get("max_tokens")
    if n is None:
        n = 16
    return max(0, min(int(n), max(0, max_model_len - prompt_tokens)))


def request_id(chat: bool, header: str | None) -> str:
    base = header or uuid.uuid4().hex
    return f"chatcmpl-{base}" if chat else f"cmpl-{base}"


def usage(p: int, c: int) -> dict:
    return {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c, "prompt_tokens_details": None}


def full_response(chat: bool, rid: str, model: str, toks: list[str], p: int, kv: dict | None) -> dict:
    created = int(time.time())
    text = "".join(toks)
    if chat:
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                                      "annotations": None, "audio": None, "function_call": None,
                                                      "tool_calls": [], "reasoning_content": None},
                             "logprobs": None, "finish_reason": "length", "stop_reason": None}],
                "service_tier": None, "system_fingerprint": None, "usage": usage(p, len(toks)),
                "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": kv}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                         "stop_reason": None, "prompt_logprobs": None}],
            "service_tier": None, "system_fingerprint": None, "usage": usage(p, len(toks)),
            "kv_transfer_params": kv}


def sse_events(chat: bool, rid: str, model: str, toks: list[str], p: int, include_usage: bool) -> list[bytes]:
    """vLLM's serving_completion dumps its chunks with exclude_unset=False (every field, "usage":
    null), serving_chat with exclude_unset=True (only what was set)."""
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    out = []

    def ev(choices: list[dict], **more) -> None:
        out.append(b"data: " + _dumps({"id": rid, "object": obj, "created": created, "model": model,
                                       "choices": choices, **more}).encode() + b"\n\n")
    if chat:
        ev([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    for i, t in enumerate(toks or [""]):
        last = i == max(0, len(toks) - 1)
        reason = "length" if last else None
        if chat:
            choice = {"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": reason}
            if last:
                choice["stop_reason"] = None
            ev([choice])
        else:
            ev([{"index": 0, "text": t, "logprobs": None, "finish_reason": reason, "stop_reason": None}], usage=None)
    if include_usage:
        ev([], usage=usage(p, len(toks)))
    out.append(b"data: [DONE]\n\n")
    return out


def error_body(message: str, kind: str, code: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Metrics:
    """The counters and gauges behind /metrics (labels model_name, engine: vLLM's)."""

    def __init__(self, model: str, engines: list[int], max_num_seqs: int):
        self.model = model
        self.engines = engines or [0]
        self.max_num_seqs = max(1, max_num_seqs)
        self.running = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = 0

    def text(self) -> str:
        lines = []

        def metric(name: str, kind: str, help_: str, value_of) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for e in self.engines:
                lines.append(f'{name}{{engine="{e}",model_name="{self.model}"}} {float(value_of(e))}')
        first = self.engines[0]
        metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
               lambda e: self.running if e == first else 0)
        metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", lambda e: 0)
        metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
               lambda e: round(self.running / self.max_num_seqs, 4) if e == first else 0)
        metric("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.",
               lambda e: 0)
        metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
               lambda e: self.prompt_tokens if e == first else 0)
        metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
               lambda e: self.generation_tokens if e == first else 0)
        lines.append("# HELP vllm:request_success_total Count of successfully processed requests.")
        lines.append("# TYPE vllm:request_success_total counter")
        for e in self.engines:
            lines.append(f'vllm:request_success_total{{engine="{e}",finished_reason="length",'
                         f'model_name="{self.model}"}} {float(self.success if e == first else 0)}')
        return "\n".join(lines) + "\n"
