"""Request body of the Anthropic Messages API, POST /v1/messages (strict: unknown fields are 400s), and its
response shapes for /openapi.json.

Content is text, and tool_use / tool_result blocks, paired as Anthropic requires (and an earlier reply's thinking
blocks, not rendered); images and documents are refused by name. A thinking budget is the engine's
thinking_token_budget (a model without `<think>` tokens refuses it). `system` may be a
string or text blocks. A last assistant message is a prefill: the reply continues it (an empty one is dropped: the
reply is a new turn).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from api.protocol import Empty, TextRequest
from api.strict import StrictModel

MAX_STOP_SEQUENCES = 16


class TextBlock(StrictModel):
    """A text content block. The fields a response's block carries back (citations) are accepted empty."""

    type: Literal["text"]
    text: Annotated[str, Field(min_length=1)]           # Anthropic's: text content blocks must be non-empty
    cache_control: dict | None = None      # accepted: this server's prefix cache needs no hint
    citations: Annotated[list, Empty] | None = None


class ToolUseBlock(StrictModel):
    """A tool call the assistant made."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict | None = None
    caller: Annotated[dict, Empty] | None = None
    toolset_name: Annotated[str, Empty] | None = None


class ToolResultBlock(StrictModel):
    """The result of a tool call, sent back in a user message."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: dict | None = None
    toolset_name: Annotated[str, Empty] | None = None

    def text(self) -> str:
        """The result as one string (text blocks a line each, as vLLM joins them)."""
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "\n".join(b.text for b in self.content)


class ThinkingBlock(StrictModel):
    """An earlier reply's thinking, sent back with it (not rendered: chat templates drop earlier thinking)."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(StrictModel):
    """Redacted thinking, sent back (not rendered)."""

    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
                  Field(discriminator="type")]
BLOCK_TYPES = ("text", "tool_use", "tool_result", "thinking", "redacted_thinking")


class Message(StrictModel):
    """One turn: text, or blocks."""

    role: Literal["user", "assistant"]
    content: str | list[Block]

    @field_validator("content", mode="before")
    @classmethod
    def _supported_blocks(cls, value: Any) -> Any:
        for block in value if isinstance(value, list) else ():
            kind = block.get("type") if isinstance(block, dict) else None
            if isinstance(kind, str) and kind not in BLOCK_TYPES:
                raise ValueError(f"content blocks of type {kind!r} are not supported by this server")
        return value


class AnthropicTool(StrictModel):
    """A tool the model may call: its name, description and input JSON schema (an object's, as Anthropic's)."""

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    input_schema: Annotated[dict[str, Any], Field(json_schema_extra={
        "required": ["type"], "properties": {"type": {"const": "object"}}})]
    strict: bool | None = None           # calls must match input_schema (api/tools.py)
    type: Literal["custom"] | None = None
    cache_control: dict | None = None

    @model_validator(mode="before")
    @classmethod
    def _custom_only(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind != "custom":        # server tools: web_search_..., bash_..., ...
            raise PydanticCustomError("unsupported", "tools of type '{kind}' are not supported by this server (only "
                                      "custom tools, with an input_schema)", {"kind": kind})
        return value

    @field_validator("input_schema")
    @classmethod
    def _object(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError("must be the JSON schema of an object (type: 'object'), as a tool's input is one")
        return value


class AutoChoice(StrictModel):
    """tool_choice auto: the model chooses."""

    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class AnyChoice(StrictModel):
    """tool_choice any: it must call one of the tools."""

    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolNameChoice(StrictModel):
    """tool_choice tool: it must call the one named."""

    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class NoneChoice(StrictModel):
    """tool_choice none: it calls no tool."""

    type: Literal["none"]


AnthropicToolChoice = Annotated[AutoChoice | AnyChoice | ToolNameChoice | NoneChoice, Field(discriminator="type")]


class Metadata(StrictModel):
    """Informational."""

    user_id: str | None = None


def _check_content(message: Message, i: int, last: bool) -> None:
    """Anthropic's rules for content (text blocks are never empty, TextBlock says): every message has content
    except a last assistant one (an empty prefill); a last assistant message does not end in whitespace."""
    blocks = message.content if isinstance(message.content, list) else []
    prefill = last and message.role == "assistant"
    if not prefill and (message.content == "" or message.content == []):
        raise ValueError(f"messages.{i}: all messages must have non-empty content except for the optional final "
                         "assistant message")
    text = message.content if isinstance(message.content, str) else "".join(
        b.text for b in blocks if isinstance(b, TextBlock))
    if prefill and text and text != text.rstrip():
        raise ValueError("final assistant content cannot end with trailing whitespace")


class ThinkingAdaptive(StrictModel):
    """`thinking: {"type": "adaptive"}`: the model thinks as much as it chooses (its chat template's default)."""

    type: Literal["adaptive"]


class ThinkingDisabled(StrictModel):
    """`thinking: {"type": "disabled"}`: rendered with `enable_thinking: false`, which thinking models' templates
    (Qwen3's) honour by closing the thinking before the reply starts."""

    type: Literal["disabled"]


class ThinkingEnabled(StrictModel):
    """`thinking: {"type": "enabled", "budget_tokens": N}`: the model thinks for N tokens at most, then its
    `</think>` is drawn (the engine's thinking_token_budget). Anthropic's bounds: at least 1024, below max_tokens."""

    type: Literal["enabled"]
    budget_tokens: Annotated[int, Field(ge=1024)]


Thinking = Annotated[ThinkingAdaptive | ThinkingDisabled | ThinkingEnabled, Field(discriminator="type")]


class Conversation(TextRequest):
    """What a request renders into the prompt: the model, system prompt, messages, tools and whether it thinks."""

    model_config = ConfigDict(json_schema_extra={"allOf": [      # a tool_choice but none needs tools
        {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {
            "required": ["type"], "properties": {"type": {"enum": ["auto", "any", "tool"]}}}}},
         "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}}]})

    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: Thinking | None = None

    def template_kwargs(self) -> dict | None:
        """What `thinking` asks of the chat template."""
        return {"enable_thinking": False} if isinstance(self.thinking, ThinkingDisabled) else None

    def thinking_budget(self) -> int | None:
        """The engine's thinking_token_budget: `budget_tokens` of an enabled thinking, else None."""
        return self.thinking.budget_tokens if isinstance(self.thinking, ThinkingEnabled) else None

    @field_validator("messages")
    @classmethod
    def _tool_blocks_pair(cls, messages: list[Message]) -> list[Message]:
        """Anthropic's rules for tool blocks: tool_use only in assistant messages, each id once; tool_result only
        in user messages, before their other blocks, each answering a tool_use of the message before; and every
        tool_use answered in the next message when there is one."""
        seen: set[str] = set()
        unanswered: tuple[int, list[str]] | None = None
        for i, message in enumerate(messages):
            _check_content(message, i, last=i == len(messages) - 1)
            blocks = message.content if isinstance(message.content, list) else []
            calls = [b.id for b in blocks if isinstance(b, ToolUseBlock)]
            answered = set()
            for j, block in enumerate(blocks):
                where = f"messages.{i}.content.{j}"
                if isinstance(block, ToolUseBlock):
                    if message.role != "assistant":
                        raise ValueError(f"{where}: `tool_use` blocks can only be in assistant messages")
                    if block.id in seen:
                        raise ValueError(f"{where}: `tool_use` ids must be unique, {block.id!r} is repeated")
                    seen.add(block.id)
                elif isinstance(block, ToolResultBlock):
                    if message.role != "user":
                        raise ValueError(f"{where}: `tool_result` blocks can only be in user messages")
                    if any(not isinstance(b, ToolResultBlock) for b in blocks[:j]):
                        raise ValueError(f"{where}: `tool_result` blocks must come first in a message's content, "
                                         "before any other block")
                    if unanswered is None or block.tool_use_id not in unanswered[1]:
                        raise ValueError(f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                                         f"{block.tool_use_id}. Each `tool_result` block must have a corresponding "
                                         "`tool_use` block in the previous message")
                    answered.add(block.tool_use_id)
            if unanswered is not None:
                missing = [call for call in unanswered[1] if call not in answered]
                if missing:
                    raise ValueError(f"messages.{unanswered[0]}: `tool_use` ids were found without `tool_result` "
                                     f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block must "
                                     "have a corresponding `tool_result` block in the next message")
            unanswered = (i, calls) if calls else None
        return messages

    def system_text(self) -> str | None:
        """The system prompt as one string (None when there is none)."""
        if self.system is None:
            return None
        return self.system if isinstance(self.system, str) else "".join(b.text for b in self.system)


class JsonOutputFormat(StrictModel):
    """`output_config.format`: the reply's text is JSON matching `schema` (Anthropic's structured outputs); tool
    calls stay possible under the tool choice."""

    type: Literal["json_schema"]
    schema_: Annotated[dict[str, Any], Field(alias="schema")]

    model_config = ConfigDict(populate_by_name=True)


class OutputConfig(StrictModel):
    """`output_config`: the reply's format (`effort`, how hard a Claude model works, is not taken here)."""

    format: JsonOutputFormat | None = None


class MessagesRequest(Conversation):
    """POST /v1/messages."""

    max_tokens: Annotated[int, Field(ge=0)]        # 0: the prompt only (Anthropic's cache pre-warming)
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_SEQUENCES)] | None \
        = None
    stream: bool | None = False
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None


class CountTokensRequest(Conversation):
    """POST /v1/messages/count_tokens: the prompt a messages request with these fields would have (an output format
    adds no tokens to it here)."""

    output_config: OutputConfig | None = None


class TokensCount(BaseModel):
    """The prompt's tokens: system prompt, messages and tools, as the chat template renders them."""

    input_tokens: int


class AnthropicUsage(BaseModel):
    """Tokens: input_tokens (not served by the prefix cache), cache_read_input_tokens (served by it), output."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageResponse(BaseModel):
    """A reply: content blocks (thinking, text, tool_use), why it stopped, and usage."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"] | None
    stop_sequence: str | None
    usage: AnthropicUsage


class AnthropicErrorBody(BaseModel):
    """The error's type (invalid_request_error, authentication_error, not_found_error, ...) and message."""

    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error shape."""

    type: Literal["error"]
    error: AnthropicErrorBody


class MessageStreamEvent(BaseModel):
    """One event of a stream (sent as `event: <type>` and `data: <json>`): message_start, content_block_start,
    content_block_delta, content_block_stop, message_delta, message_stop, or error."""

    type: Literal["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                  "message_delta", "message_stop", "error"]
