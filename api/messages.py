"""POST /v1/messages: the Anthropic Messages API over the same engine, chat template and tool machinery as chat
completions. Replies are content blocks (`thinking` with a reasoning parser, `text`, `tool_use`); streams are
Anthropic's event sequence: message_start, per block content_block_start / _delta / _stop, message_delta (stop
reason and usage), message_stop. Usage follows Anthropic: input_tokens are the prompt tokens the prefix cache did
not serve, cache_read_input_tokens those it did. Errors take Anthropic's shape (`api/errors.py`)."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import reasoning, tools
from api.errors import APIError, bad_request, shaped
from api.messages_protocol import (
    AnthropicError,
    Conversation,
    CountTokensRequest,
    MessageResponse,
    MessagesRequest,
    TokensCount,
    ToolResultBlock,
    ToolUseBlock,
)
from api.responses import ERRORS, named_event_stream
from api.runner import Job, answer, outputs
from api.sampling import Prompt, capped, check_context, conversation_prompt, or_defaults
from api.state import ServerState, check_model, server_state
from api.streaming import named_events
from api.structured import checked
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputsParams

router = APIRouter()


RESPONSES = {200: named_event_stream(MessageResponse, "MessageStreamEvent",
                                     "The message, or with `stream: true` its events"),
             **{status: {"model": AnthropicError, "description": ERRORS[status]}
                for status in (400, 404, 413, 500, 503, 529)}}


@router.post("/v1/messages", response_model=None, responses=RESPONSES)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """Reply to a conversation, Anthropic's way (streamed as events with `stream: true`)."""
    arrival = time.monotonic()
    state = server_state(request)
    check_model(state, body.model)
    llm = state.llm
    budget = body.thinking_budget()
    if budget is not None and budget >= body.max_tokens:
        raise bad_request("max_tokens must be greater than thinking.budget_tokens", "max_tokens")
    openai_tools = _tools(body)
    choice = _tool_choice(body) if openai_tools or body.tool_choice is not None else None   # no tools: 400 but none
    prompt = await asyncio.to_thread(_prompt, body, llm.tokenizer, openai_tools, llm.max_model_len)
    check_context(prompt, body.max_tokens, llm.max_model_len, None, "messages")
    parallel = not getattr(body.tool_choice, "disable_parallel_tool_use", None)
    given = body.output_config.format if body.output_config else None
    form = checked(StructuredOutputsParams(json=given.schema_), "output_config.format.schema") if given else None
    constraint = tools.constraint(openai_tools or None, choice, parallel, state.settings.tool_call_parser, form,
                                  "output_config.format")
    if budget is not None and constraint is not None:       # the constraint's grammar covers the thinking too
        raise bad_request("Thinking may not be enabled when tool_choice forces tool use."
                          if choice not in (None, "auto", "none") else
                          "thinking of type 'enabled' cannot be combined with output_config.format or strict tools "
                          "on this server: their grammar covers the whole reply, thinking included", "thinking")
    try:
        sent = or_defaults(llm.sampling_defaults, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
        params = SamplingParams(max_tokens=capped(body.max_tokens, llm.max_tokens_cap), stop=body.stop_sequences,
                                structured_outputs=constraint, thinking_token_budget=budget, **sent)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    job = Job("msg", body.model, [prompt], params, 1, arrival=arrival)
    view = _View(state, job, choice, parallel, body.max_tokens, reasoning.opened(llm.tokenizer, prompt.token_ids))
    events = named_events(view.events(), _error_event) if body.stream else None
    return await answer(state, job, request, events,
                        lambda finals: view.message(finals[0]))


@router.post("/v1/messages/count_tokens", response_model=TokensCount,
             responses={status: {"model": AnthropicError, "description": ERRORS[status]} for status in (400, 404, 413)})
async def count_tokens(body: CountTokensRequest, request: Request) -> dict:
    """The prompt tokens of a messages request with this conversation and these tools (one that cannot fit the
    context is the same 400 as there). The tool choice changes no token here."""
    state = server_state(request)
    check_model(state, body.model)
    llm = state.llm
    prompt = await asyncio.to_thread(_prompt, body, llm.tokenizer, _tools(body), llm.max_model_len)
    return {"input_tokens": len(prompt.token_ids)}


def _tools(body: Conversation) -> list[tools.Tool]:
    """Anthropic's tools as the chat API's functions."""
    return [tools.Tool.model_validate({"type": "function", "function": {
        "name": t.name, "description": t.description, "parameters": t.input_schema, "strict": t.strict}})
        for t in body.tools or []]


def _error_event(exc: APIError) -> dict:
    """Anthropic's `error` event: its error shape."""
    return shaped("/v1/messages", exc.status, exc.body())


def _tool_choice(body: Conversation) -> tools.ToolChoice:
    """Anthropic's tool_choice as the chat API's: auto, any (required), tool (named), none."""
    given = body.tool_choice
    if given is None or given.type == "auto":
        return "auto"
    if given.type == "none":
        return "none"
    if given.type == "any":
        return "required"
    return tools.NamedToolChoice.model_validate({"type": "function", "function": {"name": given.name}})


def _prompt(body: Conversation, tokenizer, openai_tools: list, max_model_len: int) -> Prompt:
    """The conversation as the chat template renders it: the system prompt first, tool_use blocks as the
    assistant's tool calls, tool_result blocks as tool messages."""
    messages = [{"role": "system", "content": body.system_text()}] if body.system is not None else []
    for message in body.messages:
        blocks = message.content if isinstance(message.content, list) else []
        text = message.content if isinstance(message.content, str) else \
            "".join(b.text for b in blocks if b.type == "text")
        for result in (b for b in blocks if isinstance(b, ToolResultBlock)):
            content = f"Error: {result.text()}" if result.is_error else result.text()
            messages.append({"role": "tool", "tool_call_id": result.tool_use_id, "content": content})
        calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}}
                 for b in blocks if isinstance(b, ToolUseBlock)]
        only_results = bool(blocks) and all(isinstance(b, ToolResultBlock) for b in blocks)   # thinking: not rendered
        if text or calls or not only_results:
            messages.append({"role": message.role, "content": text, **({"tool_calls": calls} if calls else {})})
    rendered_tools = [t.model_dump(exclude_none=True) for t in openai_tools] or None
    last = messages[-1] if messages else {}
    if last.get("role") == "assistant" and "tool_calls" not in last and not last.get("content"):
        messages.pop()                  # an empty last assistant message: no prefill, the reply is a new turn
        last = {}
        if not messages:
            raise bad_request("The conversation is empty: its only message is an assistant turn with no text or "
                              "tool_use (thinking blocks are not rendered).", "messages")
    prefill = last.get("role") == "assistant" and "tool_calls" not in last
    # A prefill: the reply continues the last assistant message's text.
    return conversation_prompt(tokenizer, messages, rendered_tools, max_model_len, "messages",
                               add_generation_prompt=not prefill, continue_final_message=prefill,
                               template_kwargs=body.template_kwargs())


def _stop(finish_reason: str | None, stop_reason: str | int | None, calls: bool,
          context_full: bool = False) -> tuple[str, str | None]:
    """(Anthropic's stop_reason, stop_sequence); `context_full`: the reply ended at the end of the context, before
    max_tokens."""
    if finish_reason == "length":
        return ("model_context_window_exceeded" if context_full else "max_tokens"), None
    if isinstance(stop_reason, str):    # even inside a tool call, which it then cut short
        return "stop_sequence", stop_reason
    if calls:
        return "tool_use", None
    return "end_turn", None


class _View:
    """Renders a messages job's engine outputs as an Anthropic message, or as its event stream; both build their
    content blocks with one `_Blocks`, in the order they are generated (`opened`: the prompt left the thinking
    open, so the reply's first block is thinking)."""

    def __init__(self, state: ServerState, job: Job, choice: tools.ToolChoice | None, parallel: bool,
                 max_tokens: int | None = None, opened: bool = False) -> None:
        self.state, self.job, self.max_tokens = state, job, max_tokens
        choice = choice if choice not in (None, "none") else None
        self.reader = tools.reader(choice, state.settings.tool_call_parser, parallel) if choice else None
        self.split = reasoning.StreamSplit(opened) if state.settings.reasoning_parser else None
        self.blocks = _Blocks()
        self.id = f"msg_{uuid.uuid4().hex[:24]}"

    def _usage(self, output_tokens: int) -> dict:
        cached = self.job.cached_tokens()
        return {"input_tokens": self.job.prompt_tokens - cached, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached, "output_tokens": output_tokens}

    def _feed(self, text: str, ended: bool) -> list[dict]:
        """The events of the reply's next piece of text (thinking, text, tool calls)."""
        thinking, text = self.split.add(text, ended) if self.split else ("", text)
        events = self.blocks.text("thinking", thinking) if thinking else []
        for delta in self.reader.feed(text, ended) if self.reader else ([{"content": text}] if text else []):
            if "content" in delta:
                events += self.blocks.text("text", delta["content"])
            for part in delta.get("tool_calls", []):
                events += self.blocks.tool(part)
        return events

    def _end(self, finish: str | None, stop_reason: str | int | None, generated: int) -> tuple[str, str | None]:
        return _stop(finish, stop_reason, any(b["type"] == "tool_use" for b in self.blocks.content),
                     self.max_tokens is not None and generated < self.max_tokens)

    def message(self, final) -> dict:
        """The whole (non-streamed) message."""
        choice = final.outputs[0]
        self._feed(choice.text, True)
        self.blocks.close()
        stop_reason, sequence = self._end(choice.finish_reason, choice.stop_reason, len(choice.token_ids))
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.job.model,
                "content": self.blocks.finished(), "stop_reason": stop_reason, "stop_sequence": sequence,
                "usage": self._usage(len(choice.token_ids))}

    async def events(self) -> AsyncIterator[dict]:
        """Anthropic's event sequence; message_start once the prompt is scheduled (its cached tokens known)."""
        generated, finish, stop_reason, started = 0, None, None, False
        async for _, output in outputs(self.state, self.job):
            if not started:
                started = True
                yield {"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.job.model, "content": [],
                    "stop_reason": None, "stop_sequence": None, "usage": self._usage(0)}}
            for choice in output.outputs:
                generated += len(choice.token_ids)
                for event in self._feed(choice.text, choice.finish_reason is not None):
                    yield event
                if choice.finish_reason is not None:
                    finish, stop_reason = choice.finish_reason, choice.stop_reason
        for event in self.blocks.close():
            yield event
        reason, sequence = self._end(finish, stop_reason, generated)
        yield {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
               "usage": self._usage(generated)}
        yield {"type": "message_stop"}


class _Blocks:
    """The content blocks of a message as they are generated: the events that open, extend and close them, and
    the blocks themselves (`content`), which a non-streamed message returns."""

    def __init__(self) -> None:
        self.content: list[dict] = []
        self.kind: str | None = None             # the open block's type

    def _open(self, block: dict) -> list[dict]:
        events = self.close()
        self.content.append(block)
        self.kind = block["type"]
        start = {**block, "input": {}} if block["type"] == "tool_use" else dict(block)
        return events + [{"type": "content_block_start", "index": len(self.content) - 1,
                          "content_block": {k: v for k, v in start.items() if k != "partial_json"}}]

    def close(self) -> list[dict]:
        """Close the open block, if any."""
        if self.kind is None:
            return []
        self.kind = None
        return [{"type": "content_block_stop", "index": len(self.content) - 1}]

    def text(self, kind: str, text: str) -> list[dict]:
        """`text` for a thinking or text block (opened if it is not the open one)."""
        thinking = kind == "thinking"
        events = [] if self.kind == kind else self._open(
            {"type": "thinking", "thinking": "", "signature": ""} if thinking else {"type": "text", "text": ""})
        self.content[-1][kind] += text
        delta = {"type": "thinking_delta", "thinking": text} if thinking else {"type": "text_delta", "text": text}
        return events + [{"type": "content_block_delta", "index": len(self.content) - 1, "delta": delta}]

    def tool(self, part: dict) -> list[dict]:
        """A call delta from the tool-call reader: a new tool_use block, or its input's next JSON fragment."""
        if "id" in part:
            return self._open({"type": "tool_use", "id": _tool_id(part["id"]), "name": part["function"]["name"],
                               "partial_json": ""})
        self.content[-1]["partial_json"] += part["function"]["arguments"]
        return [{"type": "content_block_delta", "index": len(self.content) - 1,
                 "delta": {"type": "input_json_delta", "partial_json": part["function"]["arguments"]}}]

    def finished(self) -> list[dict]:
        """The blocks as a message holds them (a tool_use's input parsed)."""
        return [{k: v for k, v in b.items() if k != "partial_json"} | ({"input": _object(b["partial_json"])}
                                                                         if b["type"] == "tool_use" else {})
                for b in self.content]


def _tool_id(call_id: str) -> str:
    """A call's id as Anthropic writes tool_use ids."""
    return "toolu_" + call_id.removeprefix("call_")


def _object(arguments: str) -> dict:
    """A call's input: its arguments' JSON object, or {} for arguments cut short or not JSON. NaN, Infinity and
    numbers past float's range are not JSON (Python's parser would take them, and the reply could not be sent)."""
    try:
        value = json.loads(arguments, parse_constant=_not_json, parse_float=_finite)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is past float's range")
    return value
