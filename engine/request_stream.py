"""The stream of one asyncio request's outputs, and the accumulator that folds delta outputs together."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import replace

from engine.outputs import CompletionOutput, RequestOutput

END = object()     # marks the end of a stream that was aborted


class OutputAccumulator:
    """Folds delta outputs into the cumulative output (text, tokens and logprobs appended per choice)."""

    def __init__(self) -> None:
        self.output: RequestOutput | None = None
        self._choices: dict[int, CompletionOutput] = {}

    def add(self, delta: RequestOutput) -> RequestOutput:
        """Fold `delta` in and return the cumulative output so far (the inputs are never modified)."""
        if self.output is None:
            self.output = replace(delta, outputs=[])
        out = self.output
        out.finished = delta.finished
        out.num_cached_tokens = delta.num_cached_tokens
        if delta.metrics:
            out.metrics = delta.metrics           # the finished output's timestamps
        if out.prompt_logprobs is None:
            out.prompt_logprobs = delta.prompt_logprobs
        for choice in delta.outputs:
            mine = self._choices.get(choice.index)
            if mine is None:
                mine = self._choices[choice.index] = CompletionOutput(
                    choice.index, "", [], None, None if choice.logprobs is None else [])
                out.outputs.append(mine)
                out.outputs.sort(key=lambda c: c.index)
            mine.text += choice.text
            mine.token_ids.extend(choice.token_ids)
            if choice.logprobs is not None:
                if mine.logprobs is None:
                    mine.logprobs = []
                mine.logprobs.extend(choice.logprobs)
            mine.cumulative_logprob = choice.cumulative_logprob
            mine.finish_reason = choice.finish_reason
            mine.stop_reason = choice.stop_reason
        return out


class RequestStream:
    """The outputs of one request as they arrive. `async for` yields delta outputs; deltas that arrived
    together are merged into one, so a slow consumer never falls behind by more than one item. The stream
    ends after the output with `finished=True`, or when the request is aborted."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop, num_seqs: int) -> None:
        self.request_id = request_id
        self.loop = loop
        self.num_seqs = num_seqs
        self.done = False            # the last item was handed out (or the request was aborted)
        self.released = False        # its sequences no longer count against the queue limit
        self._items: deque = deque()
        self._ready = asyncio.Event()

    def _put(self, item: object) -> None:
        if not self.done:
            self._items.append(item)
            self._ready.set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        while not self._items:
            if self.done:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if item is END:
            self.done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.done = True
            raise item
        if self._items and isinstance(self._items[0], RequestOutput) and not item.finished:
            acc = OutputAccumulator()
            acc.add(item)
            while self._items and isinstance(self._items[0], RequestOutput) and not item.finished:
                item = self._items.popleft()
                acc.add(item)
            item = acc.output
        self.done = item.finished
        return item
