"""POST /v1/chat/completions: the conversation is rendered with the model's chat template, then generated
like a completion; replies come as assistant messages (or as `delta` chunks when streamed, each choice
starting with `{"role": "assistant", "content": ""}`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api import reasoning, tools
from api.logprobs import chat_logprobs
from api.protocol import ChatCompletionRequest
from api.responses import ChatCompletionChunk, ChatCompletionResponse, generation_responses
from api.runner import Job, abort, collect, outputs, submit
from api.sampling import chat_prompt, check_context, sampling_params
from api.state import SYSTEM_FINGERPRINT, ServerState, check_model, server_state
from api.streaming import EventStreamResponse, StreamUsage, framed, usage
from engine.outputs import CompletionOutput, RequestOutput
from engine.request_stream import OutputAccumulator

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None,
             responses=generation_responses(ChatCompletionResponse, ChatCompletionChunk))
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Reply to a conversation (streamed as server-sent events with `stream: true`)."""
    arrival = time.monotonic()                     # TTFT counts rendering and tokenizing too
    state = server_state(request)
    body.check()
    check_model(state, body.model)
    llm = state.llm
    prompt = await asyncio.to_thread(chat_prompt, body, llm.tokenizer, llm.max_model_len)   # as completions
    max_tokens = body.max_tokens_requested(None)
    check_context(prompt, max_tokens, llm.max_model_len, body.context_length_exceeded_behavior, "messages")
    top = (body.top_logprobs or 0) if body.logprobs else None
    parser = state.settings.tool_call_parser
    tool_constraint = tools.constraint(body.tools, body.effective_tool_choice, body.parallel_tool_calls, parser)
    params = sampling_params(body, n=body.n or 1, max_tokens=max_tokens, logprobs=top, prompt_logprobs=None,
                             vocab_size=state.vocab_size, tool_constraint=tool_constraint)
    job = Job("chatcmpl", body.model, [prompt], params, params.n, arrival=arrival)
    view = _View(state, job, body)
    await submit(state, job)
    if body.stream:
        return EventStreamResponse(framed(view.events()), on_close=lambda: abort(state, job))
    finals = await collect(state, job, request)
    if finals is None:
        return Response(status_code=499)           # the client is gone; nobody reads this
    return JSONResponse(view.response(finals[0]))


class _View:
    """Renders a chat job's engine outputs as OpenAI chat completions (whole, or as chunks)."""

    def __init__(self, state: ServerState, job: Job, body: ChatCompletionRequest) -> None:
        self.state, self.job, self.body = state, job, body

    def _header(self, obj: str) -> dict:
        job = self.job
        return {"id": job.request_id, "object": obj, "created": job.created, "model": job.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}

    def _logprobs(self, choice: CompletionOutput) -> dict | None:
        if not self.body.logprobs:
            return None
        k = self.body.top_logprobs or 0
        return {"content": chat_logprobs(self.state.tokens, choice.token_ids, choice.logprobs or [], k)}

    @property
    def _calls_tools(self) -> bool:
        """Whether replies are read for tool calls (tools given and a choice other than none)."""
        return bool(self.body.tools) and self.body.effective_tool_choice not in (None, "none")

    def _message(self, choice: CompletionOutput) -> tuple[dict, str | None]:
        """The reply's message (its thinking apart with a reasoning parser), and its finish reason ("tool_calls"
        when it calls tools)."""
        thinking, text = reasoning.split(choice.text) if self.state.settings.reasoning_parser else (None, choice.text)
        message = {"role": "assistant", "content": text}
        if thinking is not None:
            message["reasoning_content"] = thinking
        if not self._calls_tools:
            return message, choice.finish_reason
        message["content"], calls = tools.read_calls(text, self.body.effective_tool_choice,
                                                     self.state.settings.tool_call_parser)
        if not calls:
            return message, choice.finish_reason
        return {**message, "tool_calls": calls}, "tool_calls" if choice.finish_reason == "stop" else "length"

    def _usage(self, choices: list[CompletionOutput]) -> dict:
        """usage, with the thinking's tokens in completion_tokens_details when a reasoning parser is set."""
        return self._details(usage(self.job.prompt_tokens, sum(len(c.token_ids) for c in choices)),
                             [c.token_ids for c in choices])

    def _details(self, counts: dict | None, token_ids: list[list[int]]) -> dict | None:
        """`counts` with the thinking's tokens of the replies' `token_ids` (with a reasoning parser)."""
        if counts is not None and self.state.settings.reasoning_parser:
            tokenizer = self.state.llm.tokenizer
            counts["completion_tokens_details"] = {
                "reasoning_tokens": sum(reasoning.reasoning_tokens(tokenizer, ids) for ids in token_ids)}
        return counts

    def response(self, final: RequestOutput) -> dict:
        """The whole (non-streamed) response."""
        choices = []
        for choice in sorted(final.outputs, key=lambda c: c.index):
            message, finish_reason = self._message(choice)
            entry = {"index": choice.index, "message": message, "logprobs": self._logprobs(choice),
                     "finish_reason": finish_reason}
            if self.body.return_token_ids:
                entry["token_ids"] = choice.token_ids
            choices.append(entry)
        body = {**self._header("chat.completion"), "choices": choices, "usage": self._usage(final.outputs)}
        if self.body.return_token_ids:
            body["prompt_token_ids"] = self.job.prompts[0].token_ids
        return body

    def _chunk(self, index: int, delta: dict, logprobs: dict | None, finish_reason: str | None,
               usage_now: dict | None) -> dict:
        return {**self._header("chat.completion.chunk"),
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
                "usage": usage_now}

    async def events(self) -> AsyncIterator[dict]:
        """The chunks of the streamed response: every choice's role chunk first, then content deltas (reasoning
        deltas apart with a reasoning parser; with a named tool_choice, the call's id and name, then its argument
        fragments as they are generated)."""
        job = self.job
        tracker = StreamUsage(self.body.stream_options, job.prompt_tokens)
        for index in range(job.n):
            chunk = self._chunk(index, {"role": "assistant", "content": ""}, None, None, tracker.for_chunk(False))
            if self.body.return_token_ids and index == 0:
                chunk["prompt_token_ids"] = job.prompts[0].token_ids
            yield chunk
        named = self.body.effective_tool_choice
        if not isinstance(named, tools.NamedToolChoice) and self._calls_tools:
            async for chunk in self._tool_events(tracker):
                yield chunk
            return
        splits = [reasoning.StreamSplit() for _ in range(job.n)] if self.state.settings.reasoning_parser else None
        generated: list[list[int]] = [[] for _ in range(job.n)]
        async for _, output in outputs(self.state, job):
            for k, choice in enumerate(output.outputs):
                tracker.add(len(choice.token_ids))
                generated[choice.index] += choice.token_ids
                logprobs = self._logprobs(choice)
                has_logprobs = logprobs is not None and bool(logprobs["content"])
                ids = self.body.return_token_ids and bool(choice.token_ids)
                delta = {"content": choice.text} if choice.text or not choice.finish_reason else {}
                if splits is not None:
                    thinking, text = splits[choice.index].add(choice.text, choice.finish_reason is not None)
                    delta = {key: value for key, value in (("reasoning_content", thinking), ("content", text))
                             if value}
                finish_reason = choice.finish_reason
                if isinstance(named, tools.NamedToolChoice):       # the text is the call's arguments, as it comes
                    if len(generated[choice.index]) == len(choice.token_ids):     # the choice's first output
                        start = {"tool_calls": [tools.call_start(named.function.name)]}
                        yield self._chunk(choice.index, start, None, None, tracker.for_chunk(False))
                    fragment = {"index": 0, "function": {"arguments": choice.text}}
                    delta = {"tool_calls": [fragment]} if choice.text else {}
                    finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
                if not (delta or finish_reason or has_logprobs or ids):
                    continue
                last = output.finished and k == len(output.outputs) - 1
                chunk = self._chunk(choice.index, delta, logprobs, finish_reason,
                                    self._details(tracker.for_chunk(last), generated) if last
                                    else tracker.for_chunk(False))
                if self.body.return_token_ids:
                    chunk["choices"][0]["token_ids"] = choice.token_ids
                yield chunk
        closing = self._details(tracker.closing(), generated)
        if closing is not None:
            yield {**self._header("chat.completion.chunk"), "choices": [], "usage": closing}

    async def _tool_events(self, tracker: StreamUsage) -> AsyncIterator[dict]:
        """Streamed replies that may call tools: each choice is read whole once it ends (a call is not known to be
        one before), then sent as OpenAI sends calls: its content, then per call a delta with the id and name and
        one with the arguments, then the finish reason."""
        job = self.job
        accumulator = OutputAccumulator()            # a chat job has one prompt
        async for _, output in outputs(self.state, job):
            whole = accumulator.add(output)
            for k, delta in enumerate(output.outputs):
                tracker.add(len(delta.token_ids))
                if delta.finish_reason is None:
                    continue
                choice = next(c for c in whole.outputs if c.index == delta.index)
                message, finish_reason = self._message(choice)
                if message["content"]:
                    yield self._chunk(choice.index, {"content": message["content"]}, None, None,
                                      tracker.for_chunk(False))
                for i, call in enumerate(message.get("tool_calls", [])):
                    name = {"index": i, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}}
                    yield self._chunk(choice.index, {"tool_calls": [name]}, None, None, tracker.for_chunk(False))
                    arguments = {"index": i, "function": {"arguments": call["function"]["arguments"]}}
                    yield self._chunk(choice.index, {"tool_calls": [arguments]}, None, None, tracker.for_chunk(False))
                yield self._chunk(choice.index, {}, None, finish_reason,
                                  tracker.for_chunk(output.finished and k == len(output.outputs) - 1))
        closing = tracker.closing()
        if closing is not None:
            yield {**self._header("chat.completion.chunk"), "choices": [], "usage": closing}
