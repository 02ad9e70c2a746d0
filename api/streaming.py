"""Server-sent events and the usage semantics of streamed responses.

Framing: each chunk is one `data: <json>\\n\\n`, the stream ends with `data: [DONE]\\n\\n`; an error after
the stream started is sent as `data: {"error": {...}}` and then `[DONE]`.

Usage (Fireworks semantics), decided by `stream_options`:
1. absent: every chunk has `"usage": null` except the last chunk of the stream (the one carrying the final
   finish_reason), which carries the whole request's usage;
2. `{"include_usage": true}`: choice chunks have `"usage": null`, then one extra chunk with `"choices": []`
   and the usage (OpenAI's shape);
3. `{"include_usage": false}` or `{}`: no usage anywhere;
4. `{"include_usage": true, "continuous_usage_stats": true}`: every chunk carries the usage so far, plus
   the extra chunk of case 2. `continuous_usage_stats` without `include_usage: true` sends no usage, as vLLM.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.errors import APIError, envelope
from api.protocol import StreamOptions

logger = logging.getLogger("api")

DONE = b"data: [DONE]\n\n"


def sse(payload: dict) -> bytes:
    """One `data:` event."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """The usage object; prompt_tokens_details.cached_tokens counts the prompt tokens the prefix cache served."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class StreamUsage:
    """Which chunks of a stream carry usage, and what it says. Count tokens with `add` as chunks are built."""

    def __init__(self, options: StreamOptions | None, prompt_tokens: int,
                 cached_tokens: Callable[[], int] = lambda: 0) -> None:
        self.in_last_chunk = options is None
        self.final_chunk = bool(options and options.include_usage)
        self.continuous = bool(options and options.include_usage and options.continuous_usage_stats)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_tokens = cached_tokens      # read when a usage is built: known once the prompt is scheduled

    def add(self, tokens: int) -> None:
        """Count tokens generated (call before building the chunk that carries them)."""
        self.completion_tokens += tokens

    def for_chunk(self, last: bool) -> dict | None:
        """The `usage` of a choice chunk; `last` marks the chunk with the stream's final finish_reason."""
        if self.continuous or (self.in_last_chunk and last):
            return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens())
        return None

    def closing(self) -> dict | None:
        """The usage of the extra `choices: []` chunk, or None when there is none."""
        return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens()) if self.final_chunk else None


UNEXPECTED = "The server had an error while processing your request."


async def named_events(events: AsyncIterator[dict], error_event: Callable[[APIError], dict],
                       numbered: bool = False) -> AsyncIterator[bytes]:
    """Anthropic's and the Responses API's framing: `event: <type>` then `data: <json>` per event (numbered by
    `sequence_number` when `numbered`). A failure ends the stream with `error_event` of it (an unexpected one as a
    500 APIError with code "server_error"); there is no [DONE]."""
    number = 0

    def frame(payload: dict) -> bytes:
        nonlocal number
        if numbered:
            payload = {**payload, "sequence_number": number}
            number += 1
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {payload['type']}\ndata: {data}\n\n".encode()

    try:
        async for payload in events:
            yield frame(payload)
    except APIError as exc:
        yield frame(error_event(exc))
    except Exception:
        logger.exception("error while streaming")
        yield frame(error_event(APIError(500, UNEXPECTED, code="server_error")))
    finally:
        await events.aclose()


async def framed(events: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    """Encode chunks as SSE, turn a failure into an error event, and always end with [DONE]."""
    try:
        async for payload in events:
            yield sse(payload)
    except APIError as exc:
        yield sse(exc.body())
    except Exception:
        logger.exception("error while streaming")
        yield sse(envelope(UNEXPECTED, "server_error"))
    finally:
        await events.aclose()
    yield DONE


class EventStreamResponse(Response):
    """A text/event-stream response that stops (cancelling its event generator) as soon as the client
    disconnects, whatever the ASGI server's spec version. `on_close` runs at the end in every case, even
    when the client left before the generator started: it aborts the engine requests."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await send({"type": "http.response.start", "status": self.status_code,
                                    "headers": self.raw_headers})
                        async for chunk in self.events:
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    except OSError:
                        pass                       # the client went away mid-send
                    finally:
                        group.cancel_scope.cancel()

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        finally:
            await self.events.aclose()
            self.on_close()
