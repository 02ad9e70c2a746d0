"""Response shapes, for the OpenAPI description (the routes build plain dicts, which is faster)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Usage(BaseModel):
    """Token counts: prompts once each, completions summed over all generated choices."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LegacyLogprobs(BaseModel):
    """Completions logprobs; with echo the first prompt token's entries are null."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    """One completion."""

    index: int
    text: str
    logprobs: LegacyLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class CompletionResponse(BaseModel):
    """The body of /v1/completions (a streamed chunk has the same shape, one choice at a time)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    """An alternative token."""

    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    """A generated token and its most likely alternatives."""

    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """Chat logprobs."""

    content: list[TokenLogprob]


class ChatMessageOut(BaseModel):
    """The assistant's reply."""

    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    """One reply."""

    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(BaseModel):
    """The body of /v1/chat/completions (streamed as chat.completion.chunk objects with `delta`s)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | None = None


class ModelCard(BaseModel):
    """A served model."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"]
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """The error fields."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The error envelope."""

    error: ErrorBody


ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "Invalid request: bad JSON, wrong types, out-of-range or unsupported parameters, context too long"),
    (401, "Missing or wrong API key"), (404, "Unknown model"), (413, "Request body too large"),
    (429, "Server overloaded: the waiting queue is full"), (500, "Unexpected server error"),
    (503, "The engine is not running"))}
