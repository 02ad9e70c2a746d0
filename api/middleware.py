"""Plain ASGI middleware (no BaseHTTPMiddleware, which would get in the way of streaming and of disconnect
detection): the API key check on /v1 routes, the request body size limit, paths with a trailing slash, the
request id on every response, and the count of HTTP responses by route and status."""

from __future__ import annotations

import hmac
import json
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import envelope, is_anthropic, shaped
from api.metrics import Metrics


async def send_error(send: Send, status: int, message: str, type: str, code: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None, path: str = "") -> None:
    """Answer with the error envelope (in the shape of the API of `path`) straight from the middleware."""
    body = json.dumps(shaped(path, status, envelope(message, type, None, code))).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def route_path(scope: Scope) -> str:
    """The path the router matches: without the `--root-path` prefix, which the router strips too (so that
    `/prefix/v1/...` is checked like `/v1/...`)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and (path == root or path.startswith(root + "/")) else path


def needs_key(path: str) -> bool:
    """Whether a route generates or reads the API's data, and so takes the API key: the /v1 routes and SageMaker's
    /invocations (not /health, /ping, /load, /metrics, /version, /tokenize, /detokenize, /openapi.json)."""
    return path == "/v1" or path.startswith("/v1/") or path == "/invocations"


class ApiKeyMiddleware:
    """Every route that `needs_key` requires `Authorization: Bearer <key>` for one of `api_keys` (compared in
    constant time); the Anthropic Messages API also takes it as `x-api-key: <key>`, as Anthropic's clients send it."""

    def __init__(self, app: ASGIApp, api_keys: list[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        if scope["type"] == "http" and needs_key(path):
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"")
            ok = self._known(given.removeprefix(b"Bearer ")) and given.startswith(b"Bearer ")
            if is_anthropic(path) and not ok:
                given = headers.get(b"x-api-key", given)
                ok = self._known(given)
            if not ok:
                how = "'x-api-key: <key>' or " if is_anthropic(path) else ""
                message = "Incorrect API key provided." if given else \
                    f"Missing API key: send it as {how}'Authorization: Bearer <key>'."
                await send_error(send, 401, message, "authentication_error", "invalid_api_key",
                                 [(b"www-authenticate", b"Bearer")], path)
                return
        await self.app(scope, receive, send)

    def _known(self, given: bytes) -> bool:
        """Whether `given` is one of the keys: each compared in constant time, all of them every time."""
        return sum(hmac.compare_digest(given, key) for key in self.keys) > 0


class BodyLimitMiddleware:
    """Bodies over `max_bytes` get 413 before the app sees them; smaller ones are read here and replayed to
    the app. An oversized body is read to its end (up to DRAIN_LIMIT) before answering, so that a client
    that writes its whole body before reading gets the 413 rather than a reset connection."""

    DRAIN_LIMIT = 64 << 20

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else 0
        if declared > self.DRAIN_LIMIT:
            await self._too_large(send, scope.get("path", ""))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":       # the client left before sending its body
                return
            size += len(message.get("body", b""))
            if size <= self.max_bytes and declared <= self.max_bytes:
                chunks.append(message.get("body", b""))
            if not message.get("more_body", False) or size > self.DRAIN_LIMIT:
                break
        if size > self.max_bytes or declared > self.max_bytes:
            await self._too_large(send, scope.get("path", ""))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, path: str) -> None:
        await send_error(send, 413, f"The request body is larger than the limit of {self.max_bytes} bytes.",
                         "invalid_request_error", "request_too_large", [(b"connection", b"close")], path)


class TrailingSlashMiddleware:
    """`/v1/completions/` is served as `/v1/completions` (Starlette would answer a bare 307 redirect, which
    clients do not follow for a POST)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            trimmed = path.rstrip("/") or "/"
            scope.update(path=trimmed, raw_path=trimmed.encode())     # in place: the router's "route" shows outside
        await self.app(scope, receive, send)


_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """Every response carries its request's id, as OpenAI's (`x-request-id`) and, on the Anthropic routes, as
    Anthropic's (`request-id`), which the official clients expose (`_request_id`, an error's `request_id`). A
    client's own `X-Request-Id` is kept (as vLLM's), else one is made."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given if _CLIENT_ID.fullmatch(given) else f"req_{uuid.uuid4().hex}".encode()
        names = [b"x-request-id", *([b"request-id"] if is_anthropic(route_path(scope)) else [])]

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *((n, request_id) for n in names)]}
            await send(message)

        await self.app(scope, receive, with_id)


class HttpMetricsMiddleware:
    """Counts every HTTP response by method, route template and status (`Metrics.http_requests`), the middleware's
    own answers (401, 413, CORS) included. The route is the template the router matched (`_handler`); a request
    no route matched is counted as 'other', so that clients cannot grow the metric without bound."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.counter = metrics.http_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            self.counter.labels(scope["method"], _handler(scope), str(status[0])).inc()


def _handler(scope: Scope) -> str:
    """The template of the route the router matched (FastAPI's `scope["route"]`); for a plain Starlette route
    (FastAPI's own /openapi.json), which sets only the endpoint, its path, which has no parameters; else 'other'."""
    route = scope.get("route")
    if route is not None:
        return route.path
    return route_path(scope) if "endpoint" in scope else "other"
