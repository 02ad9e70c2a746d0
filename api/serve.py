"""Load the engine and serve the app with uvicorn on a socket the command line (api/cli.py) already bound.

Shutdown (SIGTERM or SIGINT) drains: the server stops accepting connections and new requests (503), lets the
requests in flight run for `--shutdown-timeout` seconds, then cuts the rest (a stream ends with an error event
and [DONE], a non-streamed request gets a 503 error) and waits until the engine has freed their KV blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from collections.abc import Callable

import uvicorn

from api.cli import engine_options, resolve_model, server_settings
from api.read_timeout import protocol_with_read_timeout
from api.server import create_app
from api.state import ServerState
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
                            http=protocol_with_read_timeout(args.read_timeout), log_level=args.log_level,
                            access_log=args.access_log, timeout_graceful_shutdown=_FLUSH_SECONDS)
    try:
        ReadyServer(config, app.state.server, model, args.shutdown_timeout).run(sockets=[sock])
    finally:
        llm.shutdown()


_FLUSH_SECONDS = 5      # after the drain, for the responses of cut requests to be written


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class ReadyServer(uvicorn.Server):
    """uvicorn.Server that logs one line once it listens, with the address really bound, and drains on
    shutdown."""

    def __init__(self, config: uvicorn.Config, state: ServerState, model: str, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.banner = (state.settings.served_model_name, model, state.llm.max_model_len)
        self.shutdown_timeout = shutdown_timeout

    async def startup(self, sockets: list | None = None) -> None:
        """Start listening, then say so."""
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            name, model, max_model_len = self.banner
            logger.info("ready: serving model %r (%s, max_model_len %d) at http://%s:%d", name, model,
                        max_model_len, host, port)

    async def shutdown(self, sockets: list | None = None) -> None:
        """Drain (see the module's docstring), then uvicorn's own shutdown."""
        self.state.stopping = True
        for server in self.servers:
            server.close()                          # no new connections
        for connection in list(self.server_state.connections):
            connection.shutdown()                   # idle ones close; busy ones close after their response
        await drain(self.state, self.shutdown_timeout, lambda: self.force_exit)
        await super().shutdown(sockets)


async def drain(state: ServerState, timeout: float, hurry: Callable[[], bool]) -> None:
    """Let the requests in flight finish for up to `timeout` seconds (less once `hurry()`: a second Ctrl-C), cut
    the rest, and wait (a few seconds at most) until the engine holds no KV block for them."""
    llm = state.llm
    loop = asyncio.get_running_loop()
    if llm.num_requests:
        logger.info("shutdown: %d request(s) in flight, waiting up to %g s", llm.num_requests, timeout)
    deadline = loop.time() + timeout
    while llm.num_requests and loop.time() < deadline and not hurry():
        await asyncio.sleep(0.05)
    cut = llm.abort_all("The server is shutting down.")
    if cut:
        logger.warning("shutdown: cut %d request(s) still running after %g s", cut, timeout)
    deadline = loop.time() + _FLUSH_SECONDS
    while llm.is_alive and llm.stats().kv_blocks_used and loop.time() < deadline:
        await asyncio.sleep(0.02)
    stats = llm.stats()
    logger.info("shutdown: %d of %d KV blocks in use", stats.kv_blocks_used, stats.kv_blocks_total)
