"""POST /v1/messages: the Anthropic Messages API over the same engine, chat template and tool machinery as chat
completions. Replies are content blocks (`thinking` with a reasoning parser, `text`, `tool_use`); streams are
Anthropic's event sequence: message_start, per block content_block_start / _delta / _stop, message_delta (stop
reason and usage), message_stop. Usage follows Anthropic: input_tokens are the prompt tokens the prefix cache did
not serve, cache_read_input_tokens those it did. Errors take Anthropic's shape (`api/errors.py`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import reasoning, tools
from api.errors import APIError, bad_request, shaped
from api.messages_protocol import AnthropicError, MessageResponse, MessagesRequest, ToolResultBlock, ToolUseBlock
from api.responses import ERRORS
from api.runner import Job, answer, outputs
from api.sampling import Prompt, check_context, conversation_prompt
from api.state import ServerState, check_model, server_state
from api.streaming import logger
from api.tool_parser import merge
from engine.sampling_params import SamplingParams

router = APIRouter()


_EVENT = {"type": "object", "required": ["event", "data"],
          "properties": {"event": {"type": "string"},
                         "data": {"type": "string", "contentMediaType": "application/json",
                                  "contentSchema": {"$ref": "#/components/schemas/MessageStreamEvent"}}}}
RESPONSES = {200: {"model": MessageResponse, "description": "The message, or with `stream: true` its events",
                   "content": {"text/event-stream": {"itemSchema": _EVENT}}},
             **{status: {"model": AnthropicError, "description": ERRORS[status]}
                for status in (400, 404, 413, 429, 500, 503)}}


@router.post("/v1/messages", response_model=None, responses=RESPONSES)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """Reply to a conversation, Anthropic's way (streamed as events with `stream: true`)."""
    arrival = time.monotonic()
    state = server_state(request)
    check_model(state, body.model)
    llm = state.llm
    openai_tools = [tools.Tool.model_validate({"type": "function", "function": {
        "name": t.name, "description": t.description, "parameters": t.input_schema}}) for t in body.tools or []]
    choice = _tool_choice(body) if openai_tools else None
    prompt = await asyncio.to_thread(_prompt, body, llm.tokenizer, openai_tools, llm.max_model_len)
    check_context(prompt, body.max_tokens, llm.max_model_len, None, "messages")
    parallel = not (body.tool_choice and body.tool_choice.disable_parallel_tool_use)
    constraint = tools.constraint(openai_tools or None, choice, parallel, state.settings.tool_call_parser)
    try:
        params = SamplingParams(max_tokens=body.max_tokens, temperature=_or(body.temperature, 1.0),
                                top_p=_or(body.top_p, 1.0), top_k=body.top_k or -1, stop=body.stop_sequences,
                                structured_outputs=constraint)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    job = Job("msg", body.model, [prompt], params, 1, arrival=arrival)
    view = _View(state, job, choice)
    return await answer(state, job, request, _framed(view.events()) if body.stream else None,
                        lambda finals: view.message(finals[0]))


def _or(value, default):
    return default if value is None else value


def _tool_choice(body: MessagesRequest) -> tools.ToolChoice:
    """Anthropic's tool_choice as the chat API's: auto, any (required), tool (named), none."""
    given = body.tool_choice
    if given is None or given.type == "auto":
        return "auto"
    if given.type == "none":
        return "none"
    if given.type == "any":
        return "required"
    if not given.name:
        raise bad_request("tool_choice of type 'tool' needs the tool's name.", "tool_choice.name")
    return tools.NamedToolChoice.model_validate({"type": "function", "function": {"name": given.name}})


def _prompt(body: MessagesRequest, tokenizer, openai_tools: list, max_model_len: int) -> Prompt:
    """The conversation as the chat template renders it: the system prompt first, tool_use blocks as the
    assistant's tool calls, tool_result blocks as tool messages."""
    messages = [{"role": "system", "content": body.system_text()}] if body.system is not None else []
    for message in body.messages:
        blocks = message.content if isinstance(message.content, list) else []
        text = message.content if isinstance(message.content, str) else \
            "".join(b.text for b in blocks if b.type == "text")
        for result in (b for b in blocks if isinstance(b, ToolResultBlock)):
            messages.append({"role": "tool", "tool_call_id": result.tool_use_id, "content": result.text()})
        calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}}
                 for b in blocks if isinstance(b, ToolUseBlock)]
        only_results = bool(blocks) and all(isinstance(b, ToolResultBlock) for b in blocks)
        if text or calls or not only_results:
            messages.append({"role": message.role, "content": text, **({"tool_calls": calls} if calls else {})})
    rendered_tools = [t.model_dump(exclude_none=True) for t in openai_tools] or None
    return conversation_prompt(tokenizer, messages, rendered_tools, max_model_len, "messages")


def _stop(finish_reason: str | None, stop_reason: str | int | None, calls: bool) -> tuple[str, str | None]:
    """(Anthropic's stop_reason, stop_sequence)."""
    if finish_reason == "length":
        return "max_tokens", None
    if calls:
        return "tool_use", None
    if isinstance(stop_reason, str):
        return "stop_sequence", stop_reason
    return "end_turn", None


class _View:
    """Renders a messages job's engine outputs as an Anthropic message, or as its event stream."""

    def __init__(self, state: ServerState, job: Job, choice: tools.ToolChoice | None) -> None:
        self.state, self.job = state, job
        self.choice = choice if choice not in (None, "none") else None
        self.id = f"msg_{uuid.uuid4().hex[:24]}"

    def _usage(self, output_tokens: int) -> dict:
        cached = self.job.cached_tokens()
        return {"input_tokens": self.job.prompt_tokens - cached, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached, "output_tokens": output_tokens}

    def _reader(self):
        return tools.reader(self.choice, self.state.settings.tool_call_parser) if self.choice else None

    def message(self, final) -> dict:
        """The whole (non-streamed) message."""
        choice = final.outputs[0]
        thinking, text = reasoning.split(choice.text) if self.state.settings.reasoning_parser else (None, choice.text)
        reader = self._reader()
        content, calls = merge(reader.feed(text, final=True)) if reader else (text or None, [])
        blocks: list[dict] = []
        if thinking is not None:
            blocks.append({"type": "thinking", "thinking": thinking, "signature": ""})
        if content:
            blocks.append({"type": "text", "text": content})
        blocks += [{"type": "tool_use", "id": _tool_id(call["id"]), "name": call["function"]["name"],
                    "input": _object(call["function"]["arguments"])} for call in calls]
        stop_reason, sequence = _stop(choice.finish_reason, choice.stop_reason, bool(calls))
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.job.model, "content": blocks,
                "stop_reason": stop_reason, "stop_sequence": sequence, "usage": self._usage(len(choice.token_ids))}

    async def events(self) -> AsyncIterator[dict]:
        """Anthropic's event sequence; message_start once the prompt is scheduled (its cached tokens known)."""
        split = reasoning.StreamSplit() if self.state.settings.reasoning_parser else None
        reader = self._reader()
        blocks = _Blocks()
        generated, finish, stop_reason, calls = 0, None, None, False
        started = False
        async for _, output in outputs(self.state, self.job):
            if not started:
                started = True
                yield {"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.job.model, "content": [],
                    "stop_reason": None, "stop_sequence": None, "usage": self._usage(0)}}
            for choice in output.outputs:
                generated += len(choice.token_ids)
                ended = choice.finish_reason is not None
                thinking, text = split.add(choice.text, ended) if split else ("", choice.text)
                if thinking:
                    for event in blocks.text("thinking", thinking):
                        yield event
                deltas = reader.feed(text, ended) if reader else ([{"content": text}] if text else [])
                for delta in deltas:
                    if "content" in delta:
                        for event in blocks.text("text", delta["content"]):
                            yield event
                    for part in delta.get("tool_calls", []):
                        calls = True
                        for event in blocks.tool(part):
                            yield event
                if ended:
                    finish, stop_reason = choice.finish_reason, choice.stop_reason
        for event in blocks.close():
            yield event
        reason, sequence = _stop(finish, stop_reason, calls)
        yield {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
               "usage": self._usage(generated)}
        yield {"type": "message_stop"}


class _Blocks:
    """The content blocks of a streamed message: which is open, and the events that open, extend and close them."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None

    def _open(self, block: dict) -> list[dict]:
        events = self.close()
        self.index += 1
        self.kind = block["type"]
        return events + [{"type": "content_block_start", "index": self.index, "content_block": block}]

    def close(self) -> list[dict]:
        """Close the open block, if any."""
        if self.kind is None:
            return []
        self.kind = None
        return [{"type": "content_block_stop", "index": self.index}]

    def text(self, kind: str, text: str) -> list[dict]:
        """`text` for a thinking or text block (opened if it is not the open one)."""
        thinking = kind == "thinking"
        events = [] if self.kind == kind else self._open(
            {"type": "thinking", "thinking": "", "signature": ""} if thinking else {"type": "text", "text": ""})
        delta = {"type": "thinking_delta", "thinking": text} if thinking else {"type": "text_delta", "text": text}
        return events + [{"type": "content_block_delta", "index": self.index, "delta": delta}]

    def tool(self, part: dict) -> list[dict]:
        """A call delta from the tool-call reader: a new tool_use block, or its input's next JSON fragment."""
        if "id" in part:
            return self._open({"type": "tool_use", "id": _tool_id(part["id"]),
                               "name": part["function"]["name"], "input": {}})
        return [{"type": "content_block_delta", "index": self.index,
                 "delta": {"type": "input_json_delta", "partial_json": part["function"]["arguments"]}}]


def _tool_id(call_id: str) -> str:
    """A call's id as Anthropic writes tool_use ids."""
    return "toolu_" + call_id.removeprefix("call_")


def _object(arguments: str) -> dict:
    """A call's input: its arguments' JSON object, or {} for arguments cut short."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _framed(events: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """Anthropic's SSE framing (`event: <type>` then `data: <json>`); a failure is an `error` event."""
    try:
        async for event in events:
            yield _event(event)
    except APIError as exc:
        yield _event(shaped("/v1/messages", exc.status, exc.body()))
    except Exception:
        logger.exception("error while streaming")
        yield _event({"type": "error", "error": {"type": "api_error",
                                                 "message": "The server had an error while processing your request."}})
    finally:
        await events.aclose()


def _event(payload: dict) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()
