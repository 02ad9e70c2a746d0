"""A read timeout for HTTP requests, which uvicorn lacks: a client that opens a connection, or starts a request,
and then stalls (half-sent headers, a body that stops) is answered 408 and disconnected after `read_timeout`
seconds, instead of holding a connection and a request slot forever.

The clock runs from the moment a connection opens (or, on a kept-alive connection, a new request starts) until
the request's last body byte has arrived. Responses are not timed: a long streamed completion is unaffected, and
so is a kept-alive connection between requests, which uvicorn's `timeout_keep_alive` already closes.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.errors import envelope


def protocol_with_read_timeout(read_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a read timeout of `read_timeout` seconds (0: none), for `Config(http=)`."""
    return type("ReadTimeoutProtocol", (ReadTimeoutProtocol,), {"read_timeout": read_timeout})


class ReadTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose requests must arrive whole within `read_timeout` seconds."""

    read_timeout: float = 0.0
    _read_timer: asyncio.TimerHandle | None = None
    _in_body = False                # the current request's headers are in: `self.cycle` is its cycle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: a connection that sends nothing is timed out too."""
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """A request starts (on a kept-alive connection the clock starts here)."""
        super().on_message_begin()
        self._in_body = False
        self._arm()

    def on_headers_complete(self) -> None:
        """The headers are in; the body (if any) follows."""
        super().on_headers_complete()
        self._in_body = True

    def on_message_complete(self) -> None:
        """The request has arrived whole: stop the clock."""
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._read_timer is None and self.read_timeout > 0:
            self._read_timer = self.loop.call_later(self.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        """Answer 408 unless this request's response has started (a 413 sent before the body, say), then close; a
        handler waiting for the body sees the client disconnect and lets go of the request."""
        self._read_timer = None
        if self.transport.is_closing():
            return
        if not (self._in_body and self.cycle is not None and self.cycle.response_started):
            message = f"The request did not arrive whole within {self.read_timeout:g} seconds."
            body = json.dumps(envelope(message, "invalid_request_error", None, "request_timeout")).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()
