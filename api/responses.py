"""Response shapes, for the OpenAPI description (the routes build plain dicts, which is faster)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel


class CompletionTokensDetails(BaseModel):
    """What the completion tokens were spent on: thinking (with a reasoning parser)."""

    reasoning_tokens: int


class PromptTokensDetails(BaseModel):
    """Where the prompt tokens came from: cached_tokens were served from the prefix cache."""

    cached_tokens: int


class Usage(BaseModel):
    """Token counts: prompts once each, completions summed over all generated choices."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class PromptLogprob(BaseModel):
    """vLLM's: a prompt position's token (or an alternative), its logprob, rank and text."""

    logprob: float
    rank: int
    decoded_token: str


# Per prompt token (the first null), token id -> its entry: the prompt's token and the k most likely.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class StopFields(BaseModel):
    """Why a choice stopped: vLLM's stop_reason (the stop string or token id; null for EOS and length) and
    SGLang's matched_stop (the same, or the EOS token id)."""

    stop_reason: str | int | None = None
    matched_stop: str | int | None = None


class LegacyLogprobs(BaseModel):
    """Completions logprobs; with echo the first prompt token's entries are null."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(StopFields):
    """One completion."""

    index: int
    text: str
    logprobs: LegacyLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    prompt_logprobs: PromptLogprobs | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class Generated(BaseModel):
    """What every generation body and streamed chunk carries; with perf_metrics_in_response, the body (or the
    stream's last chunk) carries Fireworks' perf_metrics: prompt-tokens, cached-prompt-tokens,
    server-time-to-first-token, server-processing-time, prefill-queue-duration, prefill-duration (seconds)."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None = None
    perf_metrics: dict[str, float] | None = None


class CompletionResponse(Generated):
    """The body of /v1/completions (a streamed chunk has the same shape, one choice at a time)."""

    object: Literal["text_completion"]
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


class CalledFunctionOut(BaseModel):
    """A called function: its name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCallOut(BaseModel):
    """One tool call of a reply."""

    id: str
    type: Literal["function"]
    function: CalledFunctionOut


class ChatMessageOut(BaseModel):
    """The assistant's reply: its text, or (with tools) the calls it makes and any text beside them."""

    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoiceBase(StopFields):
    """What a reply and a streamed part of one carry."""

    index: int
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    token_ids: list[int] | None = None


class ChatChoice(ChatChoiceBase):
    """One reply."""

    message: ChatMessageOut


class ChatCompletionResponse(Generated):
    """The body of /v1/chat/completions (streamed as chat.completion.chunk objects with `delta`s)."""

    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: PromptLogprobs | None = None
    prompt_token_ids: list[int] | None = None


class CalledFunctionDelta(BaseModel):
    """A part of a streamed call: the name comes first (arguments ""), then the arguments."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A part of a streamed tool call; `index` says which call of the choice."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: CalledFunctionDelta


class ChatDelta(BaseModel):
    """What a streamed chunk adds to its choice: each choice's first chunk has the role, the others content or
    parts of tool calls."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(ChatChoiceBase):
    """One choice's part of a streamed chat chunk."""

    delta: ChatDelta


class ChatCompletionChunk(Generated):
    """A chunk of a streamed /v1/chat/completions; a last one with `choices: []` may carry the usage."""

    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = None


STREAMED = (CompletionResponse, ChatCompletionChunk)          # the chunk models; see api/openapi.py


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


class HealthResponse(BaseModel):
    """GET /health while the engine runs."""

    status: Literal["ok"]


class LoadResponse(BaseModel):
    """GET /load: the engine requests in flight."""

    server_load: int


ERRORS = {400: "Invalid request: bad JSON, wrong types, out-of-range or unsupported parameters, a rule across "
               "fields, token ids outside the vocabulary, context too long",
          401: "Missing or wrong API key", 404: "Unknown model", 413: "Request body too large",
          429: "Server overloaded: the waiting queue is full (retry after the `retry-after` header's seconds)",
          500: "Unexpected server error", 503: "The engine is not running",
          529: "Overloaded: the waiting queue is full (Anthropic's status for it; retry after `retry-after`)"}


def errors(*statuses: int) -> dict[int | str, dict]:
    """The documented error responses of a route: the envelope, with what each status means."""
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses}


def named_event_stream(body: type[BaseModel], event: str, description: str) -> dict:
    """A 200 of `body` as JSON, or with `stream: true` server-sent events each an `event:` line and `data:` holding
    the `event` schema (Anthropic's and the Responses API's framing, `api.streaming.named_events`)."""
    item = {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"type": "string"},
                           "data": {"type": "string", "contentMediaType": "application/json",
                                    "contentSchema": {"$ref": f"#/components/schemas/{event}"}}}}
    return {"model": body, "description": description, "content": {"text/event-stream": {"itemSchema": item}}}


def generation_responses(body: Any, *chunks: type[BaseModel]) -> dict[int | str, dict]:
    """The responses of a generation route: `body` (a model, or a union of them) as JSON, or with `stream: true`
    server-sent events, each `data: ` and one of the `chunks` (`body`'s by default; or the error envelope, when the
    engine fails mid-stream), the last `data: [DONE]`. The events are described the way FastAPI describes its own
    (`itemSchema`, one event)."""
    members = chunks or get_args(body) or (body,)
    payload = {"anyOf": [*({"$ref": f"#/components/schemas/{chunk.__name__}"} for chunk in members),
                         {"$ref": "#/components/schemas/ErrorResponse"}]}
    data = {"anyOf": [{"const": "[DONE]"},
                      {"type": "string", "contentMediaType": "application/json", "contentSchema": payload}]}
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {200: {"model": body, "description": "The result, or with `stream: true` its chunks as server-sent events",
                  "content": {"text/event-stream": {"itemSchema": event}}},
            **errors(400, 404, 413, 429, 500, 503)}
