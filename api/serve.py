"""Load the engine and serve the app with uvicorn on a socket the command line (api/cli.py) already bound."""

from __future__ import annotations

import argparse
import logging
import socket

import uvicorn

from api.cli import engine_options, resolve_model, server_settings
from api.server import create_app
from engine import AsyncLLM

logger = logging.getLogger("api")


def serve(args: argparse.Namespace, sock: socket.socket) -> None:
    """Build the engine and the app from the parsed command line, then serve on `sock` until interrupted."""
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
        ReadyServer(config, settings.served_model_name, model, llm.max_model_len).run(sockets=[sock])
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
