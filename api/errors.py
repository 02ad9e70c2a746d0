"""The error envelope `{"error": {"message", "type", "param", "code"}}` and the handlers that produce it.

Every failure leaves the server in this shape, never as a stack trace: validation problems (which FastAPI
would answer with 422) become 400, unknown routes 404, anything unexpected 500. The Anthropic Messages API
(`/v1/messages`) answers in Anthropic's shape instead, `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("api")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}


class APIError(Exception):
    """An error to send to the client as the envelope, with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers

    def body(self) -> dict:
        """The envelope."""
        return envelope(self.message, self.type, self.param, self.code)


class _ErrorResponse(JSONResponse):
    """JSON with everything past ASCII escaped, so that a message quoting the client's text renders even when that
    text is not valid Unicode (a lone surrogate)."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
                    413: "request_too_large", 503: "overloaded_error", 529: "overloaded_error"}
OVERLOADED = 529
"""Anthropic's status for an API that is temporarily overloaded: what this server's only 429, a full waiting queue,
is on `/v1/messages` (there 429 would say the client's account exceeded a rate limit)."""


def is_anthropic(path: str) -> bool:
    """Whether `path` is one of the Anthropic Messages API's (its errors take Anthropic's shape)."""
    return "/v1/messages" in path


def status_for(path: str, status: int) -> int:
    """The HTTP status of an error on `path`: a full queue (429) is Anthropic's 529 overloaded on `/v1/messages`."""
    return OVERLOADED if status == 429 and is_anthropic(path) else status


def shaped(path: str, status: int, body: dict) -> dict:
    """An error envelope in the shape of the API that `path` belongs to."""
    if not is_anthropic(path):
        return body
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status_for(path, status), "api_error"),
                                       "message": body["error"]["message"]}}


def envelope(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """`{"error": {...}}` with all four fields present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 invalid_request_error."""
    return APIError(400, message, param, code)


def unsupported(param: str, detail: str = "") -> APIError:
    """A 400 for a parameter this server cannot honour (never ignored silently)."""
    return APIError(400, f"Unsupported parameter: '{param}' is not supported by this server{detail}.", param,
                    "unsupported_parameter")


def validation_error(errors: list[dict], body: object = None) -> APIError:
    """Turn pydantic's errors (FastAPI's RequestValidationError) into one 400 naming the first bad field, read
    against the request's `body` where given. Where that field is a union, pydantic reports each member it tried:
    the error that reached deepest into the body names what the client got wrong (a tool_choice object without its
    function, not "should be 'none', 'auto' or 'required'")."""
    if not errors:
        return bad_request("Invalid request body.")
    field = errors[0].get("loc", ())[:2]
    error = max((e for e in errors if e.get("loc", ())[:2] == field), key=lambda e: len(e.get("loc", ())))
    loc = [part for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "")
    if error.get("loc", ())[:1] != ("body",):
        body = None
    if kind == "lone_surrogate":
        param = ".".join(part for part in (_param_name(loc, body), error["ctx"]["where"]) if part)
        return bad_request(f"Invalid value for '{param}': {error['msg']}.", param)
    if kind == "json_invalid":
        return bad_request("The request body is not valid JSON: "
                           f"{error.get('ctx', {}).get('error', 'could not parse it')}.")
    if not loc:
        if kind == "missing":
            return bad_request("The request body is missing; send a JSON object.")
        if isinstance(error.get("input"), bytes):        # FastAPI parses JSON only for a JSON content type
            try:
                json.loads(error["input"])
            except ValueError:
                return bad_request("The request body is not valid JSON.")
            return bad_request("Send the JSON body with 'Content-Type: application/json'.")
        return bad_request("The request body must be a JSON object.")
    param = _param_name(loc, body, kind == "missing")
    if kind == "extra_forbidden":
        return unsupported(param)
    if kind == "unsupported":
        return APIError(400, f"Unsupported parameter: {error.get('msg')}.", param, "unsupported_parameter")
    if kind == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param)
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return bad_request(f"Invalid value for '{param}': {message}.", param)


def _param_name(loc: list, body: object = None, missing: bool = False) -> str:
    """('messages', 0, 'content') -> 'messages[0].content', without the names pydantic gives the members of a
    union it tried (a discriminator's value such as 'json_schema', a type such as 'str' or 'NamedToolChoice').
    Read against the request's `body`, a part is a field where the body has it on the way down, and the last part
    is one where the body has it (lacks it, when the field is `missing`); without the body, by the names' look."""
    path = _field_path(list(loc), body, missing) if isinstance(body, dict) else None
    if path is None:
        path = [part for part in loc if isinstance(part, int) or not _member_name(part)]
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else part
    return name


def _field_path(loc: list, node: object, missing: bool) -> list | None:
    """The parts of `loc` that are fields of `node` (the body, or a value in it), or None if none fits."""
    if not loc:
        return []
    part, rest = loc[0], loc[1:]
    if isinstance(node, dict) and isinstance(part, str):
        child = node.get(part, _ABSENT)
    elif isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
        child = node[part]
    else:
        child = _ABSENT
    if not rest:
        if missing:
            return [part] if isinstance(node, dict) and child is _ABSENT else None
        if child is not _ABSENT:
            return [part]
        return None if isinstance(node, dict) else []      # a member's name, on a value that is no such member
    if child is not _ABSENT:
        below = _field_path(rest, child, missing)
        if below is not None:
            return [part, *below]
    return None if isinstance(part, int) else _field_path(rest, node, missing)    # a member's name: skipped


_ABSENT = object()


def _member_name(part: str) -> bool:
    """Whether a part of a location looks like the name pydantic gives a union's member, not like a field."""
    return "[" in part or part.startswith("constrained-") or part in ("str", "int", "float", "bool", "list", "dict")


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that put every error in the envelope."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        path = request.url.path
        return _ErrorResponse(shaped(path, exc.status, exc.body()), status_code=status_for(path, exc.status),
                              headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_error(list(exc.errors()), exc.body)
        return _ErrorResponse(shaped(request.url.path, 400, error.body()), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = f"Not found: {request.method} {request.url.path}"
        body = envelope(message, _TYPES.get(exc.status_code, "server_error"))
        return JSONResponse(shaped(request.url.path, exc.status_code, body), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        body = envelope("The server had an error while processing your request.", "server_error")
        return JSONResponse(shaped(request.url.path, 500, body), status_code=500)
