"""The server's command line: `triton-serve` and `python -m api` (the same flags).

    triton-serve [--model PATH] [--served-model-name NAME] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

What needs no model is checked first, with nothing heavy imported: `--help` and a bad flag answer at once, and
a port that is taken is an error before torch, the weights and the KV cache are loaded. The socket bound here
is the one the server then listens on (api/serve.py). `--port 0` picks a free port; the "ready" line says which.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import NoReturn

# EngineConfig's dtype names and llm_kernels' backends (both modules import torch, so they are spelled out again
# here; a test keeps the lists equal).
DTYPES = ("auto", "float32", "float16", "bfloat16", "fp32", "fp16", "bf16", "half", "float")
KERNEL_BACKENDS = ("auto", "triton", "cpu", "torch")
TOOL_CALL_PARSERS = ("hermes",)          # api.tools.PARSERS
REASONING_PARSERS = ("qwen3",)           # api.reasoning.PARSERS
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line, `PROG: error: ...`, not the usage block and then the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = "python -m api") -> argparse.ArgumentParser:
    """The command line."""
    p = _Parser(prog=prog, description=__doc__.split("\n")[0], formatter_class=_DefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (default: the built-in default model)")
    p.add_argument("--served-model-name", default=None, nargs="+", metavar="NAME",
                   help="the name clients send, or several: each is accepted, /v1/models lists them all "
                        "(default: the directory name)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--api-key", default=None, nargs="+", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1, one of several if given several (or set "
                        "API_KEY) (default: none)")
    engine = p.add_argument_group("engine")
    engine.add_argument("--dtype", default="auto", choices=DTYPES, metavar="DTYPE",
                        help="auto, float32, float16 or bfloat16 (or fp32, fp16, bf16, half, float)")
    engine.add_argument("--device", default="auto", type=_device, help="auto, cpu, cuda or cuda:N")
    engine.add_argument("--max-model-len", type=_count, default=None,
                        help="context length, as 4096, 4k (4000) or 4K (4096) (default: the model's)")
    engine.add_argument("--kv-cache-blocks", type=int, default=None,
                        help="KV blocks (default: room for max-num-seqs x max-model-len tokens, within memory)")
    engine.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    engine.add_argument("--max-num-seqs", type=int, default=256, help="sequences running at once")
    engine.add_argument("--max-num-batched-tokens", type=_count, default=2048,
                        help="tokens per engine step (2048, 2k or 2K as for --max-model-len)")
    engine.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse the KV of shared prompt prefixes (vLLM's spelling)")
    engine.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false",
                        default=argparse.SUPPRESS,
                        help="disable prefix caching (the same as --no-enable-prefix-caching)")
    engine.add_argument("--seed", type=int, default=0, help="seeds requests that do not set one")
    engine.add_argument("--enforce-eager", action="store_true",
                        help="run every step eagerly (by default decode steps replay CUDA graphs on a GPU with the "
                             "Triton kernels)")
    engine.add_argument("--cpu-threads", type=int, default=None,
                        help="torch's threads for the engine's CPU steps (default: chosen by measuring, between "
                             "one per physical core and one, which is faster beside busy processes)")
    engine.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                        help="run the model over this many processes, one device each (GPUs cuda:0..N-1, or ranks "
                             "sharing the CPU); under torchrun, ranks > 0 serve rank 0's steps and bind no port")
    engine.add_argument("--kernels", default=None, choices=KERNEL_BACKENDS,
                        help="the kernels backend, chosen once for the engine (default: LLM_KERNELS_BACKEND, else "
                             "auto: Triton on CUDA, the C and torch kernels on the CPU)")
    engine.add_argument("--speculative-config", type=_json_object, default=None, metavar="JSON",
                        help='speculative decoding, as vLLM\'s: \'{"method": "ngram", "num_speculative_tokens": 5, '
                             '"prompt_lookup_max": 4}\' or \'{"method": "draft_model", "model": PATH, '
                             '"num_speculative_tokens": 3}\' (default: none); output is the same without it')
    engine.add_argument("--generation-config", default="auto", metavar="auto|vllm|DIR",
                        help="default sampling parameters for the fields a request leaves out, as vLLM's: auto (the "
                             "model's generation_config.json: temperature, top_p, top_k, min_p, penalties, "
                             "max_new_tokens), vllm (none), or a directory with a generation_config.json")
    engine.add_argument("--override-generation-config", type=_json_object, default=None, metavar="JSON",
                        help='fields set on top of the generation config, e.g. \'{"temperature": 0.5}\' '
                             '(default: none)')
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-queued-seqs", type=int, default=1024,
                        help="sequences that may wait beyond the running batch; more get 429")
    limits.add_argument("--max-request-bytes", type=int, default=8 << 20, help="larger bodies get 413")
    limits.add_argument("--read-timeout", type=_seconds, default=30.0,
                        help="seconds for a request (headers and body) to arrive whole; a slower one gets 408 and is "
                             "disconnected (0: no limit; responses are never timed)")
    limits.add_argument("--shutdown-timeout", type=_seconds, default=5.0,
                        help="on SIGTERM, seconds the requests in flight may run before they are cut (0: cut at "
                             "once); meanwhile new connections are refused")
    p.add_argument("--enable-auto-tool-choice", action="store_true",
                   help="vLLM's flag for tool_choice 'auto': it needs --tool-call-parser, which alone enables it here")
    p.add_argument("--tool-call-parser", default=None, choices=TOOL_CALL_PARSERS,
                   help="how tool calls are read from the model's text for tool_choice 'auto' (hermes: "
                        "<tool_call>{json}</tool_call>, Qwen2.5/Qwen3 and Hermes models); without it, 'auto' is a 400")
    p.add_argument("--reasoning-parser", default=None, choices=REASONING_PARSERS,
                   help="put a chat reply's thinking in reasoning_content (qwen3: <think>...</think>)")
    p.add_argument("--return-tokens-as-token-ids", action="store_true",
                   help="write every logprob token as token_id:N (a request can ask with return_tokens_as_token_ids)")
    p.add_argument("--chat-template", default=None, metavar="FILE|TEMPLATE",
                   help="the chat template for every request, instead of the model's: a file, or the Jinja text "
                        "itself (default: the checkpoint's)")
    p.add_argument("--trust-request-chat-template", action="store_true",
                   help="render a chat request's own chat_template (without it, such a request is a 400)")
    p.add_argument("--root-path", default="", help="the path prefix a proxy serves this server under (default: none)")
    cors = p.add_argument_group("CORS (as vLLM's: no cross-origin browser access by default)")
    cors.add_argument("--allowed-origins", type=_json_list, default=[], metavar="JSON",
                      help='origins browsers may call from, e.g. \'["https://app.example"]\' or \'["*"]\'')
    cors.add_argument("--allowed-methods", type=_json_list, default=["*"], metavar="JSON")
    cors.add_argument("--allowed-headers", type=_json_list, default=["*"], metavar="JSON")
    cors.add_argument("--allow-credentials", action="store_true")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="the server's log level (warning and error hide the 'ready' line)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}


def _count(value: str) -> int:
    """An integer, or vLLM's human-readable form: 25.6k (decimal k, m, g) or 32K (binary K, M, G; whole numbers)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgKMG]?)", value.strip())
    if match is None or ("." in match[1] and match[2] not in ("k", "m", "g")):     # decimals: decimal suffixes
        raise argparse.ArgumentTypeError(f"{value!r} is not a count: use an integer, or one like 4k (4000) or 4K "
                                         "(4096)")
    return int(float(match[1]) * _SUFFIXES[match[2]]) if match[2] else int(match[1])


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0")
    return seconds


def _json_object(value: str) -> dict:
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"{value!r} is not a JSON object")
    return parsed


def _json_list(value: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
        raise argparse.ArgumentTypeError(f"{value!r} is not a JSON list of strings, e.g. '[\"*\"]'")
    return parsed


def chat_template_text(value: str) -> str:
    """--chat-template: the file's text where `value` names a file, else `value` itself if it is a Jinja
    template (as vLLM's), else a ValueError."""
    path = Path(value)
    if path.is_file():
        return path.read_text()
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(f"--chat-template {value!r} is neither a file nor a Jinja template")


def _device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    return value


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)


def resolve_model(model: str | None) -> str:
    """The checkpoint to serve: --model, or the built-in default, which must exist."""
    if model is None:
        from engine import DEFAULT_MODEL

        if not is_checkpoint(DEFAULT_MODEL):
            raise SystemExit(f"error: the built-in default model is not available ({DEFAULT_MODEL} has no "
                             "config.json); pass --model PATH to serve a checkpoint")
        return DEFAULT_MODEL
    if not is_checkpoint(model):
        raise SystemExit(f"error: --model {model!r} is not a checkpoint directory (no config.json)")
    return model


def is_checkpoint(path: str) -> bool:
    """Whether `path` is a checkpoint directory (has a config.json)."""
    return (Path(path) / "config.json").is_file()


def engine_options(args: argparse.Namespace) -> dict:
    """AsyncLLM's keyword options from the command line."""
    return dict(dtype=args.dtype, device=args.device, max_model_len=args.max_model_len, block_size=args.block_size,
                kv_cache_blocks=args.kv_cache_blocks, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=args.enable_prefix_caching,
                seed=args.seed, cuda_graphs=False if args.enforce_eager else None, cpu_threads=args.cpu_threads,
                kernels=args.kernels, tensor_parallel_size=args.tensor_parallel_size,
                speculative_config=args.speculative_config, generation_config=args.generation_config,
                override_generation_config=args.override_generation_config, max_queued_seqs=args.max_queued_seqs)


def server_settings(args: argparse.Namespace, model: str):
    """The served name (default: the checkpoint directory's name), the API key (--api-key, else the API_KEY
    environment variable) and the body size limit, as an api.state.ServerSettings."""
    from api.state import ServerSettings

    names = args.served_model_name or [Path(model).resolve().name]
    keys = args.api_key or [key for key in [os.environ.get("API_KEY")] if key]
    return ServerSettings(names[0], keys[0] if keys else None, args.max_request_bytes,
                          args.tool_call_parser, args.reasoning_parser,
                          return_tokens_as_token_ids=args.return_tokens_as_token_ids,
                          trust_request_chat_template=args.trust_request_chat_template,
                          root_path=args.root_path.rstrip("/"), aliases=tuple(names[1:]),
                          more_api_keys=tuple(keys[1:]),
                          chat_template=None if args.chat_template is None else chat_template_text(args.chat_template),
                          cors={"allow_origins": args.allowed_origins, "allow_methods": args.allowed_methods,
                                "allow_headers": args.allowed_headers, "allow_credentials": args.allow_credentials})


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and not yet listening, so that nothing connects before the server is up
    (as vLLM binds its port before it builds the engine). OSError for a port in use or a host not this
    machine's."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _serve_as_launched_worker(args: argparse.Namespace) -> None:
    """A rank > 0 under an external launcher: serve rank 0's steps until its engine stops."""
    from engine.config import EngineConfig
    from engine.tp_workers import serve_if_launched_worker

    options = {k: v for k, v in engine_options(args).items() if k != "max_queued_seqs"}
    try:
        serve_if_launched_worker(EngineConfig(model=resolve_model(args.model), **options))
    except SystemExit:
        return


def _prog() -> str:
    return "triton-serve" if Path(sys.argv[0]).name == "triton-serve" else "python -m api"


def main(argv: list[str] | None = None) -> None:
    """Parse and check the command line, take the port, then load the model and serve until interrupted."""
    parser = build_parser(_prog())
    args = parser.parse_args(argv)
    if args.model is not None and not is_checkpoint(args.model):
        parser.error(f"--model {args.model!r} is not a checkpoint directory (no config.json)")
    bounds = [("--cpu-threads", args.cpu_threads, 1), ("--tensor-parallel-size", args.tensor_parallel_size, 1),
              ("--max-num-seqs", args.max_num_seqs, 1), ("--max-num-batched-tokens", args.max_num_batched_tokens, 1),
              ("--block-size", args.block_size, 1), ("--max-model-len", args.max_model_len, 2),
              ("--kv-cache-blocks", args.kv_cache_blocks, 1), ("--max-queued-seqs", args.max_queued_seqs, 0),
              ("--max-request-bytes", args.max_request_bytes, 1)]
    for flag, value, low in bounds:
        if value is not None and value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        parser.error("--enable-auto-tool-choice needs --tool-call-parser (hermes)")
    if args.generation_config not in ("auto", "vllm") and not Path(args.generation_config).is_dir():
        parser.error(f"--generation-config must be auto, vllm or a directory, got {args.generation_config!r}")
    if args.chat_template is not None:
        try:
            chat_template_text(args.chat_template)
        except (ValueError, OSError) as exc:
            parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"
    if args.tensor_parallel_size > 1 and launched:
        _serve_as_launched_worker(args)                     # torchrun's ranks > 0: no port, no server
        return
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise SystemExit(f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: "
                         f"{exc.strerror or exc}") from None
    try:
        from api.serve import serve

        serve(args, sock)
    finally:
        sock.close()
