"""Running one HTTP request on the engine: one engine request per prompt, their outputs merged, aborted
when the client goes away.

Streaming responses stop when the SSE response cancels the event generator (see streaming.py); a
non-streamed request is collected while a second task waits for the client's `http.disconnect`, and
whichever ends first wins. Either way every engine request still running is aborted, which frees its KV
blocks before the engine's next step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from api.errors import APIError, bad_request
from api.protocol import SamplingRequest
from api.sampling import Prompt
from api.state import ServerState
from api.streaming import EventStreamResponse
from engine.async_llm import EngineDeadError, EngineOverloadedError
from engine.outputs import RequestOutput
from engine.request_stream import OutputAccumulator, RequestStream
from engine.sampling_params import SamplingParams


@dataclass(slots=True)
class Job:
    """One HTTP request's work: P prompts, each run with `params` (params.n choices per prompt, of which
    `n` are returned), answered as `object` with id `request_id`."""

    prefix: str
    model: str
    prompts: list[Prompt]
    params: SamplingParams
    n: int
    request_id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    arrival: float = field(default_factory=time.monotonic)
    streams: list[RequestStream] = field(default_factory=list)
    cached: dict[int, int] = field(default_factory=dict)     # prompt index -> its tokens the prefix cache served
    timings: dict[int, dict[str, float]] = field(default_factory=dict)   # prompt index -> its engine timestamps

    def __post_init__(self) -> None:
        self.request_id = f"{self.prefix}-{uuid.uuid4().hex}"

    @property
    def prompt_tokens(self) -> int:
        """usage.prompt_tokens: each prompt counted once, whatever n is."""
        return sum(len(p.token_ids) for p in self.prompts)

    def cached_tokens(self) -> int:
        """usage.prompt_tokens_details.cached_tokens: the prompt tokens served from the prefix cache so far."""
        return sum(self.cached.values())


async def submit(state: ServerState, job: Job) -> None:
    """Add the job's engine requests (all or none); errors become 400, 429 or 503 (also once the server is
    shutting down)."""
    if state.stopping:
        raise APIError(503, "The server is shutting down; retry on another instance.", type="server_error")
    llm = state.llm
    needed = len(job.prompts) * job.params.n
    if llm.max_queued_seqs is not None and needed > llm.config.max_num_seqs + llm.max_queued_seqs:
        param = "best_of" if job.params.n > job.n else "n"          # the engine runs best_of candidates
        raise bad_request(f"This request needs {needed} sequences (prompts x {param}); the server holds at most "
                          f"{llm.config.max_num_seqs + llm.max_queued_seqs}.", param)
    results = await asyncio.gather(
        *(llm.add_request(p.token_ids, job.params, f"{job.request_id}-{i}") for i, p in enumerate(job.prompts)),
        return_exceptions=True)
    job.streams = [r for r in results if isinstance(r, RequestStream)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        abort(state, job)
        raise _as_api_error(errors[0])


def _as_api_error(exc: BaseException) -> BaseException:
    if isinstance(exc, EngineOverloadedError):
        return APIError(429, str(exc), type="rate_limit_error", headers={"retry-after": "1"})
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), type="server_error")
    if isinstance(exc, ValueError):        # the engine's messages begin with the field they are about
        field = str(exc).split(" ", 1)[0]
        return bad_request(str(exc), field if field in SamplingRequest.model_fields else None)
    return exc


def abort(state: ServerState, job: Job) -> None:
    """Abort every engine request of the job that has not finished."""
    for stream in job.streams:
        if not stream.done:
            state.llm.abort_nowait(stream.request_id)


async def outputs(state: ServerState, job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, delta output) as they come, from all of the job's engine requests. Records metrics.
    Engine failures are raised as APIError 503."""
    timers = [state.metrics.timer(job.arrival) for _ in job.streams]
    try:
        async for p, output in _merged(job.streams):
            job.cached[p] = max(job.cached.get(p, 0), output.num_cached_tokens)
            if output.metrics:
                job.timings[p] = output.metrics
            timers[p].observe(output)
            yield p, output
    except EngineDeadError as exc:
        raise APIError(503, str(exc), type="server_error") from exc
    finally:
        abort(state, job)


async def _merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(p: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                queue.put_nowait((p, output))
            queue.put_nowait((p, None))
        except Exception as exc:
            queue.put_nowait((p, exc))

    tasks = [asyncio.create_task(pump(p, s)) for p, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            p, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield p, item
    finally:
        for task in tasks:
            task.cancel()


async def answer(state: ServerState, job: Job, request: Request, events: AsyncIterator[bytes] | None,
                 build: Callable[[list[RequestOutput]], dict]) -> Response:
    """Submit the job, then stream `events` (framed server-sent events, when streaming) or answer with the body
    `build` makes of its final outputs, one per prompt."""
    await submit(state, job)
    if events is not None:
        return EventStreamResponse(events, on_close=lambda: abort(state, job))
    finals = await collect(state, job, request)
    if finals is None:
        return Response(status_code=499)           # the client is gone; nobody reads this
    return JSONResponse(build(finals))


async def collect(state: ServerState, job: Job, request: Request) -> list[RequestOutput] | None:
    """The job's final outputs, one per prompt; None if the client disconnected first (the job is aborted)."""

    async def gather() -> list[RequestOutput]:
        accumulators = [OutputAccumulator() for _ in job.prompts]
        async for p, output in outputs(state, job):
            accumulators[p].add(output)
        return [acc.output for acc in accumulators]

    work = asyncio.ensure_future(gather())
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        return None
    finally:
        watcher.cancel()
        work.cancel()
        abort(state, job)


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
