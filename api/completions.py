"""POST /v1/completions: text completion over the four prompt forms, with n, best_of, echo, legacy logprobs
and streaming. Choices are prompt-major: prompt p's choice j has index p * n + j."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.logprobs import LegacyLogprobs, echo_offsets, echo_text, merge_legacy, prompt_logprobs, token_table
from api.perf_metrics import perf_metrics
from api.protocol import CompletionRequest
from api.responses import CompletionResponse, generation_responses
from api.runner import Job, answer, outputs
from api.sampling import capped, check_context, completion_prompts, sampling_params
from api.state import SYSTEM_FINGERPRINT, ServerState, check_model, server_state
from api.stops import stop_fields
from api.streaming import StreamUsage, framed, usage
from api.structured import constraint
from engine.outputs import CompletionOutput, PositionLogprobs, RequestOutput

router = APIRouter()

DEFAULT_MAX_TOKENS = 16


@router.post("/v1/completions", response_model=None, responses=generation_responses(CompletionResponse))
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """Complete one or more prompts (streamed as server-sent events with `stream: true`)."""
    arrival = time.monotonic()                     # TTFT counts parsing and tokenizing too
    state = server_state(request)
    body.check()
    check_model(state, body.model)
    llm = state.llm
    # Off the event loop, though the tokenizer's work is bounded by the context length (it releases the GIL).
    prompts = await asyncio.to_thread(completion_prompts, body, llm.tokenizer, state.vocab_size, llm.max_model_len)
    max_tokens = capped(body.max_tokens_requested(DEFAULT_MAX_TOKENS), llm.max_tokens_cap)
    for prompt in prompts:
        check_context(prompt, max_tokens, llm.max_model_len, body.context_length_exceeded_behavior, "prompt")
    n = body.n or 1
    best_of = body.best_of or n
    # best_of ranks the candidates by cumulative logprob, which the engine tracks when logprobs are on.
    logprobs = body.logprobs if body.logprobs is not None else (0 if best_of > n else None)
    wanted = [k for k in (body.logprobs if body.echo else None, body.prompt_logprobs) if k is not None]
    params = sampling_params(body, n=best_of, max_tokens=max_tokens, logprobs=logprobs,
                             prompt_logprobs=max(wanted) if wanted else None, vocab_size=state.vocab_size,
                             defaults=llm.sampling_defaults,
                             structured=constraint(body.response_format, body.structured_outputs))
    job = Job("cmpl", body.model, prompts, params, n, arrival=arrival)
    view = _View(state, job, body)
    return await answer(state, job, request, framed(view.events()) if body.stream else None, view.response)


@dataclass
class _ChoiceState:
    """What a streamed choice still needs: its echo (sent with its first chunk) and its logprobs builder."""

    first: bool
    echo: str
    logprobs: LegacyLogprobs | None


class _View:
    """Renders a completion job's engine outputs as OpenAI completions (whole, or as chunks)."""

    def __init__(self, state: ServerState, job: Job, body: CompletionRequest) -> None:
        self.state, self.job, self.body = state, job, body
        self.skip_special = body.skip_special_tokens is not False
        self.echoes = [echo_text(state.llm.tokenizer, p) if body.echo else "" for p in job.prompts]
        self.tokens = token_table(state.tokens, body.return_tokens_as_token_ids,
                                  state.settings.return_tokens_as_token_ids)

    def _header(self) -> dict:
        job = self.job
        return {"id": job.request_id, "object": "text_completion", "created": job.created, "model": job.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}

    def _builder(self, p: int) -> LegacyLogprobs | None:
        if self.body.logprobs is None:
            return None
        tokenizer = self.state.llm.tokenizer
        prompt_ids = self.job.prompts[p].token_ids
        return LegacyLogprobs(self.tokens, tokenizer.detokenizer(prompt_ids, self.skip_special),
                              len(self.echoes[p]), self.body.logprobs)

    def _logprobs(self, p: int, builder: LegacyLogprobs | None, first: bool,
                  prompt_logprobs: list[PositionLogprobs | None] | None, choice: CompletionOutput) -> dict | None:
        if builder is None:
            return None
        part = builder.add(choice.token_ids, choice.logprobs or [])
        if first and self.body.echo:
            prompt = self.job.prompts[p]
            offsets = echo_offsets(self.state.llm.tokenizer, prompt)
            part = merge_legacy(builder.prompt(prompt.token_ids, prompt_logprobs, offsets), part)
        return part

    def _choice(self, index: int, text: str, logprobs: dict | None, choice: CompletionOutput,
                last_token: int | None) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": choice.finish_reason,
                **stop_fields(choice.finish_reason, choice.stop_reason, last_token)}

    def response(self, finals: list[RequestOutput]) -> dict:
        """The whole (non-streamed) response."""
        job, n = self.job, self.job.n
        choices = []
        for p, output in enumerate(finals):
            candidates = sorted(output.outputs, key=lambda c: c.index)
            if len(candidates) > n:                   # best_of: the n with the highest cumulative logprob
                candidates = sorted(candidates, key=lambda c: c.cumulative_logprob, reverse=True)[:n]
            for j, choice in enumerate(candidates):
                logprobs = self._logprobs(p, self._builder(p), True, output.prompt_logprobs, choice)
                entry = self._choice(p * n + j, self.echoes[p] + choice.text, logprobs, choice,
                                     choice.token_ids[-1] if choice.token_ids else None)
                entry["prompt_logprobs"] = None if self.body.prompt_logprobs is None else prompt_logprobs(
                    self.tokens, job.prompts[p].token_ids, output.prompt_logprobs, self.body.prompt_logprobs)
                if self.body.return_token_ids:
                    entry.update(prompt_token_ids=job.prompts[p].token_ids, token_ids=choice.token_ids)
                choices.append(entry)
        generated = sum(len(c.token_ids) for output in finals for c in output.outputs)
        body = {**self._header(), "choices": choices, "usage": usage(job.prompt_tokens, generated, job.cached_tokens())}
        if self.body.perf_metrics_in_response:
            body["perf_metrics"] = perf_metrics(job)
        return body

    async def events(self) -> AsyncIterator[dict]:
        """The chunks of the streamed response."""
        job, n = self.job, self.job.n
        tracker = StreamUsage(self.body.stream_options, job.prompt_tokens, job.cached_tokens)
        states: dict[int, _ChoiceState] = {}
        prompt_logprobs: dict[int, list] = {}
        finished = 0
        last_token: dict[int, int] = {}
        async for p, output in outputs(self.state, job):
            if output.prompt_logprobs is not None:
                prompt_logprobs.setdefault(p, output.prompt_logprobs)
            finished += output.finished
            for k, choice in enumerate(output.outputs):
                index = p * n + choice.index
                st = states.get(index) or states.setdefault(index, _ChoiceState(True, self.echoes[p], self._builder(p)))
                logprobs = self._logprobs(p, st.logprobs, st.first, prompt_logprobs.get(p), choice)
                tracker.add(len(choice.token_ids))
                if choice.token_ids:
                    last_token[index] = choice.token_ids[-1]
                text = (st.echo if st.first else "") + choice.text
                last = finished == len(job.prompts) and output.finished and k == len(output.outputs) - 1
                ids = self.body.return_token_ids
                has_logprobs = logprobs is not None and bool(logprobs["tokens"])
                if not (text or choice.finish_reason or has_logprobs or (ids and (st.first or choice.token_ids))):
                    continue
                entry = self._choice(index, text, logprobs, choice, last_token.get(index))
                if ids:
                    if st.first:
                        entry["prompt_token_ids"] = job.prompts[p].token_ids
                    entry["token_ids"] = choice.token_ids
                st.first = False
                chunk = {**self._header(), "choices": [entry], "usage": tracker.for_chunk(last)}
                if last and self.body.perf_metrics_in_response:
                    chunk["perf_metrics"] = perf_metrics(job)
                yield chunk
        closing = tracker.closing()
        if closing is not None:
            yield {**self._header(), "choices": [], "usage": closing}
