"""POST /v1/responses (OpenAI's Responses API, for text and function tools) and GET /v1/responses/{id}, over the
same engine, chat template, structured outputs and tool machinery as chat completions. `instructions` become the
system message; `previous_response_id` continues a stored response's conversation (`api/response_store.py`);
`text.format` is a JSON schema or JSON object constraint. Streams are the Responses event sequence
(response.created, response.in_progress, the output items' events from `api/response_items.py`, then
response.completed, or response.incomplete when max_output_tokens cut the reply)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api import reasoning, tools
from api.errors import APIError, bad_request
from api.logprobs import chat_logprobs, token_table
from api.openai_responses_protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    MessageItem,
    ResponseObject,
    ResponsesRequest,
)
from api.response_items import Items
from api.response_store import Stored
from api.responses import errors, named_event_stream
from api.runner import Job, answer, outputs
from api.sampling import Prompt, capped, check_context, conversation_prompt, or_defaults
from api.state import ServerState, check_model, server_state
from api.streaming import named_events
from api.structured import checked
from engine.outputs import CompletionOutput
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputsParams

router = APIRouter()


@router.post("/v1/responses", response_model=None,
             responses={200: named_event_stream(ResponseObject, "ResponseStreamEvent",
                                                "The response, or with `stream: true` its events"),
                        **errors(400, 404, 413, 429, 500, 503)})
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    """A reply to `input` (streamed as the Responses API's events with `stream: true`)."""
    arrival = time.monotonic()
    state = server_state(request)
    check_model(state, body.model)
    llm = state.llm
    history = _history(state, body.previous_response_id)
    conversation = history + _messages(body.input, history)
    chat_tools = [tools.Tool.model_validate({"type": "function", "function": {
        "name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict}})
        for t in body.tools or []]
    choice = _tool_choice(body) if chat_tools or body.tool_choice is not None else None     # without tools: 400
    # (but "none", which asks for plain text)
    system = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    max_tokens = capped(body.max_output_tokens if body.max_output_tokens is not None else
                        llm.sampling_defaults.get("max_tokens"), llm.max_tokens_cap)
    if body.truncation == "auto":
        prompt, conversation = await asyncio.to_thread(_fitted, llm.tokenizer, system, conversation, chat_tools,
                                                       llm.max_model_len, max_tokens or 1)
    else:
        prompt = await asyncio.to_thread(_encode, llm.tokenizer, system + conversation, chat_tools,
                                         llm.max_model_len)
    check_context(prompt, max_tokens, llm.max_model_len, None, "input")
    constraint = tools.constraint(chat_tools or None, choice, body.parallel_tool_calls,
                                  state.settings.tool_call_parser, _format(body), "text.format")
    try:
        sent = or_defaults(llm.sampling_defaults, temperature=body.temperature, top_p=body.top_p)
        params = SamplingParams(max_tokens=max_tokens, structured_outputs=constraint, logprobs=body.num_logprobs,
                                **sent)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    job = Job("resp", body.model, [prompt], params, 1, arrival=arrival)
    view = _View(state, job, body, choice, conversation)
    events = named_events(view.events(), _error_event, numbered=True) if body.stream else None
    return await answer(state, job, request, events,
                        lambda finals: view.whole(finals[0]))


@router.get("/v1/responses/{response_id}", response_model=None,
            responses={200: {"model": ResponseObject}, **errors(404, 500)})
async def retrieve_response(response_id: str, request: Request) -> JSONResponse:
    """A stored response."""
    stored = server_state(request).responses.get(response_id)
    if stored is None:
        raise APIError(404, f"No response with id '{response_id}' is stored here.", "response_id")
    return JSONResponse(stored.body)


def _history(state: ServerState, previous: str | None) -> list[dict]:
    if previous is None:
        return []
    stored = state.responses.get(previous)
    if stored is None:
        raise bad_request(f"Previous response with id '{previous}' not found (not stored, or no longer kept).",
                          "previous_response_id")
    return list(stored.messages)


def _messages(given: str | list, history: list[dict] = ()) -> list[dict]:
    """`input` as chat-template messages (developer ones as the tokenizer renders them), function calls on the
    assistant's message, their outputs as tool messages (a 400 for an output that answers no call, here or in
    the `history` it continues); reasoning items are not rendered."""
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    out: list[dict] = []
    for item in given:
        if isinstance(item, MessageItem):
            out.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": tools.template_arguments(item.arguments)}}
            if not out or out[-1]["role"] != "assistant":
                out.append({"role": "assistant", "content": ""})
            out[-1].setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            called = {c["id"] for m in [*history, *out] for c in m.get("tool_calls", ())}
            if item.call_id not in called:
                raise bad_request(f"No function call with call_id {item.call_id!r} precedes its output.", "input")
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return out


def _tool_choice(body: ResponsesRequest) -> tools.ToolChoice:
    given = body.tool_choice
    if isinstance(given, FunctionChoice):
        return tools.NamedToolChoice.model_validate({"type": "function", "function": {"name": given.name}})
    return given or "auto"


def _format(body: ResponsesRequest) -> StructuredOutputsParams | None:
    form = body.text.format if body.text is not None else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if form.schema_ is None:
        raise bad_request("text.format of type json_schema needs its schema.", "text.format.schema")
    return checked(StructuredOutputsParams(json=form.schema_), "text.format.schema")


def _encode(tokenizer, messages: list[dict], chat_tools: list, max_model_len: int) -> Prompt:
    rendered = [t.model_dump(exclude_none=True) for t in chat_tools] or None
    return conversation_prompt(tokenizer, messages, rendered, max_model_len, "input")


def _fitted(tokenizer, system: list[dict], conversation: list[dict], chat_tools: list, max_model_len: int,
            room: int) -> tuple[Prompt, list[dict]]:
    """truncation "auto": the prompt with as few of the conversation's first messages dropped as leave `room`
    tokens of the context for the reply (OpenAI drops items from the start; the instructions stay), and the
    messages kept. What is kept starts at a user message (templates that alternate roles need one first, and a
    tool result never outlives its call). The whole conversation is tried first; then a bisection over the user
    messages, a few renders rather than one per message. If no user turn leaves that room, the most that fits
    the context is kept (the reply then ends at the context's end; 400 if not even the last turn fits)."""
    starts = [0] + [i for i, message in enumerate(conversation) if message["role"] == "user" and i > 0]

    def attempt(i: int) -> Prompt | None:
        try:
            prompt = _encode(tokenizer, system + conversation[starts[i]:], chat_tools, max_model_len)
        except APIError as exc:
            if exc.code != "context_length_exceeded":
                raise
            return None
        return prompt if len(prompt.token_ids) + room <= max_model_len else None

    whole = attempt(0)
    if whole is not None:
        return whole, conversation
    last = len(starts) - 1
    best = attempt(last) if last else None
    if best is None:
        if room > 1:
            return _fitted(tokenizer, system, conversation, chat_tools, max_model_len, 1)
        kept = conversation[starts[last]:]
        return _encode(tokenizer, system + kept, chat_tools, max_model_len), kept
    low, high = 1, last                       # the first start that fits lies in [low, high]
    while low < high:
        middle = (low + high) // 2
        prompt = attempt(middle)
        if prompt is None:
            low = middle + 1
        else:
            high, best = middle, prompt
    return best, conversation[starts[high]:]


class _View:
    """Renders a responses job as the Response object, or as its event stream; stores it when asked."""

    def __init__(self, state: ServerState, job: Job, body: ResponsesRequest, choice: tools.ToolChoice | None,
                 conversation: list[dict]) -> None:
        self.state, self.job, self.body, self.conversation = state, job, body, conversation
        self.choice = choice if choice not in (None, "none") else None
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.split = reasoning.StreamSplit(reasoning.opened(state.llm.tokenizer, job.prompts[0].token_ids)) \
            if state.settings.reasoning_parser else None
        self.reader = tools.reader(self.choice, state.settings.tool_call_parser,
                                   body.parallel_tool_calls is not False) if self.choice else None
        self.items = Items()
        self.token_ids: list[int] = []
        self.tokens = token_table(state.tokens, None, state.settings.return_tokens_as_token_ids)
        self.pending: list[dict] = []           # logprobs of tokens whose text no output_text delta has carried

    def _add(self, choice: CompletionOutput) -> None:
        """Count the choice's new tokens and, with logprobs asked for, keep theirs for the next text."""
        self.token_ids += choice.token_ids
        k = self.body.num_logprobs
        if k is not None:
            self.pending += chat_logprobs(self.tokens, choice.token_ids, choice.logprobs or [], k)

    def _take(self) -> list[dict]:
        taken, self.pending = self.pending, []
        return taken

    def _feed(self, text: str, ended: bool) -> list[dict]:
        """The events of the reply's next piece of text."""
        thinking, text = self.split.add(text, ended) if self.split else ("", text)
        events = self.items.reasoning(thinking) if thinking else []
        for delta in self.reader.feed(text, ended) if self.reader else ([{"content": text}] if text else []):
            if "content" in delta:
                events += self.items.text(delta["content"], self._take())
            for part in delta.get("tool_calls", []):
                events += self.items.call(part)
        return events

    def _body(self, status: str, finish: str | None) -> dict:
        b = self.body
        cached = self.job.cached_tokens()
        generated = len(self.token_ids)
        thought = reasoning.reasoning_tokens(self.state.llm.tokenizer, self.token_ids, self.split.opened) \
            if self.split else 0
        usage = {"input_tokens": self.job.prompt_tokens,         # nothing is billed for writing the prefix cache
                 "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                 "output_tokens": generated, "output_tokens_details": {"reasoning_tokens": thought},
                 "total_tokens": self.job.prompt_tokens + generated}
        choice = b.tool_choice.model_dump() if isinstance(b.tool_choice, FunctionChoice) else \
            b.tool_choice or "auto"
        text = b.text.model_dump(by_alias=True, exclude_none=True) if b.text is not None else \
            {"format": {"type": "text"}}
        used = self.job.params          # what ran: the request's values, or the model's defaults (as OpenAI echoes)
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
                "instructions": b.instructions, "max_output_tokens": used.max_tokens, "model": self.job.model,
                "output": self.items.output, "parallel_tool_calls": b.parallel_tool_calls is not False,
                "previous_response_id": b.previous_response_id, "temperature": used.temperature, "top_p": used.top_p,
                "tool_choice": choice, "tools": [t.model_dump(exclude_none=True) for t in b.tools or []],
                "text": text, "truncation": b.truncation or "disabled", "store": b.store is not False,
                "metadata": b.metadata or {},
                "user": b.user, "usage": usage if status != "in_progress" else None, "background": False,
                "reasoning": {"effort": None, "summary": None}, "prompt_cache_key": b.prompt_cache_key,
                "safety_identifier": b.safety_identifier,
                "service_tier": "default" if b.service_tier is not None else None,
                "top_logprobs": b.top_logprobs or 0}

    def _finish(self, finish: str | None) -> tuple[list[dict], dict]:
        """The events that close the reply's items, and the final Response, kept in the store unless `store` is
        false."""
        events = self.items.end_text(self._take())
        events += self.items.close("incomplete" if finish == "length" else "completed")
        body = self._body("incomplete" if finish == "length" else "completed", finish)
        if self.body.store is not False:
            self.state.responses.put(self.id, Stored(body, self.conversation + self.items.messages()))
        return events, body

    def whole(self, final) -> dict:
        """The non-streamed Response."""
        choice = final.outputs[0]
        self._add(choice)
        self._feed(choice.text, True)
        return self._finish(choice.finish_reason)[1]

    async def events(self) -> AsyncIterator[dict]:
        """The Responses event stream."""
        snapshot = self._body("in_progress", None)
        yield {"type": "response.created", "response": snapshot}
        yield {"type": "response.in_progress", "response": snapshot}
        finish = None
        async for _, output in outputs(self.state, self.job):
            for choice in output.outputs:
                self._add(choice)
                for event in self._feed(choice.text, choice.finish_reason is not None):
                    yield event
                finish = choice.finish_reason or finish
        closing, body = self._finish(finish)
        for event in closing:
            yield event
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        yield {"type": kind, "response": body}


def _error_event(exc: APIError) -> dict:
    """The Responses API's `error` event."""
    return {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}
