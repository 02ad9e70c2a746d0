"""What the routes share: the server's settings and the objects built once at startup."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from api.errors import APIError
from api.logprobs import TokenTable
from api.metrics import Metrics
from api.response_store import ResponseStore
from engine.async_llm import AsyncLLM

DEFAULT_MAX_REQUEST_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """served_model_name: the name clients send as `model` (and `aliases`, more names for it, as vLLM's several
    --served-model-name). api_key: required as a Bearer token on /v1 when
    set. max_request_bytes: larger bodies get 413. tool_call_parser: how tool calls are read for tool_choice
    "auto" (None: auto is refused)."""

    served_model_name: str
    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    tool_call_parser: str | None = None      # reads the calls of tool_choice "auto" (api/tools.py)
    reasoning_parser: str | None = None      # splits replies into reasoning_content and content (api/reasoning.py)
    return_tokens_as_token_ids: bool = False  # logprob tokens written token_id:N for every request
    trust_request_chat_template: bool = False  # a request's chat_template is rendered (else it is a 400)
    root_path: str = ""                      # the prefix a proxy serves this server under
    chat_template: str | None = None         # --chat-template: every request's template instead of the model's
    aliases: tuple[str, ...] = ()           # other names the model answers to (listed after the first)
    more_api_keys: tuple[str, ...] = ()     # --api-key k1 k2: every one is accepted
    cors: dict = field(default_factory=lambda: {    # CORSMiddleware's options; vLLM's defaults: no other origin
        "allow_origins": [], "allow_methods": ["*"], "allow_headers": ["*"], "allow_credentials": False})


@dataclass(slots=True)
class ServerState:
    """The engine, the settings, and per-server helpers (token table, metrics)."""

    llm: AsyncLLM
    settings: ServerSettings
    tokens: TokenTable
    metrics: Metrics
    created: int = field(default_factory=lambda: int(time.time()))
    stopping: bool = False          # set when shutdown begins: new work gets 503, /health turns 503
    responses: ResponseStore = field(default_factory=ResponseStore)     # the Responses API's stored responses

    @classmethod
    def build(cls, llm: AsyncLLM, settings: ServerSettings) -> ServerState:
        """Everything derived from the engine (whose tokenizer then renders with --chat-template, if given)."""
        if settings.chat_template is not None:
            llm.tokenizer.hf.chat_template = settings.chat_template
        return cls(llm, settings, TokenTable(llm.tokenizer.hf), Metrics(llm, settings.served_model_name))

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary size (token ids must be below it)."""
        return self.llm.model_config.vocab_size


SYSTEM_FINGERPRINT = "triton-serve-0.1.0"


def served_names(settings: ServerSettings) -> list[str]:
    """Every name the model answers to, the first (served_model_name) first."""
    return [settings.served_model_name, *(a for a in settings.aliases if a != settings.served_model_name)]


def model_card(state: ServerState, name: str | None = None) -> dict:
    """The served model as /v1/models lists it (under `name`, one of its names; default the first)."""
    return {"id": name or state.settings.served_model_name, "object": "model", "created": state.created,
            "owned_by": "triton-serve", "max_model_len": state.llm.max_model_len}


def server_state(request: Request) -> ServerState:
    """The ServerState of the app serving `request`."""
    return request.app.state.server


def check_model(state: ServerState, model: str) -> None:
    """404 model_not_found unless `model` is one of the served model's names."""
    names = served_names(state.settings)
    if model not in names:
        raise APIError(404, f"The model '{model}' does not exist; this server serves "
                       f"{', '.join(repr(n) for n in names)}.", "model", "model_not_found")
