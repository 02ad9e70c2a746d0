"""POST /v1/chat/completions: the conversation is rendered with the model's chat template, then generated
like a completion; replies come as assistant messages (or as `delta` chunks when streamed, each choice
starting with `{"role": "assistant", "content": ""}`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import reasoning, tools
from api.errors import bad_request
from api.logprobs import chat_logprobs, prompt_logprobs, token_table
from api.perf_metrics import perf_metrics
from api.protocol import ChatCompletionRequest
from api.responses import ChatCompletionChunk, ChatCompletionResponse, generation_responses
from api.runner import Job, answer, outputs
from api.sampling import capped, chat_prompt, check_context, sampling_params
from api.state import SYSTEM_FINGERPRINT, ServerState, check_model, server_state
from api.stops import stop_fields
from api.streaming import StreamUsage, framed, usage
from api.structured import constraint
from api.tool_parser import merge
from engine.outputs import CompletionOutput, RequestOutput

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None,
             responses=generation_responses(ChatCompletionResponse, ChatCompletionChunk))
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Reply to a conversation (streamed as server-sent events with `stream: true`)."""
    arrival = time.monotonic()                     # TTFT counts rendering and tokenizing too
    state = server_state(request)
    body.check()
    check_model(state, body.model)
    if body.chat_template is not None and not state.settings.trust_request_chat_template:
        raise bad_request("This server does not render a request's own chat_template; start it with "
                          "--trust-request-chat-template to allow it.", "chat_template")
    llm = state.llm
    prompt = await asyncio.to_thread(chat_prompt, body, llm.tokenizer, llm.max_model_len)   # as completions
    max_tokens = capped(body.max_tokens_requested(llm.sampling_defaults.get("max_tokens")), llm.max_tokens_cap)
    check_context(prompt, max_tokens, llm.max_model_len, body.context_length_exceeded_behavior, "messages")
    top = (body.top_logprobs or 0) if body.logprobs else None
    parser = state.settings.tool_call_parser
    form = constraint(body.response_format, body.structured_outputs)
    form_param = "response_format" if body.response_format is not None else "structured_outputs"
    structured = tools.constraint(body.tools, body.effective_tool_choice, body.parallel_tool_calls, parser, form,
                                  form_param)
    params = sampling_params(body, n=body.n or 1, max_tokens=max_tokens, logprobs=top,
                             prompt_logprobs=body.prompt_logprobs,
                             vocab_size=state.vocab_size, defaults=llm.sampling_defaults, structured=structured)
    job = Job("chatcmpl", body.model, [prompt], params, params.n, arrival=arrival)
    view = _View(state, job, body)
    return await answer(state, job, request, framed(view.events()) if body.stream else None,
                        lambda finals: view.response(finals[0]))


class _View:
    """Renders a chat job's engine outputs as OpenAI chat completions (whole, or as chunks)."""

    def __init__(self, state: ServerState, job: Job, body: ChatCompletionRequest) -> None:
        self.state, self.job, self.body = state, job, body
        self.tokens = token_table(state.tokens, body.return_tokens_as_token_ids,
                                  state.settings.return_tokens_as_token_ids)
        last = body.messages[-1]            # vLLM's echo: the last message, when it is of the reply's role
        self.echo = last.text() if body.echo and (not body.generation_prompt or last.role == "assistant") else ""
        self.opened = bool(state.settings.reasoning_parser) and reasoning.opened(state.llm.tokenizer,
                                                                                job.prompts[0].token_ids)

    def _header(self, obj: str) -> dict:
        job = self.job
        return {"id": job.request_id, "object": obj, "created": job.created, "model": job.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}

    def _logprobs(self, choice: CompletionOutput) -> dict | None:
        if not self.body.logprobs:
            return None
        k = self.body.top_logprobs or 0
        return {"content": chat_logprobs(self.tokens, choice.token_ids, choice.logprobs or [], k)}

    @property
    def _calls_tools(self) -> bool:
        """Whether replies are read for tool calls (tools given and a choice other than none)."""
        return bool(self.body.tools) and self.body.effective_tool_choice not in (None, "none")

    @property
    def _named(self) -> bool:
        """Whether tool_choice names the function to call (its reply then ends with "stop", as OpenAI's does)."""
        return isinstance(self.body.effective_tool_choice, tools.NamedToolChoice)

    def _message(self, choice: CompletionOutput) -> tuple[dict, str | None]:
        """The reply's message (its thinking apart with a reasoning parser), and its finish reason ("tool_calls"
        when it chose to call tools)."""
        thinking, text = (reasoning.split(choice.text, opened=self.opened) if self.state.settings.reasoning_parser
                          else (None, choice.text))
        message = {"role": "assistant", "content": text}
        if thinking is not None:
            message["reasoning_content"] = thinking
        if not self._calls_tools:
            return message, choice.finish_reason
        reader = tools.reader(self.body.effective_tool_choice, self.state.settings.tool_call_parser,
                              self.body.parallel_tool_calls is not False)
        message["content"], calls = merge(reader.feed(text, final=True))
        if not calls:
            return message, choice.finish_reason
        return {**message, "tool_calls": calls}, _finish(choice.finish_reason, not self._named)

    def _usage(self, choices: list[CompletionOutput]) -> dict:
        """usage, with the thinking's tokens in completion_tokens_details when a reasoning parser is set."""
        return self._details(usage(self.job.prompt_tokens, sum(len(c.token_ids) for c in choices),
                                   self.job.cached_tokens()),
                             [c.token_ids for c in choices])

    def _details(self, counts: dict | None, token_ids: list[list[int]]) -> dict | None:
        """`counts` with the thinking's tokens of the replies' `token_ids` (with a reasoning parser)."""
        if counts is not None and self.state.settings.reasoning_parser:
            tokenizer = self.state.llm.tokenizer
            counts["completion_tokens_details"] = {
                "reasoning_tokens": sum(reasoning.reasoning_tokens(tokenizer, ids, self.opened) for ids in token_ids)}
        return counts

    def response(self, final: RequestOutput) -> dict:
        """The whole (non-streamed) response."""
        choices = []
        for choice in sorted(final.outputs, key=lambda c: c.index):
            message, finish_reason = self._message(choice)
            if self.echo:
                message["content"] = self.echo + (message["content"] or "")
            entry = {"index": choice.index, "message": message, "logprobs": self._logprobs(choice),
                     "finish_reason": finish_reason,
                     **stop_fields(choice.finish_reason, choice.stop_reason,
                                   choice.token_ids[-1] if choice.token_ids else None)}
            if self.body.return_token_ids:
                entry["token_ids"] = choice.token_ids
            choices.append(entry)
        body = {**self._header("chat.completion"), "choices": choices, "usage": self._usage(final.outputs)}
        if self.body.perf_metrics_in_response:
            body["perf_metrics"] = perf_metrics(self.job)
        body["prompt_logprobs"] = None if self.body.prompt_logprobs is None else prompt_logprobs(
            self.tokens, self.job.prompts[0].token_ids, final.prompt_logprobs, self.body.prompt_logprobs)
        if self.body.return_token_ids:
            body["prompt_token_ids"] = self.job.prompts[0].token_ids
        return body

    def _chunk(self, index: int, delta: dict, logprobs: dict | None, finish_reason: str | None,
               usage_now: dict | None, stop: dict | None = None) -> dict:
        return {**self._header("chat.completion.chunk"),
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason,
                             **(stop or _NO_STOP)}],
                "usage": usage_now}

    async def events(self) -> AsyncIterator[dict]:
        """The chunks of the streamed response: every choice's role chunk first, then content deltas (reasoning
        deltas apart with a reasoning parser; with tools, OpenAI's call deltas: a call's id and name once its name
        is generated, then its argument fragments as they are)."""
        job = self.job
        tracker = StreamUsage(self.body.stream_options, job.prompt_tokens, job.cached_tokens)
        for index in range(job.n):
            chunk = self._chunk(index, {"role": "assistant", "content": ""}, None, None, tracker.for_chunk(False))
            if self.body.return_token_ids and index == 0:
                chunk["prompt_token_ids"] = job.prompts[0].token_ids
            yield chunk
            if self.echo:
                yield self._chunk(index, {"content": self.echo}, None, None, tracker.for_chunk(False))
        splits = ([reasoning.StreamSplit(self.opened) for _ in range(job.n)] if self.state.settings.reasoning_parser
                  else None)
        choice_tools = self.body.effective_tool_choice
        parallel = self.body.parallel_tool_calls is not False
        readers = ([tools.reader(choice_tools, self.state.settings.tool_call_parser, parallel) for _ in range(job.n)]
                   if self._calls_tools else None)
        generated: list[list[int]] = [[] for _ in range(job.n)]
        last_token: dict[int, int] = {}
        async for _, output in outputs(self.state, job):
            for k, choice in enumerate(output.outputs):
                tracker.add(len(choice.token_ids))
                generated[choice.index] += choice.token_ids
                if choice.token_ids:
                    last_token[choice.index] = choice.token_ids[-1]
                logprobs = self._logprobs(choice)
                has_logprobs = logprobs is not None and bool(logprobs["content"])
                ids = self.body.return_token_ids and bool(choice.token_ids)
                ended = choice.finish_reason is not None
                delta = {"content": choice.text} if choice.text or not ended else {}
                if splits is not None:
                    thinking, text = splits[choice.index].add(choice.text, ended)
                    delta = {key: value for key, value in (("reasoning_content", thinking), ("content", text))
                             if value}
                finish_reason = choice.finish_reason
                deltas = [delta] if delta else []
                if readers is not None:
                    reader = readers[choice.index]
                    thinking = {"reasoning_content": delta["reasoning_content"]} if "reasoning_content" in delta else {}
                    deltas = ([thinking] if thinking else []) + reader.feed(delta.get("content", ""), ended)
                    finish_reason = _finish(finish_reason, not self._named and any(call.name for call in reader.calls))
                if not (deltas or finish_reason or has_logprobs or ids):
                    continue
                last = output.finished and k == len(output.outputs) - 1
                deltas = deltas or [{}]
                for i, part in enumerate(deltas):
                    final = i == len(deltas) - 1
                    chunk = self._chunk(choice.index, part, logprobs if i == 0 else None,
                                        finish_reason if final else None,
                                        self._details(tracker.for_chunk(True), generated) if last and final
                                        else tracker.for_chunk(False),
                                        stop_fields(choice.finish_reason, choice.stop_reason,
                                                    last_token.get(choice.index)) if final else None)
                    if self.body.return_token_ids and i == 0:
                        chunk["choices"][0]["token_ids"] = choice.token_ids
                    if last and final and self.body.perf_metrics_in_response:
                        chunk["perf_metrics"] = perf_metrics(job)
                    yield chunk
        closing = self._details(tracker.closing(), generated)
        if closing is not None:
            yield {**self._header("chat.completion.chunk"), "choices": [], "usage": closing}


_NO_STOP = {"stop_reason": None, "matched_stop": None}


def _finish(reason: str | None, calls: bool) -> str | None:
    """A choice's finish reason: "tool_calls" when it ended naturally having called tools of its own choice."""
    return "tool_calls" if calls and reason == "stop" else reason
