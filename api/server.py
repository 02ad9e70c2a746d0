"""The FastAPI app: OpenAI-compatible routes over an AsyncLLM, plus /health, /metrics and /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api import chat, completions, invocations, messages, openai_responses, utility
from api.errors import envelope, install_handlers
from api.metrics import CONTENT_TYPE
from api.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    HttpMetricsMiddleware,
    RequestIdMiddleware,
    TrailingSlashMiddleware,
)
from api.openapi import document
from api.responses import HealthResponse, LoadResponse, ModelList, errors
from api.state import ServerSettings, ServerState, model_card, served_names, server_state
from engine import thinking
from engine.async_llm import AsyncLLM


def create_app(llm: AsyncLLM, settings: ServerSettings) -> FastAPI:
    """An app serving `llm` under `settings.served_model_name`. The caller owns `llm` (and shuts it down)."""
    app = FastAPI(title="triton-serve", version=utility.VERSION, docs_url=None, redoc_url=None,
                  description="An OpenAI-compatible completions server (Fireworks usage semantics). Logprobs "
                              "are those of the raw model distribution, before temperature, penalties and "
                              "top-k/top-p/min-p. Bodies are read strictly: an integer is written without a fraction "
                              "(2, not 2.0). Beyond the schema, token ids must be below the model's vocabulary size, "
                              "best_of >= n, min_tokens <= max_tokens (0 with a constraint), the prompt must fit the "
                              "context, a constraint (schema, regex, grammar) must be valid, a named tool_choice must "
                              "name one of the tools, tool_choice 'auto' (the default with tools) needs a server "
                              "started with --tool-call-parser, prompt_logprobs cannot be streamed, "
                              "continue_final_message excludes add_generation_prompt and needs a last assistant "
                              "message, and a request's chat_template needs a server started with "
                              "--trust-request-chat-template (400).")
    app.root_path = settings.root_path      # the router strips it where a request has it (not the deprecated argument)
    app.state.server = ServerState.build(llm, settings)
    install_handlers(app)
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(utility.router)
    app.include_router(messages.router)
    app.include_router(openai_responses.router)
    app.include_router(invocations.router)
    app.add_api_route("/v1/models", list_models, methods=["GET"], response_model=None,
                      responses={200: {"model": ModelList}, **errors(500)})
    app.add_api_route("/health", health, methods=["GET"], response_model=None,
                      responses={200: {"model": HealthResponse}, **errors(500, 503)})
    for method in ("GET", "POST"):                                                    # SageMaker's health check
        app.add_api_route("/ping", health, methods=[method], response_model=None, operation_id=f"ping_{method}",
                          responses={200: {"model": HealthResponse}, **errors(500, 503)})
    app.add_api_route("/load", load, methods=["GET"], response_model=None,
                      responses={200: {"model": LoadResponse}, **errors(500)})
    app.add_api_route("/metrics", metrics, methods=["GET"], response_model=None, response_class=PlainTextResponse,
                      responses={200: {"description": "Prometheus text exposition format"}, **errors(500)})
    document(app, api_key=bool(settings.api_key), thinks=thinking.markers(llm.tokenizer) is not None)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_keys=[settings.api_key, *settings.more_api_keys])    # before bodies
    app.add_middleware(CORSMiddleware, **settings.cors)    # preflights answered (or refused) before the key is asked
    app.add_middleware(TrailingSlashMiddleware)
    app.add_middleware(RequestIdMiddleware)                                 # on every response
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.server.metrics)
    return app


async def list_models(request: Request) -> JSONResponse:
    """The served model."""
    state = server_state(request)
    return JSONResponse({"object": "list", "data": [model_card(state, name) for name in served_names(state.settings)]})


async def health(request: Request) -> JSONResponse:
    """200 while the engine thread is alive, 503 once it has stopped or the server is shutting down."""
    state = server_state(request)
    if state.stopping:
        return JSONResponse(envelope("The server is shutting down.", "server_error"), status_code=503)
    if state.llm.is_alive:
        return JSONResponse({"status": "ok"})
    return JSONResponse(envelope(f"The engine is not running: {state.llm.error!r}", "server_error"),
                        status_code=503)


async def load(request: Request) -> JSONResponse:
    """vLLM's load report for routers: the engine requests in flight (accepted and not yet ended)."""
    return JSONResponse({"server_load": server_state(request).llm.num_requests})


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE)
