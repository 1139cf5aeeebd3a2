"""`vllm serve` command line of the fake vLLM: the flags deploy emits and the seed guides use, with
vLLM's spellings, aliases and rejections.

An unknown flag fails exactly like vLLM's argparse front end:

    usage: vllm serve [model_tag] [options]
    vllm serve: error: unrecognized arguments: --x

(rc 2). Like vLLM's FlexibleArgumentParser, `--max_model_len` is read as `--max-model-len`.
The load-balancing rules are those of vllm/entrypoints/cli/serve.py (ServeSubcommand.cmd and
run_headless); the kv_connector_extra_config rule is vllm-ascend's check_kv_extra_config.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field


def loads(text: str):
    """JSON flag values (--kv-transfer-config '{...}'); argparse names this function in errors."""
    return json.loads(text)


def _bool_opt(p: argparse.ArgumentParser, name: str, default=None, *aliases: str) -> None:
    p.add_argument(name, *aliases, action=argparse.BooleanOptionalAction, default=default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm serve", usage="vllm serve [model_tag] [options]", add_help=True,
                                allow_abbrev=False)
    p.add_argument("model_tag", nargs="?")
    p.add_argument("--model")
    # front end
    p.add_argument("--host")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--uds")
    p.add_argument("--uvicorn-log-level", default="info")
    p.add_argument("--api-key", nargs="+")
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--api-server-count", "-asc", type=int)
    p.add_argument("--headless", action="store_true")
    p.add_argument("--root-path")
    p.add_argument("--allowed-origins")
    p.add_argument("--chat-template")
    p.add_argument("--response-role", default="assistant")
    p.add_argument("--ssl-keyfile")
    p.add_argument("--ssl-certfile")
    p.add_argument("--middleware", action="append")
    p.add_argument("--log-config-file")
    p.add_argument("--max-log-len", type=int)
    p.add_argument("--shutdown-timeout", type=int, default=0)
    p.add_argument("--tool-call-parser")
    p.add_argument("--reasoning-parser")
    p.add_argument("--tool-parser-plugin")
    for name in ("--enable-auto-tool-choice", "--disable-uvicorn-access-log", "--disable-log-stats",
                 "--disable-log-requests", "--enable-log-requests", "--enable-request-id-headers",
                 "--return-tokens-as-token-ids", "--disable-frontend-multiprocessing",
                 "--enable-server-load-tracking", "--enable-force-include-usage", "--enable-prompt-tokens-details",
                 "--enable-log-outputs", "--disable-fastapi-docs"):
        p.add_argument(name, action="store_true")
    # model
    p.add_argument("--tokenizer")
    p.add_argument("--tokenizer-mode", default="auto")
    p.add_argument("--revision")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-model-len", type=str)
    p.add_argument("--quantization", "-q")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--download-dir")
    p.add_argument("--safetensors-load-strategy")
    p.add_argument("--model-loader-extra-config", type=loads)
    p.add_argument("--hf-overrides", type=loads)
    p.add_argument("--generation-config")
    p.add_argument("--override-generation-config", type=loads)
    p.add_argument("--max-logprobs", type=int)
    p.add_argument("--logits-processors", nargs="+")
    _bool_opt(p, "--trust-remote-code", False)
    _bool_opt(p, "--enforce-eager", False)
    # parallelism
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--prefill-context-parallel-size", "-pcp", type=int, default=1)
    p.add_argument("--decode-context-parallel-size", "-dcp", type=int, default=1)
    p.add_argument("--cp-kv-cache-interleave-size", type=int, default=1)
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    p.add_argument("--data-parallel-size-local", "-dpl", type=int)
    p.add_argument("--data-parallel-start-rank", "-dpr", type=int)
    p.add_argument("--data-parallel-rank", "-dpn", type=int)
    p.add_argument("--data-parallel-address", "-dpa")
    p.add_argument("--data-parallel-rpc-port", "-dpp", type=int)
    p.add_argument("--data-parallel-backend", "-dpb", default="mp", choices=["mp", "ray"])
    p.add_argument("--data-parallel-hybrid-lb", "-dph", action="store_true")
    p.add_argument("--data-parallel-external-lb", "-dpe", action="store_true")
    p.add_argument("--data-parallel-multi-port-external-lb", action="store_true")
    p.add_argument("--nnodes", "-n", type=int, default=1)
    p.add_argument("--node-rank", "-r", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=29501)
    p.add_argument("--distributed-executor-backend", choices=["mp", "ray", "uni", "external_launcher"])
    _bool_opt(p, "--enable-expert-parallel", False, "-ep")
    _bool_opt(p, "--enable-eplb", False)
    p.add_argument("--eplb-config", type=loads)
    p.add_argument("--expert-placement-strategy")
    p.add_argument("--all2all-backend")
    _bool_opt(p, "--enable-dbo", False)
    _bool_opt(p, "--disable-custom-all-reduce", False)
    p.add_argument("--worker-extension-cls")
    # cache / scheduler
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--block-size", type=int)
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--swap-space", type=float)
    p.add_argument("--cpu-offload-gb", type=float)
    p.add_argument("--num-gpu-blocks-override", type=int)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--max-num-partial-prefills", type=int)
    p.add_argument("--long-prefill-token-threshold", type=int)
    p.add_argument("--scheduling-policy", choices=["fcfs", "priority"])
    p.add_argument("--scheduler-cls")
    _bool_opt(p, "--enable-prefix-caching", None)
    _bool_opt(p, "--enable-chunked-prefill", None)
    _bool_opt(p, "--async-scheduling", None)
    _bool_opt(p, "--disable-hybrid-kv-cache-manager", False)
    _bool_opt(p, "--enable-sleep-mode", False)
    _bool_opt(p, "--calculate-kv-scales", False)
    _bool_opt(p, "--enable-prompt-embeds", False)
    # configs (JSON)
    p.add_argument("--speculative-config", type=loads)
    p.add_argument("--compilation-config", "-O", type=loads)
    p.add_argument("--additional-config", type=loads)
    p.add_argument("--kv-transfer-config", type=loads)
    p.add_argument("--kv-events-config", type=loads)
    p.add_argument("--profiler-config", type=loads)
    p.add_argument("--structured-outputs-config", type=loads)
    p.add_argument("--limit-mm-per-prompt", type=loads)
    p.add_argument("--mm-processor-kwargs", type=loads)
    # lora
    _bool_opt(p, "--enable-lora", False)
    p.add_argument("--max-lora-rank", type=int)
    p.add_argument("--lora-modules", nargs="+")
    return p


def normalize(argv: list[str]) -> list[str]:
    """FlexibleArgumentParser: `--max_model_len=1` == `--max-model-len=1`."""
    out = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            key, eq, val = tok.partition("=")
            tok = key.replace("_", "-") + eq + val
        out.append(tok)
    return out


@dataclass
class ServeConfig:
    """What one `vllm serve` process is: its model, front end, DP place and P/D role."""

    args: argparse.Namespace
    model: str
    served_names: list[str]
    dp_size: int
    dp_local: int
    dp_start: int  # first global DP rank this process hosts
    external_lb: bool
    hybrid_lb: bool
    headless: bool
    tp: int
    pp: int
    pcp: int
    nnodes: int
    node_rank: int
    kv: dict | None = None
    api_keys: list[str] = field(default_factory=list)
    env_local_rank: int | None = None  # launch by VLLM_DP_* (v0.9.1 line): the engine's local DP rank

    @property
    def world_per_engine(self) -> int:
        return self.tp * self.pp * self.pcp

    @property
    def kv_role(self) -> str | None:
        return (self.kv or {}).get("kv_role")

    @property
    def is_producer(self) -> bool:
        return self.kv_role in ("kv_producer", "kv_both")

    @property
    def is_consumer(self) -> bool:
        return self.kv_role in ("kv_consumer", "kv_both")

    def extra(self, key: str, default=None):
        return ((self.kv or {}).get("kv_connector_extra_config") or {}).get(key, default)


class ServeError(Exception):
    """A rejection: `kind` is the exception class name the real program raises."""

    def __init__(self, kind: str, message: str, where: list[tuple[str, int, str, str]] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.where = where or []


_SERVE = "/vllm-workspace/vllm/vllm/entrypoints/cli/serve.py"
_MAIN = "/vllm-workspace/vllm/vllm/entrypoints/cli/main.py"
_ASCEND = "/vllm-workspace/vllm-ascend/vllm_ascend"


def _frames(*extra: tuple[str, int, str, str]) -> list[tuple[str, int, str, str]]:
    return [("/usr/local/python3.11.14/bin/vllm", 8, "<module>", "sys.exit(main())"),
            (_MAIN, 73, "main", "args.dispatch_function(args)"), *extra]


def _env_dp(args: argparse.Namespace, env: dict[str, str]) -> int | None:
    """The v0.9.1 image's ParallelConfig patch: with VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED=1 the DP
    place comes from VLLM_DP_SIZE / _RANK / _RANK_LOCAL / _MASTER_IP / _MASTER_PORT (each rank its
    own API server). Without VLLM_DP_SIZE it silently stays DP size 1, as on the real image.
    Returns the local DP rank (which slice of the visible devices the engine takes), or None."""
    if env.get("VLLM_ASCEND_EXTERNAL_DP_LB_ENABLED") != "1" or not env.get("VLLM_DP_SIZE", "").isdigit():
        return None
    args.data_parallel_size = int(env["VLLM_DP_SIZE"])
    args.data_parallel_rank = int(env.get("VLLM_DP_RANK", "0") or 0)
    args.data_parallel_address = env.get("VLLM_DP_MASTER_IP") or args.data_parallel_address
    if env.get("VLLM_DP_MASTER_PORT", "").isdigit():
        args.data_parallel_rpc_port = int(env["VLLM_DP_MASTER_PORT"])
    local = env.get("VLLM_DP_RANK_LOCAL", "0")
    return int(local) if local.isdigit() else 0


def resolve(args: argparse.Namespace, env: dict[str, str]) -> ServeConfig:
    """The serve-time rules, in vLLM's order; raises ServeError with the real message."""
    model = args.model_tag or args.model or "Qwen/Qwen3-0.6B"
    if args.headless and args.api_server_count is not None and args.api_server_count > 0:
        raise ServeError("ValueError", f"--api-server-count={args.api_server_count} cannot be used with --headless "
                         "(no API servers are started in headless mode).",
                         _frames((_SERVE, 51, "cmd", "raise ValueError(")))
    is_external = bool(args.data_parallel_external_lb or args.data_parallel_rank is not None)
    if not args.data_parallel_hybrid_lb and not args.data_parallel_multi_port_external_lb:
        is_hybrid = args.data_parallel_start_rank is not None
    else:
        is_hybrid = bool(args.data_parallel_hybrid_lb)
    if sum([bool(args.data_parallel_multi_port_external_lb), is_external, is_hybrid]) > 1:
        raise ServeError("ValueError", "Cannot use more than one data parallel load balancing mode. Choose one of: "
                         "--data-parallel-multi-port-external-lb, --data-parallel-external-lb (or "
                         "--data-parallel-rank), --data-parallel-hybrid-lb (or --data-parallel-start-rank).",
                         _frames((_SERVE, 75, "cmd", "raise ValueError(")))
    if args.headless and args.data_parallel_hybrid_lb:
        raise ServeError("ValueError", "data_parallel_hybrid_lb is not applicable in headless mode",
                         _frames((_SERVE, 152, "cmd", "run_headless(args)"),
                                 (_SERVE, 205, "run_headless", "raise ValueError(")))
    env_local = _env_dp(args, env)
    if env_local is not None:
        is_external = True
    dp = args.data_parallel_size
    if is_external:
        dp_start = args.data_parallel_rank if args.data_parallel_rank is not None else 0
        dp_local = 1
    else:
        dp_start = args.data_parallel_start_rank or 0
        dp_local = args.data_parallel_size_local if args.data_parallel_size_local is not None else dp
    if args.headless and dp_local <= 0:
        raise ServeError("ValueError", "data_parallel_size_local must be > 0 in headless mode",
                         _frames((_SERVE, 212, "run_headless", "raise ValueError(")))
    if not 0 <= dp_start < dp or dp_start + dp_local > dp:
        raise ServeError("ValueError", f"data_parallel_rank ({dp_start}) must be in the range [0, {dp})"
                         if is_external else
                         f"data_parallel_start_rank ({dp_start}) + data_parallel_size_local ({dp_local}) "
                         f"must not exceed data_parallel_size ({dp})")
    kv = args.kv_transfer_config
    if kv is not None and not isinstance(kv, dict):
        raise ServeError("ValueError", f"Value {json.dumps(kv)} cannot be converted to KVTransferConfig.")
    cfg = ServeConfig(args=args, model=model, served_names=list(args.served_model_name or [model]), dp_size=dp,
                      dp_local=dp_local, dp_start=dp_start, external_lb=is_external, hybrid_lb=is_hybrid,
                      headless=bool(args.headless), tp=args.tensor_parallel_size, pp=args.pipeline_parallel_size,
                      pcp=args.prefill_context_parallel_size, nnodes=args.nnodes, node_rank=args.node_rank, kv=kv)
    keys = list(args.api_key or [])
    if not keys and env.get("VLLM_API_KEY"):
        keys = [env["VLLM_API_KEY"]]
    cfg.api_keys = keys
    cfg.env_local_rank = env_local
    if kv is not None:
        check_kv_extra_config(cfg)
    return cfg


def check_kv_extra_config(cfg: ServeConfig) -> None:
    """vllm_ascend/utils.py check_kv_extra_config: the producer checks "prefill", the consumer
    "decode", each against its own tensor and data parallel sizes."""
    def _check(name: str, conf: dict) -> None:
        where = _frames((f"{_ASCEND}/platform.py", 402, "check_and_update_config", "check_kv_extra_config(vllm_config)"),
                        (f"{_ASCEND}/utils.py", 1230, "_check", "raise ValueError("))
        if "tp_size" in conf and conf["tp_size"] != cfg.tp:
            raise ServeError("ValueError", f"KV transfer '{name}' config has a conflicting tensor parallel size. "
                             f"Expected {cfg.tp}, but got {conf['tp_size']}.", where)
        if "dp_size" in conf and conf["dp_size"] != cfg.dp_size:
            raise ServeError("ValueError", f"KV transfer '{name}' config has a conflicting data parallel size. "
                             f"Expected {cfg.dp_size}, but got {conf['dp_size']}.", where)
    if cfg.is_producer:
        _check("prefill", cfg.extra("prefill", {}) or {})
    if cfg.is_consumer:
        _check("decode", cfg.extra("decode", {}) or {})
