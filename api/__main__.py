"""`python -m api`: serve a checkpoint over HTTP with the OpenAI protocol.

    python -m api --model PATH [--served-model-name NAME] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Logs one line when ready, with the address and the model. `--port 0` picks a free port (the line says which).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn

from api.server import create_app
from api.state import ServerSettings
from engine import DEFAULT_MODEL, AsyncLLM

logger = logging.getLogger("api")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m api", description=__doc__.split("\n")[0],
                                formatter_class=_DefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (default: the built-in default model)")
    p.add_argument("--served-model-name", default=None, help="the name clients send (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (or set API_KEY)")
    engine = p.add_argument_group("engine")
    engine.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    engine.add_argument("--device", default="auto", help="auto, cuda or cpu")
    engine.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    engine.add_argument("--kv-cache-blocks", type=int, default=None, help="KV blocks (default: sized from memory)")
    engine.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    engine.add_argument("--max-num-seqs", type=int, default=256, help="sequences running at once")
    engine.add_argument("--max-num-batched-tokens", type=int, default=2048, help="tokens per engine step")
    engine.add_argument("--no-prefix-caching", action="store_true", help="disable prefix caching")
    engine.add_argument("--seed", type=int, default=0, help="seeds requests that do not set one")
    engine.add_argument("--enforce-eager", action="store_true",
                        help="run every step eagerly (by default decode steps replay CUDA graphs on a GPU with the "
                             "Triton kernels)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-queued-seqs", type=int, default=1024,
                        help="sequences that may wait beyond the running batch; more get 429")
    limits.add_argument("--max-request-bytes", type=int, default=8 << 20, help="larger bodies get 413")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def resolve_model(model: str | None) -> str:
    """The checkpoint to serve: --model, or the built-in default, which must exist."""
    if model is None:
        if not (Path(DEFAULT_MODEL) / "config.json").is_file():
            raise SystemExit(f"error: the built-in default model is not available ({DEFAULT_MODEL} has no "
                             "config.json); pass --model PATH to serve a checkpoint")
        return DEFAULT_MODEL
    if not (Path(model) / "config.json").is_file():
        raise SystemExit(f"error: --model {model!r} is not a checkpoint directory (no config.json)")
    return model


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)


def server_settings(args: argparse.Namespace, model: str) -> ServerSettings:
    """The served name (default: the checkpoint directory's name), the API key (--api-key, else the API_KEY
    environment variable) and the body size limit."""
    name = args.served_model_name or Path(model).resolve().name
    return ServerSettings(name, args.api_key or os.environ.get("API_KEY") or None, args.max_request_bytes)


def engine_options(args: argparse.Namespace) -> dict:
    """AsyncLLM's keyword options from the command line."""
    return dict(dtype=args.dtype, device=args.device, max_model_len=args.max_model_len, block_size=args.block_size,
                kv_cache_blocks=args.kv_cache_blocks, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=not args.no_prefix_caching,
                seed=args.seed, cuda_graphs=False if args.enforce_eager else None,
                max_queued_seqs=args.max_queued_seqs)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, load the model and serve until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    model = resolve_model(args.model)
    try:
        llm = AsyncLLM(model, **engine_options(args))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    settings = server_settings(args, model)
    app = create_app(llm, settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, loop=_loop(), log_config=None,
                            log_level=args.log_level, access_log=args.access_log, timeout_graceful_shutdown=5)
    try:
        ReadyServer(config, settings.served_model_name, model, llm.max_model_len).run()
    finally:
        llm.shutdown()


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class ReadyServer(uvicorn.Server):
    """uvicorn.Server that logs one line once it listens, with the address really bound."""

    def __init__(self, config: uvicorn.Config, name: str, model: str, max_model_len: int) -> None:
        super().__init__(config)
        self.banner = (name, model, max_model_len)

    async def startup(self, sockets: list | None = None) -> None:
        """Start listening, then say so."""
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            name, model, max_model_len = self.banner
            logger.info("ready: serving model %r (%s, max_model_len %d) at http://%s:%d", name, model,
                        max_model_len, host, port)


if __name__ == "__main__":
    main()
