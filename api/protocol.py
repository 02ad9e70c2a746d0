"""Request bodies of /v1/completions and /v1/chat/completions (pydantic, strict, unknown fields rejected).

The field types are the schema /openapi.json publishes and the validation in one: ranges, lengths and the
values of unsupported parameters that are still accepted (null, empty) live in the field definitions; `before`
validators only word the errors. Rules that involve several fields live in `check()`, and those JSON Schema can
say (and schemathesis can generate from: not those of prompt_logprobs and continue_final_message) are also
published as the model's `RULES`. `null` for an optional field means "the default", except
`max_tokens`/`max_completion_tokens`, where an explicit null means "until the context is full" (see
`max_tokens_requested`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from api.errors import bad_request, unsupported
from api.strict import StrictModel
from api.structured import ResponseFormat, StructuredOutputs
from api.tools import Tool, ToolCall, ToolChoice

MAX_N = 128
MAX_LOGPROBS = 20
MAX_STOP = 4
MAX_BAD_WORDS = 128

Probability = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Text = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1)]
LogitBias = Annotated[dict[Annotated[str, Field(pattern=r"^[0-9]+$")], Annotated[float, Field(ge=-100, le=100)]],
                      Field(json_schema_extra={"additionalProperties": False})]
# OpenAI's limits: 16 pairs, keys of 64 characters, values of 512.
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]
Empty = Field(max_length=0)        # a response-only or unsupported field: accepted empty (or null), never with a value


def _present(field: str, type: str) -> dict:
    return {"required": [field], "properties": {field: {"type": type}}}


def _unsupported(what: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported", "{what} is not supported by this server", {"what": what})


def _lone_surrogate_at(value: Any, path: str = "") -> str | None:
    """Where in a parsed JSON value a string (or key) holds a lone UTF-16 surrogate, or None. JSON can escape one
    ("\\ud800"), but it is no Unicode text: no tokenizer or response can encode it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            name = key.encode("utf-8", "backslashreplace").decode() if isinstance(key, str) else str(key)
            where = f"{path}.{name}" if path else name
            if isinstance(key, str) and _lone_surrogate_at(key) is not None:
                return where
            found = _lone_surrogate_at(item, where)
            if found is not None:
                return found
        return None
    if isinstance(value, list) and value and not isinstance(value[0], (int, float)):    # token ids: no text
        for i, item in enumerate(value):
            found = _lone_surrogate_at(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


class StreamOptions(StrictModel):
    """stream_options: include_usage adds a final usage chunk; continuous_usage_stats puts usage in every
    chunk."""

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class TextRequest(StrictModel):
    """A request body whose text, nested messages included, must be valid Unicode (checked once, here: a 400 naming
    the field, as every API's bodies get)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _lone_surrogate_at(data)
        if where is not None:
            raise PydanticCustomError("lone_surrogate", "the text holds a lone UTF-16 surrogate (an unpaired "
                                      "\\ud800-\\udfff escape), which is not valid Unicode", {"where": where})
        return data


class SamplingRequest(TextRequest):
    """The fields both endpoints share: sampling, stopping, streaming and the vLLM/Fireworks extensions."""

    RULES: ClassVar[list[dict]] = [
        {"not": {"required": ["max_tokens", "max_completion_tokens"]}},
        {"not": {"required": ["response_format", "structured_outputs"]}},
        {"if": _present("stream_options", "object"),
         "then": {"required": ["stream"], "properties": {"stream": {"const": True}}}}]
    model_config = ConfigDict(json_schema_extra={"allOf": RULES})

    model: str
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: Metadata | None = None
    # vLLM / Fireworks extensions
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=2)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    context_length_exceeded_behavior: Literal["truncate", "error"] | None = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    prompt_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=1)] | None = None
    allowed_token_ids: TokenIds | None = None
    bad_words: Annotated[list[Text], Field(max_length=MAX_BAD_WORDS)] | None = None
    thinking_token_budget: Annotated[int, Field(ge=0)] | None = None
    perf_metrics_in_response: bool | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, value: Any) -> Any:
        for key, bias in value.items() if isinstance(value, dict) else ():
            if isinstance(key, str) and not (key.isascii() and key.isdigit()):
                raise ValueError(f"keys must be token ids (as strings), got {key!r}")
            if isinstance(bias, (int, float)) and not -100 <= bias <= 100:
                raise ValueError(f"values must be in [-100, 100], got {bias} for token {key}")
        return value

    @field_validator("bad_words", mode="before")
    @classmethod
    def _bad_words(cls, value: Any) -> Any:
        """Repeats are one word (as vLLM counts them), before the limit on their number."""
        return list(dict.fromkeys(value)) if isinstance(value, list) and all(isinstance(w, str) for w in value) \
            else value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        if "" in stops:
            raise ValueError("stop sequences must not be empty")
        return value

    def max_tokens_requested(self, default: int | None) -> int | None:
        """max_tokens or its alias max_completion_tokens: the value sent (null: until the context is full),
        or `default` when neither was sent."""
        if "max_completion_tokens" in self.model_fields_set:
            return self.max_completion_tokens
        if "max_tokens" in self.model_fields_set:
            return self.max_tokens
        return default

    def check(self) -> None:
        """Rules across fields; raises a 400 naming the field."""
        if "max_tokens" in self.model_fields_set and "max_completion_tokens" in self.model_fields_set:
            raise bad_request("Send max_tokens or max_completion_tokens, not both.", "max_completion_tokens")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream: true.", "stream_options")
        if self.prompt_logprobs is not None and self.stream:
            raise bad_request("prompt_logprobs are not available when stream is true.", "prompt_logprobs")


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: Text | Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    echo: bool | None = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    suffix: None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if value == "" or (isinstance(value, list) and "" in value):
            raise PydanticCustomError("prompt_shape", "prompts must not be empty")
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise PydanticCustomError("prompt_shape", "must be a string, a list of strings, a list of token ids "
                                      "or a list of token-id lists (and not empty)")
        if all(isinstance(v, str) for v in value) or all(_is_token_list(v) for v in value):
            return value
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            if any(v < 0 for v in value):
                raise PydanticCustomError("prompt_shape", "token ids must be >= 0")
            return value
        raise PydanticCustomError("prompt_shape", "must be a string, a list of strings, a list of token ids or "
                                  "a list of non-empty token-id lists, not a mixture")

    @field_validator("suffix", mode="before")
    @classmethod
    def _suffix(cls, value: Any) -> Any:
        if value is not None:
            raise _unsupported("suffix (insertion)")
        return value

    def check(self) -> None:
        """Rules across fields; raises a 400 naming the field."""
        super().check()
        n, best_of = self.n or 1, self.best_of
        if best_of is not None and best_of < n:
            raise bad_request(f"best_of must be >= n, got best_of={best_of} and n={n}.", "best_of")
        if best_of is not None and best_of > n and self.stream:
            raise bad_request("best_of > n cannot be streamed.", "best_of")


def _is_token_list(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value))


class TextPart(StrictModel):
    """A content part; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    """One message. Assistant messages copied back from a response may carry the response-only fields
    (refusal, function_call, ...) as null or empty; with a value they are rejected. An assistant message may carry
    the tool calls it made (and then leave out its content); a tool message answers one by its tool_call_id. Its
    reasoning_content (this server's, sent back) reaches the chat template, which may render it (Qwen3's does for
    the turns after the last user message; `reasoning`, vLLM's name for it, is taken the same); `parsed`, the
    openai SDK's parse helpers' copy of the content as an object, is accepted as they send it and not rendered (the
    content is)."""

    RULES: ClassVar[list[dict]] = [
        {"if": {"properties": {"role": {"const": "assistant"}}},
         "else": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}},
        {"if": {"properties": {"role": {"const": "tool"}}},
         "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string"}}},
         "else": {"properties": {"tool_call_id": {"type": "null"}}}},
        {"if": {"properties": {"role": {"const": "assistant"}}},
         "else": {"properties": {"tool_calls": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}}}}]
    model_config = ConfigDict(json_schema_extra={"allOf": RULES})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    refusal: Annotated[str, Empty] | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: Annotated[dict, Empty] | None = None
    audio: Annotated[dict, Empty] | None = None
    annotations: Annotated[list, Empty] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None         # vLLM's name for it in replies: the same, for the template
    parsed: Any = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind != "text":
                raise _unsupported(f"content part type {kind!r}")
        return value

    @field_validator("refusal", "function_call", "audio", "annotations", mode="before")
    @classmethod
    def _response_only(cls, value: Any, info: Any) -> Any:
        if value:
            raise _unsupported(f"a message with {info.field_name}")
        return value

    def text(self) -> str:
        """The content as one string (text parts joined), '' for none."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    RULES: ClassVar[list[dict]] = [
        *SamplingRequest.RULES,
        {"if": _present("top_logprobs", "integer"),
         "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}}]
    model_config = ConfigDict(json_schema_extra={"allOf": RULES})

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: Text | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    echo: bool | None = None
    store: bool | None = None            # OpenAI's: keep the completion for later; false (its default) is honoured

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value: dict | None) -> dict | None:
        reserved = {"messages", "tools", "tokenize", "add_generation_prompt", "conversation", "documents"}
        if value and reserved & set(value):
            raise ValueError(f"must not set {', '.join(sorted(reserved & set(value)))}, which the server sets")
        return value

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value: Any) -> Any:
        if value == []:
            raise ValueError("must not be empty")
        return value

    @property
    def effective_tool_choice(self) -> ToolChoice | None:
        """tool_choice, which defaults to "auto" when tools are given (as OpenAI's does)."""
        return self.tool_choice or ("auto" if self.tools else None)

    def check(self) -> None:
        """Rules across fields; raises a 400 naming the field."""
        super().check()
        for i, message in enumerate(self.messages):
            if message.content is None and message.role != "assistant":
                raise bad_request(f"messages[{i}].content is required for role {message.role!r}.",
                                  f"messages[{i}].content")
            if message.tool_calls and message.role != "assistant":
                raise bad_request("tool_calls are only allowed on assistant messages.", f"messages[{i}].tool_calls")
            if message.tool_call_id is not None and message.role != "tool":
                raise bad_request("tool_call_id is only allowed on tool messages.", f"messages[{i}].tool_call_id")
            if message.tool_call_id is None and message.role == "tool":        # OpenAI's rule
                raise bad_request(f"Missing required parameter: 'messages[{i}].tool_call_id' (a tool message "
                                  "answers a call by its id).", f"messages[{i}].tool_call_id")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs requires logprobs: true.", "top_logprobs")
        if self.store:
            raise unsupported("store", " (it keeps no chat completions: store: false is accepted, or use "
                              "/v1/responses, which stores responses)")
        if self.continue_final_message and self.add_generation_prompt:
            raise bad_request("continue_final_message and add_generation_prompt cannot both be true.",
                              "continue_final_message")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise bad_request("continue_final_message needs the last message to be the assistant's.",
                              "continue_final_message")

    @property
    def generation_prompt(self) -> bool:
        """Whether the template adds the assistant's turn opening: yes unless told, or continuing the last
        message."""
        return self.add_generation_prompt if self.add_generation_prompt is not None else \
            not self.continue_final_message
