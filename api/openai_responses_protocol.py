"""Request body of OpenAI's Responses API, POST /v1/responses (strict: unknown fields are 400s).

`input` is a string or items: messages (text content), function calls and their outputs, and reasoning items
(a response's own output sent back: accepted, and not rendered, as chat templates drop earlier thinking). Fields
the server cannot honour are accepted only empty (null, false, "", [], {}); with a value they are 400s.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from api.protocol import Empty, Metadata
from api.strict import StrictModel


class TextPart(StrictModel):
    """A text part of a message: input_text (user, system, developer) or output_text (assistant)."""

    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: Annotated[list, Empty] | None = None
    logprobs: list | None = None        # an earlier response's output sent back with its logprobs: not rendered


class MessageItem(StrictModel):
    """A message (`type` may be left out)."""

    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[TextPart]
    id: str | None = None
    status: str | None = None
    phase: Annotated[str, Empty] | None = None

    def text(self) -> str:
        """The content as one string."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(StrictModel):
    """A call the model made (from an earlier response's output)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None
    caller: Annotated[dict, Empty] | None = None
    namespace: Annotated[str, Empty] | None = None


class FunctionCallOutputItem(StrictModel):
    """The result of a call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: str | None = None


class ReasoningItem(StrictModel):
    """An earlier response's reasoning, sent back (not rendered)."""

    type: Literal["reasoning"]
    id: str
    summary: list[dict[str, Any]]
    content: list[dict[str, Any]] | None = None
    encrypted_content: Annotated[str, Empty] | None = None
    status: str | None = None


def _item_type(value: Any) -> str:
    """An input item's kind: its `type` ("message" where it has none, as OpenAI's easy input messages)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind or "message"


# Chosen by `type`, so an error names the field of the item's own kind (not of a message's).
Item = Annotated[Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
                 | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
                 | Annotated[ReasoningItem, Tag("reasoning")], Discriminator(_item_type)]


class FunctionTool(StrictModel):
    """A function the model may call (the Responses API's flat shape)."""

    type: Literal["function"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(StrictModel):
    """tool_choice naming a function."""

    type: Literal["function"]
    name: str


class TextFormat(StrictModel):
    """text.format: plain text, any JSON object, or JSON matching `schema` (which, as OpenAI's, has a name)."""

    model_config = ConfigDict(json_schema_extra={"if": {"properties": {"type": {"const": "json_schema"}}},
                                                 "then": {"required": ["name", "schema"]}})

    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _named(self) -> TextFormat:
        if self.type == "json_schema" and self.name is None:
            raise ValueError("a json_schema format needs its name")
        return self


class TextConfig(StrictModel):
    """The `text` field."""

    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None


LOGPROBS = "message.output_text.logprobs"          # the one `include` value honoured: the message's logprobs


class ResponsesRequest(StrictModel):
    """POST /v1/responses."""

    model: str
    input: Annotated[str, Field(min_length=1)] | Annotated[list[Item], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stream: bool | None = False
    store: bool | None = None
    previous_response_id: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: Metadata | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    truncation: Literal["disabled", "auto"] | None = None      # auto: the conversation's first items dropped to fit
    include: list[Literal["message.output_text.logprobs"]] | None = None      # the message's logprobs
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    reasoning: Annotated[dict, Empty] | None = None
    background: Literal[False] | None = None
    service_tier: Literal["auto", "default"] | None = None

    @field_validator("include", mode="before")
    @classmethod
    def _includable(cls, value: Any) -> Any:
        unsupported = [v for v in value if isinstance(v, str) and v != LOGPROBS] if isinstance(value, list) else []
        if unsupported:
            raise ValueError(f"only {LOGPROBS!r} can be included by this server, not {unsupported}")
        return value

    @property
    def num_logprobs(self) -> int | None:
        """How many alternatives each token's logprob lists, or None where the reply carries no logprobs: they are
        asked for by `include`, or by `top_logprobs` above 0 (a request for alternatives)."""
        if LOGPROBS in (self.include or ()) or self.top_logprobs:
            return self.top_logprobs or 0
        return None

    @field_validator("input", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value == "" or value == []:
            raise ValueError("must not be empty")
        for item in value if isinstance(value, list) else ():       # name what is unsupported (not a union error)
            kind = item.get("type") if isinstance(item, dict) else None
            if isinstance(kind, str) and kind not in ("message", "function_call", "function_call_output",
                                                      "reasoning"):
                raise ValueError(f"input items of type {kind!r} are not supported by this server")
            parts = item.get("content") if isinstance(item, dict) and kind in (None, "message") else None
            for part in parts if isinstance(parts, list) else ():
                part_kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(part_kind, str) and part_kind not in ("input_text", "output_text", "text"):
                    raise ValueError(f"content parts of type {part_kind!r} are not supported by this server")
        return value


class ResponseObject(BaseModel):
    """A Response (the body of POST /v1/responses, of GET /v1/responses/{id}, and of the stream's first and last
    events): its output items (reasoning, message, function_call) and usage, with the request's settings."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress"]
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ResponseStreamEvent(BaseModel):
    """One event of a stream (`event: <type>` and `data: <json>`), numbered by sequence_number."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int
