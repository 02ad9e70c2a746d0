"""Tool calling on chat: the request's tools and tool_choice, the constraint that enforces a required or named call,
and the tool calls read back from the generated text.

- `"required"` and a named function are enforced by a JSON-schema constraint built from the tools' parameter
  schemas, so the call is always valid: a named function's output is its arguments object; `required` outputs an
  array of `{"name", "parameters"}` calls (one at most unless parallel_tool_calls).
- `"auto"` lets the model choose, and a tool-call parser reads its calls: `hermes`, the
  `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks of Qwen2.5/Qwen3 and Hermes models. Where a tool
  is `strict` (OpenAI's flag), a structural tag lets the model write freely, but once it opens a call, the call
  must be one of the tools with arguments that match a strict tool's schema (as vLLM does).
- `api/tool_parser.py` reads the calls from the text, as it is generated when streaming.
- `"none"` is plain chat (the tools are still rendered, as vLLM does: the model knows them but does not call).
  Without tool_choice, tools mean `"auto"`, as OpenAI's default.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from pydantic import Field

from api.errors import bad_request
from api.strict import StrictModel
from api.structured import constraint_error
from api.tool_parser import CALL_CLOSE, CALL_OPEN, CallReader
from engine.structured_output import StructuredOutputsParams

PARSERS = ("hermes",)


class FunctionSpec(StrictModel):
    """A function the model may call: its name, what it does, and its parameters' JSON schema."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(StrictModel):
    """One tool (only functions exist)."""

    type: Literal["function"]
    function: FunctionSpec


class FunctionName(StrictModel):
    """A function, by name."""

    name: str


class NamedToolChoice(StrictModel):
    """tool_choice naming the function to call."""

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(StrictModel):
    """The function called and its arguments, a JSON string (and `parsed_arguments`, the openai SDK's parse
    helpers' copy of them as an object, accepted as they send it back; the arguments are what counts)."""

    name: str
    arguments: str
    parsed_arguments: Any = None


class ToolCall(StrictModel):
    """A call in an assistant message (sent back by the client with the conversation; `index`, a streamed
    delta's, as the SDK's stream helpers keep it)."""

    id: str
    type: Literal["function"]
    function: CalledFunction
    index: Annotated[int, Field(ge=0)] | None = None


def constraint(tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool | None,
               parser: str | None, form: StructuredOutputsParams | None = None,
               form_param: str = "response_format") -> StructuredOutputsParams | None:
    """The constraint of the reply under the tool choice and the request's output constraint `form`, None for
    none. `form_param` names where `form` came from: OpenAI's `response_format` (or the Responses API's
    `text.format`) is the format of a text answer; vLLM's `structured_outputs` is the grammar of the whole reply.

    Without a choice (or with none) the reply is `form`. A required or named call is all a reply can be: its
    grammar alone (a text format has no text to apply to; a whole-reply grammar conflicts with it: 400). Under
    auto: free text with calls whose arguments match the strict tools' schemas (None if no tool is strict); with a
    text format, either text in that format or one or more calls, as OpenAI answers; with a whole-reply grammar,
    that grammar (calls only as it writes them, as in vLLM). A 400 for tools that share a name, and for a choice
    that cannot be honoured: a function not among the tools, a choice without tools, auto without a tool-call
    parser."""
    names = [tool.function.name for tool in tools or []]
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise bad_request(f"Tool names must be distinct; {twice!r} is given more than once.", "tools")
    if choice in (None, "none"):
        return form
    if not tools:
        raise bad_request("tool_choice requires tools.", "tool_choice")
    schemas = {tool.function.name: tool.function.parameters or {"type": "object"} for tool in tools}
    _check_enforceable(tools, choice, schemas)
    if choice == "auto":
        if parser is None:
            raise bad_request("tool_choice 'auto' needs a tool-call parser: start the server with "
                              f"--tool-call-parser ({', '.join(PARSERS)}).", "tool_choice")
        arguments = {tool.function.name: schemas[tool.function.name] if tool.function.strict else {"type": "object"}
                     for tool in tools}
        if form is not None:
            return form if form_param == "structured_outputs" else \
                _text_or_calls(form, form_param, arguments, parallel is not False)
        if not any(tool.function.strict for tool in tools):
            return None
        return StructuredOutputsParams(structural_tag=json.dumps(hermes_calls(arguments)))
    if form is not None and form_param == "structured_outputs":
        raise bad_request("structured_outputs is the grammar of the whole reply, and so is a tool_choice that forces a "
                          "call (required or named): send one of them.", "structured_outputs")
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in schemas:
            raise bad_request(f"tool_choice names {choice.function.name!r}, which is not among the tools.",
                              "tool_choice")
        return StructuredOutputsParams(json=schemas[choice.function.name])
    call = [{"type": "object", "additionalProperties": False, "required": ["name", "parameters"],
             "properties": {"name": {"const": name}, "parameters": schema}} for name, schema in schemas.items()]
    array = {"type": "array", "minItems": 1, "items": {"anyOf": call}}
    if parallel is False:
        array["maxItems"] = 1
    return StructuredOutputsParams(json=array)


def _check_enforceable(tools: list[Tool], choice: ToolChoice, schemas: dict[str, dict]) -> None:
    """A 400 naming the tool whose parameters schema the choice would enforce (the named one; all, for required;
    the strict ones, for auto) and the grammar cannot take: not the engine's error about a constraint the client
    never sent."""
    if isinstance(choice, NamedToolChoice):
        enforced = [choice.function.name] if choice.function.name in schemas else []
    else:
        enforced = [t.function.name for t in tools if choice == "required" or t.function.strict]
    for name in enforced:
        error = constraint_error(StructuredOutputsParams(json=schemas[name]))
        if error is not None:
            raise bad_request(f"The parameters schema of tool {name!r} cannot be enforced: "
                              f"{error.split(': ', 2)[-1]}", "tools")


def _text_or_calls(form: StructuredOutputsParams, param: str, arguments: dict[str, dict],
                   parallel: bool) -> StructuredOutputsParams:
    """xgrammar's structural tag for a reply that is either text in `form` (a JSON schema, any JSON object or a
    grammar: what a response_format is) or hermes calls (one, unless `parallel`) whose arguments match
    `arguments`' schemas. Its "or" of the two needs xgrammar 0.1.34 or newer (setup.cfg's floor)."""
    kind, spec = form.key
    if kind == "json":
        text = _compact_json(json.loads(form.json) if isinstance(form.json, str) else form.json, param)
    elif kind == "json_object":
        text = _compact_json({"type": "object"}, param)
    else:
        text = {"type": "grammar", "grammar": spec}
    tags = [{"type": "tag", "begin": s["begin"], "content": _compact_json(s["schema"], "tools"), "end": s["end"]}
            for s in hermes_calls(arguments)["structures"]]
    calls = {"type": "tags_with_separator", "tags": tags, "separator": "\n", "at_least_one": True,
             "stop_after_first": not parallel}
    tag = StructuredOutputsParams(structural_tag=json.dumps(
        {"type": "structural_tag", "format": {"type": "or", "elements": [text, calls]}}))
    error = constraint_error(tag)
    if error is not None:
        raise bad_request(f"The {param} cannot be combined with the tools: {error.split(': ', 1)[-1]}", param)
    return tag


def _compact_json(schema: dict, param: str) -> dict:
    """A structural-tag element of JSON matching `schema`, the grammar the engine builds for a JSON constraint
    alone (`StructuredOutputsParams.parse`: its own property order, compact): a structural tag's own json_schema
    element would allow any run of whitespace, which a model can repeat until max_tokens."""
    try:
        return {"type": "grammar", "grammar": _json_grammar(json.dumps(schema))}
    except ValueError as exc:          # a schema the API's checks let through but the engine refuses
        raise bad_request(f"The {param} schema cannot be enforced: {exc}", param) from None


@functools.lru_cache(maxsize=256)
def _json_grammar(schema: str) -> str:
    """The EBNF of the engine's grammar for JSON matching `schema` (remembered: requests repeat their schemas)."""
    return str(StructuredOutputsParams(json=schema).parse())


def hermes_calls(schemas: dict[str, dict]) -> dict:
    """The structural tag (vLLM's form) of the hermes parser's calls: free text, in which `<tool_call>` opens a call
    of one of the functions, written as Qwen's template writes it, whose arguments match the function's schema."""
    structures = [{"begin": f'{CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": ', "schema": schema,
                   "end": f"}}\n{CALL_CLOSE}"} for name, schema in schemas.items()]
    return {"type": "structural_tag", "structures": structures, "triggers": [CALL_OPEN]}


def reader(choice: ToolChoice | None, parser: str | None, parallel: bool = True) -> CallReader:
    """A reader of one choice's calls under `choice` (a named function, required, or auto with `parser`); without
    `parallel`, only the first call counts (required's grammar already allows one; auto's text may hold more)."""
    if isinstance(choice, NamedToolChoice):
        return CallReader("named", choice.function.name)
    return CallReader("required" if choice == "required" else parser, max_calls=None if parallel else 1)


def template_arguments(text: str) -> dict | str:
    """A call's arguments as chat templates read them: the object where they are JSON (Hugging Face's templates
    read `tool_call.function.arguments` as one), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def for_template(calls: list[ToolCall]) -> list[dict]:
    """An assistant message's tool calls as chat templates expect them."""
    return [{"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": template_arguments(call.function.arguments)}}
            for call in calls]
