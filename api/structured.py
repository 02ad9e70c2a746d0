"""Structured outputs in a request body: OpenAI's `response_format` (text, json_object, json_schema), Fireworks'
grammar format, and vLLM's `structured_outputs` object, turned into the engine's StructuredOutputsParams.

The constraint's own validity (a schema xgrammar can take, a regex, a grammar) is checked here, so that its 400
names the request's own field (the engine would name structured_outputs); `constraint_error` keeps the verdicts
of recent constraints, so that a request repeating one (the same tools or schema every time) is not parsed again
on the event loop before the engine's own parse.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from api.errors import bad_request
from api.strict import StrictModel
from engine.structured_output import StructuredOutputsParams


class TextFormat(StrictModel):
    """Plain text: no constraint. (`json_schema: null` from clients that send unset fields as null.)"""

    type: Literal["text"]
    json_schema: None = None


class JsonObjectFormat(StrictModel):
    """Any JSON object."""

    type: Literal["json_object"]
    json_schema: None = None


class JsonSchemaSpec(StrictModel):
    """OpenAI's json_schema: a name, the schema, and strict (the output always matches it here)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: Annotated[dict, Field(alias="schema")] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class JsonSchemaFormat(StrictModel):
    """Output matching a JSON schema."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class GrammarFormat(StrictModel):
    """Fireworks' grammar mode: output matching a GBNF/EBNF grammar."""

    type: Literal["grammar"]
    grammar: Annotated[str, Field(min_length=1)]


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat | GrammarFormat,
                           Field(discriminator="type")]


class StructuredOutputs(StrictModel):
    """vLLM's `structured_outputs`: exactly one of json (a schema), regex, choice, grammar, json_object,
    structural_tag."""

    json_: Annotated[dict | str | None, Field(alias="json")] = None
    regex: Annotated[str, Field(min_length=1)] | None = None
    choice: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    grammar: Annotated[str, Field(min_length=1)] | None = None
    json_object: Literal[True] | None = None
    structural_tag: Annotated[str, Field(min_length=1)] | None = None

    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"minProperties": 1, "maxProperties": 1})


def constraint(response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | GrammarFormat | None,
               structured_outputs: StructuredOutputs | None) -> StructuredOutputsParams | None:
    """The engine's constraint of a request, or None; a 400 naming the field for a request that sets both or a
    `structured_outputs` that sets none (or several) of its kinds."""
    if response_format is not None and structured_outputs is not None:
        raise bad_request("Send response_format or structured_outputs, not both.", "structured_outputs")
    if structured_outputs is not None:
        so = structured_outputs
        try:
            params = StructuredOutputsParams(json=so.json_, regex=so.regex, choice=so.choice, grammar=so.grammar,
                                             json_object=bool(so.json_object), structural_tag=so.structural_tag)
        except ValueError as exc:
            raise bad_request(str(exc), "structured_outputs") from None
        return checked(params, "structured_outputs")
    if isinstance(response_format, JsonObjectFormat):
        return StructuredOutputsParams(json_object=True)
    if isinstance(response_format, JsonSchemaFormat):
        return checked(StructuredOutputsParams(json=response_format.json_schema.schema_),
                       "response_format.json_schema.schema")
    if isinstance(response_format, GrammarFormat):
        return checked(StructuredOutputsParams(grammar=response_format.grammar), "response_format.grammar")
    return None


def checked(params: StructuredOutputsParams, param: str) -> StructuredOutputsParams:
    """`params` if its constraint is a valid one, else a 400 naming the request's field `param`, in its message too
    (the engine's names structured_outputs, which a request with a response format did not send)."""
    error = constraint_error(params)
    if error is not None:
        if param != "structured_outputs":
            error = error.replace(f"structured_outputs.{params.key[0]}", param, 1)
        raise bad_request(error, param)
    return params


_VERDICTS: OrderedDict[tuple[str, str], str | None] = OrderedDict()
_VERDICTS_KEPT = 256


def constraint_error(params: StructuredOutputsParams) -> str | None:
    """Why the constraint is not a valid one (the engine's ValueError), or None; remembered for the last
    _VERDICTS_KEPT constraints (called on the event loop only)."""
    key = params.key
    if key not in _VERDICTS:
        try:
            params.parse()
            _VERDICTS[key] = None
        except ValueError as exc:
            _VERDICTS[key] = str(exc)
        while len(_VERDICTS) > _VERDICTS_KEPT:
            _VERDICTS.popitem(last=False)
    _VERDICTS.move_to_end(key)
    return _VERDICTS[key]
