"""vLLM's utility routes: POST /tokenize (a prompt, or messages rendered with the chat template) and POST
/detokenize, GET /v1/models/{model} and GET /version. Like vLLM's, /tokenize and /detokenize sit outside /v1, so
the API key does not apply to them."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Discriminator, Field, Tag

from api.errors import bad_request
from api.protocol import ChatMessage, TokenId
from api.responses import ModelCard, errors
from api.sampling import template_inputs
from api.state import check_model, model_card, server_state
from api.strict import StrictModel
from api.tools import Tool

VERSION = "0.1.0"

router = APIRouter()


class TokenizeCompletionRequest(StrictModel):
    """/tokenize of a prompt."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(StrictModel):
    """/tokenize of a conversation, rendered as /v1/chat/completions renders it."""

    model_config = ConfigDict(json_schema_extra={"allOf": [          # continuing the last message opens no turn
        {"if": {"required": ["continue_final_message"], "properties": {"continue_final_message": {"const": True}}},
         "then": {"required": ["add_generation_prompt"], "properties": {"add_generation_prompt": {"const": False}}}}]})

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: Annotated[str, Field(min_length=1)] | None = None   # as chat's: with --trust-request-chat-template
    tools: list[Tool] | None = None


def _tokenize_kind(value: Any) -> str:
    """Which /tokenize request a body is: a conversation where it has messages, else a prompt."""
    has = "messages" in value if isinstance(value, dict) else hasattr(value, "messages")
    return "chat" if has else "prompt"


# Chosen by the body's shape, so an error names the field of that kind (not "missing prompt" for a bad message).
TokenizeRequest = Annotated[Annotated[TokenizeCompletionRequest, Tag("prompt")]
                            | Annotated[TokenizeChatRequest, Tag("chat")], Discriminator(_tokenize_kind)]


class TokenizeResponse(StrictModel):
    """The token ids, their count, the context length, and (return_token_strs) each token's string."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(StrictModel):
    """/detokenize: token ids to text."""

    model: str | None = None
    tokens: list[TokenId]           # none at all: "" (as vLLM)


class DetokenizeResponse(StrictModel):
    """The text of the token ids."""

    prompt: str


class VersionResponse(StrictModel):
    """The server's version."""

    version: str


@router.post("/tokenize", response_model=TokenizeResponse, responses=errors(400, 404, 413, 500))
async def tokenize(body: TokenizeRequest, request: Request) -> JSONResponse:
    """The token ids of a prompt, or of a conversation rendered with the chat template."""
    state = server_state(request)
    if body.model is not None:
        check_model(state, body.model)
    tokenizer = state.llm.tokenizer
    if isinstance(body, TokenizeChatRequest):
        if body.continue_final_message and body.add_generation_prompt:
            raise bad_request("continue_final_message and add_generation_prompt cannot both be true.",
                              "continue_final_message")
        if body.chat_template is not None and not state.settings.trust_request_chat_template:
            raise bad_request("This server does not render a request's own chat_template; start it with "
                              "--trust-request-chat-template to allow it.", "chat_template")
        messages, tools = template_inputs(body.messages, body.tools)

        def render() -> list[int]:
            text = tokenizer.render_chat(messages, body.add_generation_prompt, tools, body.chat_template_kwargs,
                                         continue_final_message=body.continue_final_message,
                                         chat_template=body.chat_template)
            return tokenizer.encode(text, add_special_tokens=body.add_special_tokens)
        try:
            ids = await asyncio.to_thread(render)
        except Exception as exc:        # no template, or one that refuses these messages
            raise bad_request(f"The chat template could not render the messages: {exc}", "messages") from exc
    else:
        ids = await asyncio.to_thread(tokenizer.encode, body.prompt, None, body.add_special_tokens)
    strs = [tokenizer.hf.convert_ids_to_tokens(i) for i in ids] if body.return_token_strs else None
    return JSONResponse({"count": len(ids), "max_model_len": state.llm.max_model_len, "tokens": ids,
                         "token_strs": strs})


@router.post("/detokenize", response_model=DetokenizeResponse, responses=errors(400, 404, 413, 500))
async def detokenize(body: DetokenizeRequest, request: Request) -> JSONResponse:
    """The text of token ids (special tokens included)."""
    state = server_state(request)
    if body.model is not None:
        check_model(state, body.model)
    if max(body.tokens, default=0) >= state.vocab_size:
        raise bad_request(f"Token ids must be below the vocabulary size {state.vocab_size}.", "tokens")
    return JSONResponse({"prompt": state.llm.tokenizer.decode(body.tokens, skip_special_tokens=False)})


@router.get("/v1/models/{model:path}", response_model=None, responses={200: {"model": ModelCard}, **errors(404, 500)})
async def retrieve_model(model: str, request: Request) -> JSONResponse:
    """The served model's card under that name; 404 model_not_found for a name it does not answer to."""
    state = server_state(request)
    check_model(state, model)
    return JSONResponse(model_card(state, model))


@router.get("/version", response_model=VersionResponse, responses=errors(500))
async def version() -> JSONResponse:
    """The server's version."""
    return JSONResponse({"version": VERSION})
