"""AsyncLLM: the asyncio face of LLMEngine, for servers and for research code.

    llm = AsyncLLM("path/to/checkpoint")
    async for out in llm.generate("def fib(n):", SamplingParams(max_tokens=32)):
        print(out.outputs[0].text, end="")        # each output holds only what is new

The engine is not thread-safe, so one dedicated thread owns it and runs its steps, off the event loop: the
server keeps accepting and streaming while the model computes. Commands (add, abort) cross over through a
thread-safe queue and are applied between two steps; each step's outputs go back to the requests' streams
with `loop.call_soon_threadsafe`. When nothing is in flight the thread sleeps on the queue (no busy wait).
If the thread dies, every pending request gets an EngineDeadError and `is_alive` turns False.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator

from engine.config import EngineConfig
from engine.llm import DEFAULT_MODEL
from engine.llm_engine import EngineStats, LLMEngine
from engine.outputs import RequestOutput
from engine.request_stream import END, RequestStream
from engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

class EngineDeadError(RuntimeError):
    """The engine thread has stopped (it failed or was shut down); no request can be served."""


class RequestCutError(EngineDeadError):
    """The request was ended by `AsyncLLM.abort_all` (a server shutting down) before it finished."""


class EngineOverloadedError(RuntimeError):
    """Accepting the request would grow the waiting queue beyond its limit; retry later."""


class AsyncLLM:
    """Serve one checkpoint to asyncio code: `generate` streams a request's outputs, `abort` stops it.

    model and the keyword options are those of `LLM` (dtype, device, max_model_len, block_size, kv_cache_blocks,
    max_num_seqs, max_num_batched_tokens, enable_prefix_caching, seed, cuda_graphs, cpu_threads); or pass a ready
    `engine` (on the CPU, one built on another thread runs slower: see `_main`). max_queued_seqs bounds the
    sequences waiting beyond the running batch (None: no bound): a request that would exceed it raises
    EngineOverloadedError instead of queueing without limit.
    """

    def __init__(self, model: str | None = None, *, engine: LLMEngine | None = None,
                 max_queued_seqs: int | None = None, **options) -> None:
        self.max_queued_seqs = max_queued_seqs
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}       # live requests, as the event loops see them
        self._lock = threading.Lock()
        self._in_flight = 0                                  # sequences accepted and not yet released
        self._error: BaseException | None = None
        self._engine: LLMEngine | None = engine
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(model, options, ready), name="engine", daemon=True)
        self._thread.start()
        ready.wait()
        if self._engine is None:                             # building it failed: the thread has ended
            raise self._error
        self.config: EngineConfig = self._engine.config
        self.model_config = self._engine.model_config
        self.tokenizer = self._engine.tokenizer      # safe to use for encoding and decoding from any thread
        self.max_model_len: int = self._engine.max_model_len
        self.sampling_defaults: dict = self._engine.sampling_defaults     # from generation_config.json
        self.max_tokens_cap: int | None = self._engine.max_tokens_cap      # a server request's limit, if any

    # ---- the asyncio side -------------------------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        """Whether the engine thread is running and can take requests."""
        return self._error is None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """Why the engine thread stopped, if it did."""
        return self._error

    def stats(self) -> EngineStats:
        """The engine's queues and KV-cache use, as of its last step or command."""
        return self._stats

    async def add_request(self, prompt: str | list[int], params: SamplingParams,
                          request_id: str | None = None) -> RequestStream:
        """Queue a request and return its stream once the engine has accepted it. Raises the engine's
        ValueError for an invalid request, EngineOverloadedError or EngineDeadError. The caller must
        iterate the stream to its end or `abort` it."""
        if self._error is not None:
            raise EngineDeadError(f"the engine has stopped: {self._error!r}")
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        loop = asyncio.get_running_loop()
        with self._lock:
            limit = None if self.max_queued_seqs is None else self.config.max_num_seqs + self.max_queued_seqs
            if limit is not None and self._in_flight + params.n > limit:
                raise EngineOverloadedError(
                    f"the server is at capacity ({self._in_flight} sequences in flight, at most {limit}); "
                    "retry later")
            self._in_flight += params.n
        stream = self._streams[request_id] = RequestStream(request_id, loop, params.n)
        accepted = loop.create_future()
        self._commands.put(("add", stream, prompt, params, accepted))
        if self._error is not None:
            self._fail_pending()
        try:
            await accepted
        except BaseException:
            self._abort(request_id, stream)
            raise
        return stream

    async def generate(self, prompt: str | list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's delta outputs until it finishes. Cancelling the consumer (or closing the
        generator) aborts the request and frees its KV blocks."""
        stream = await self.add_request(prompt, params, request_id)
        try:
            async for output in stream:
                yield output
        finally:
            if not stream.done:
                self._abort(stream.request_id, stream)

    async def abort(self, request_id: str) -> None:
        """Stop a request: its stream ends and the engine frees its blocks before its next step."""
        self._abort(request_id, self._streams.get(request_id))

    def abort_nowait(self, request_id: str) -> None:
        """`abort` for code that cannot await (e.g. a `finally` during cancellation)."""
        self._abort(request_id, self._streams.get(request_id))

    @property
    def num_requests(self) -> int:
        """Requests accepted and not yet ended, as the asyncio side sees them."""
        return len(self._streams)

    def abort_all(self, reason: str) -> int:
        """End every request in flight: its consumer gets RequestCutError(reason), and the engine frees its
        blocks before its next step. Returns how many were ended. Call it from the loop that runs them."""
        streams = list(self._streams.values())
        for stream in streams:
            self._commands.put(("abort", stream.request_id))
            self._unregister(stream)
            stream._put(RequestCutError(reason))
            self._release(stream)
        return len(streams)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine thread after its current step; pending requests get EngineDeadError."""
        if self._thread.is_alive():
            self._commands.put(("stop",))
            self._thread.join(timeout)

    def _abort(self, request_id: str, stream: RequestStream | None) -> None:
        self._commands.put(("abort", request_id))
        if stream is not None:
            self._unregister(stream)
            stream._put(END)
            self._release(stream)

    def _unregister(self, stream: RequestStream) -> None:
        """Forget `stream` by its id, unless the id already names a newer request's stream (an id may be reused
        as soon as its request ended, while that request's last output is still on its way here)."""
        if self._streams.get(stream.request_id) is stream:
            del self._streams[stream.request_id]

    def _release(self, stream: RequestStream) -> None:
        with self._lock:
            if not stream.released:
                stream.released = True
                self._in_flight -= stream.num_seqs

    def _deliver(self, items: list[tuple[RequestStream, object]]) -> None:
        """On the stream's event loop: hand over outputs (or errors) from the engine thread."""
        for stream, item in items:
            stream._put(item)
            if not isinstance(item, RequestOutput) or item.finished:
                self._unregister(stream)
                self._release(stream)

    # ---- the engine thread ------------------------------------------------------------------------------

    def _main(self, model: str | None, options: dict, ready: threading.Event) -> None:
        """The engine thread: build the engine here (unless one was given), then run it.

        Building it here keeps every torch call of the engine on this one thread. On the CPU that matters:
        measured on 2 cores, a model loaded on one thread and run on another generated about 30% slower (and
        used 1.45 instead of 2 cores), as did one run from a second thread after any torch work on the first.
        The likely cause (not verified in GNU OpenMP's source): each thread that runs a parallel region keeps
        its own worker team, and with more managed threads than cores the workers stop spin-waiting.
        """
        try:
            if self._engine is None:
                self._engine = LLMEngine(EngineConfig(model=model or DEFAULT_MODEL, **options))
            self._stats = self._engine.stats()
        except BaseException as exc:
            self._engine, self._error = None, exc
            return
        finally:
            ready.set()
        self._run()

    def _run(self) -> None:
        live: dict[str, RequestStream] = {}
        engine = self._engine
        try:
            while True:
                command = None if engine.has_unfinished_requests() else self._commands.get()
                while True:
                    if command is not None and not self._apply(command, live):
                        raise EngineDeadError("the engine was shut down")
                    try:
                        command = self._commands.get_nowait()
                    except queue.Empty:
                        break
                if engine.has_unfinished_requests():
                    outputs = engine.step()
                    self._stats = engine.stats()
                    self._dispatch(outputs, live)
        except BaseException as exc:
            if not isinstance(exc, EngineDeadError):
                logger.exception("the engine thread failed")
            self._error = exc
            # Nothing runs or waits any more, and no block serves anyone: say so (counters stay as they were).
            self._stats = dataclasses.replace(self._stats, num_running=0, num_waiting=0, kv_blocks_used=0)
            self._dispatch_error(list(live.values()), exc)
            self._fail_pending()
        finally:
            engine.close()                  # its tensor-parallel workers, if any, go with the thread

    def _apply(self, command: tuple, live: dict[str, RequestStream]) -> bool:
        """Apply one command to the engine; False for `stop`."""
        kind = command[0]
        if kind == "stop":
            return False
        if kind == "abort":
            live.pop(command[1], None)
            self._engine.abort_request(command[1])
        else:
            _, stream, prompt, params, accepted = command
            try:
                self._engine.add_request(stream.request_id, prompt, params, stream=True)
            except Exception as exc:
                _call_soon(stream.loop, _settle, accepted, exc)
                return True
            live[stream.request_id] = stream
            _call_soon(stream.loop, _settle, accepted, None)
        self._stats = self._engine.stats()
        return True

    def _dispatch(self, outputs: list[RequestOutput], live: dict[str, RequestStream]) -> None:
        """Send each output to its stream, one loop callback per event loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for output in outputs:
            stream = live.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del live[output.request_id]
            by_loop.setdefault(stream.loop, []).append((stream, output))
        for loop, items in by_loop.items():
            if not _call_soon(loop, self._deliver, items):     # the loop is gone: nobody will read these
                for stream, output in items:
                    live.pop(stream.request_id, None)
                    self._engine.abort_request(output.request_id)

    def _dispatch_error(self, streams: list[RequestStream], exc: BaseException) -> None:
        error = exc if isinstance(exc, EngineDeadError) else EngineDeadError(f"the engine failed: {exc!r}")
        for stream in streams:
            _call_soon(stream.loop, self._deliver, [(stream, error)])

    def _fail_pending(self) -> None:
        """After the thread stopped: fail the add commands still queued (from any thread)."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                stream, accepted = command[1], command[4]
                error = EngineDeadError(f"the engine has stopped: {self._error!r}")
                _call_soon(stream.loop, _settle, accepted, error)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> bool:
    """loop.call_soon_threadsafe, False when the loop is closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True
