"""/openapi.json as the app answers: FastAPI's description of the routes, less the 422 it documents for every
route with a body (validation errors are sent as 400, see api/errors.py), with every error as the JSON envelope
(FastAPI documents a route's errors in the media type of its success, text/plain for /metrics), with the models
of streamed chunks, plus the 401 and the bearer scheme of the routes that take the API key (`needs_key`) when
the server requires one. A thinking budget (`thinking_token_budget`, Anthropic's enabled `thinking`) is described
only where the model has `<think>` and `</think>` tokens: elsewhere the server refuses it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from api.errors import is_anthropic
from api.messages_protocol import MessageStreamEvent
from api.middleware import needs_key
from api.openai_responses_protocol import ResponseStreamEvent
from api.responses import ERRORS, STREAMED

_UNUSED = ("HTTPValidationError", "ValidationError")
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_ANTHROPIC_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/AnthropicError"}}}


def document(app: FastAPI, api_key: bool, thinks: bool) -> None:
    """Make `app.openapi()` (what /openapi.json serves) describe what the app sends (`thinks`: the model has the
    tokens a thinking budget needs)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _tidy(generate(), api_key)
            if not thinks:
                _without_budgets(app.openapi_schema["components"]["schemas"])
        return app.openapi_schema

    app.openapi = openapi


def _tidy(schema: dict[str, Any], api_key: bool) -> dict[str, Any]:
    for path, item in schema["paths"].items():
        for operation in item.values():
            responses = operation["responses"]
            responses.pop("422", None)
            if api_key and needs_key(path):
                operation["security"] = [{"bearer": []}]
                responses["401"] = {"description": ERRORS[401]}
            for status, response in responses.items():
                if int(status) >= 400:
                    response["content"] = _ANTHROPIC_ERROR if is_anthropic(path) else _ERROR
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in _UNUSED:
        schemas.pop(name, None)
    _, streamed = models_json_schema([(model, "serialization") for model in (*STREAMED, MessageStreamEvent,
                                                                                    ResponseStreamEvent)],
                                     ref_template="#/components/schemas/{model}")
    for name, definition in streamed["$defs"].items():
        schemas.setdefault(name, definition)
    if api_key:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return schema


def _without_budgets(schemas: dict[str, Any]) -> None:
    """The request schemas without a thinking budget, for a model that cannot honour one."""
    for schema in schemas.values():
        properties = schema.get("properties", {})
        properties.pop("thinking_token_budget", None)
        for union in (kind for kind in properties.get("thinking", {}).get("anyOf", ()) if "oneOf" in kind):
            union["oneOf"] = [kind for kind in union["oneOf"] if not kind["$ref"].endswith("/ThinkingEnabled")]
            union["discriminator"]["mapping"].pop("enabled", None)
    schemas.pop("ThinkingEnabled", None)
