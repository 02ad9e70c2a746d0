"""Tool calling through the official openai client (and LangChain): required and named calls are enforced by a
grammar built from the tools' parameter schemas, so they always parse and validate (jsonschema); streamed calls
reassemble to the non-streamed ones; tool calls and tool results in the conversation render through the template."""

from __future__ import annotations

import json

import jsonschema
import pytest

from api.tools import Tool, constraint

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
           "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1,
                                                                                "maximum": 7}}}
ADD = {"type": "object", "additionalProperties": False, "required": ["a", "b"],
       "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def _valid(calls) -> None:
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_named_function_is_always_called_validly(server, client):
    r = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, seed=1, n=2,
                                       max_tokens=80, tool_choice={"type": "function",
                                                                   "function": {"name": "get_weather"}})
    for choice in r.choices:       # "stop", not "tool_calls": the model did not choose to call it (OpenAI, vLLM)
        assert choice.finish_reason == "stop" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
        _valid([call])
    chunks = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, seed=1, max_tokens=80,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            stream=True)
    assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["stop"]


def test_required_calls_are_valid_calls_of_the_tools(server, client):
    r = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                       seed=2, n=3, max_tokens=150, parallel_tool_calls=False)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        _valid(choice.message.tool_calls)


def test_parallel_calls_are_allowed_unless_switched_off():
    tools = [Tool.model_validate(t) for t in TOOLS]
    assert "maxItems" not in json.loads(constraint(tools, "required", None, None).key[1])
    assert json.loads(constraint(tools, "required", False, None).key[1])["maxItems"] == 1


def test_streamed_calls_reassemble_to_the_non_streamed_ones(server, client):
    common = dict(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="required", seed=3, max_tokens=150,
                  parallel_tool_calls=False)
    whole = client.chat.completions.create(**common).choices[0].message.tool_calls
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **common):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for part in choice.delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = part.id or call["id"]
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
    assert finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [(c.function.name, c.function.arguments)
                                                                     for c in whole]
    assert all(c["id"] for c in calls.values())


def test_a_conversation_with_calls_and_results_renders_through_the_template(server, client, hf_tokenizer):
    first = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, seed=4, max_tokens=80,
                                           tool_choice={"type": "function", "function": {"name": "add"}})
    call = first.choices[0].message.tool_calls[0]
    conversation = MESSAGES + [first.choices[0].message.model_dump(exclude_none=True),
                               {"role": "tool", "tool_call_id": call.id, "content": "42"}]
    r = client.chat.completions.create(model=server.model, messages=conversation, tools=TOOLS, max_tokens=2,
                                       tool_choice="none")
    rendered = [dict(m) for m in conversation]
    rendered[1]["tool_calls"] = [{"id": call.id, "type": "function",
                                  "function": {"name": "add", "arguments": json.loads(call.function.arguments)}}]
    text = hf_tokenizer.apply_chat_template(rendered, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>tool\n42" in text and '<tool_call>{"name": "add"' in text
    assert r.usage.prompt_tokens == len(hf_tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize(("extra", "message"), [
    ({"tools": TOOLS, "tool_choice": "auto"}, "needs a tool-call parser"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
    ({"tool_choice": "required"}, "requires tools"),
])
def test_tool_choices_that_cannot_be_honoured_are_400(server, extra, message):
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES, **extra})
    assert r.status_code == 400 and message in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "tool_choice"


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_the_tool(server):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
    for tools, choice in (([bad], "required"), ([TOOLS[1], bad], {"type": "function", "function": {"name": "f"}})):
        r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES, "tools": tools,
                                                 "tool_choice": choice, "max_tokens": 2})
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == "tools", r.text
        assert error["message"].startswith("The parameters schema of tool 'f' cannot be enforced: Unsupported type")
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES, "tools": [TOOLS[1], bad],
                                             "tool_choice": {"type": "function", "function": {"name": "add"}},
                                             "max_tokens": 2})
    assert r.status_code == 200, r.text                   # only the named tool's schema is enforced


def test_tool_choice_none_is_plain_chat(server, client):
    r = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                       max_tokens=5)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")


def test_langchain_bind_tools_with_a_forced_tool(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(model=server.model, base_url=f"{server.url}/v1", api_key=server.api_key,
                                       max_tokens=80, seed=5, max_retries=0)
    message = chat.bind_tools(TOOLS, tool_choice="get_weather").invoke("Weather in Rome?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER)


def test_a_streamed_named_call_sends_its_name_then_argument_fragments(server, client):
    common = dict(model=server.model, messages=MESSAGES, tools=TOOLS, seed=6, max_tokens=80,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = client.chat.completions.create(**common).choices[0].message.tool_calls[0]
    parts = [part for chunk in client.chat.completions.create(stream=True, **common) for choice in chunk.choices
             for part in choice.delta.tool_calls or []]
    assert parts[0].id and parts[0].function.name == "get_weather" and parts[0].function.arguments == ""
    assert len(parts) > 2 and all(p.id is None and p.function.name is None for p in parts[1:])   # fragments
    assert "".join(p.function.arguments for p in parts) == whole.function.arguments


def test_a_call_cut_short_says_length(server, client):
    r = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, seed=1, max_tokens=3,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].finish_reason == "length"


def test_the_client_raises_bad_request_for_auto_without_a_parser(server, client):
    import openai

    with pytest.raises(openai.BadRequestError, match="needs a tool-call parser"):
        client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS)     # auto by default


def _accepts(hf_tokenizer, constraint, text: str, ends: bool = True) -> bool:
    """Whether the grammar of `constraint` (compiled as the engine compiles it) takes `text`, ending there."""
    from engine.structured_output import GrammarCompiler, GrammarState

    eos = hf_tokenizer.eos_token_id
    compiled = GrammarCompiler(hf_tokenizer, len(hf_tokenizer), [eos], hf_tokenizer.all_special_ids).submit(
        constraint).result()
    state = GrammarState(compiled)
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if ends else [])
    return all(state.accept_token(token) for token in ids)


def test_strict_tools_under_auto_constrain_the_calls_the_model_opens(hf_tokenizer):
    """auto with a strict tool (OpenAI's `strict`, as vLLM honours it): the model may write anything, but a call it
    opens must name a tool and, for a strict one, give arguments that match its schema."""
    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}, TOOLS[1]]
    constraint = tools_constraint(strict, "auto")
    assert tools_constraint(TOOLS, "auto") is None                     # nothing strict: nothing enforced

    def call(name: str, arguments: str) -> str:
        return f'Sure.\n<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'

    assert _accepts(hf_tokenizer, constraint, "Just text, no call.")
    assert _accepts(hf_tokenizer, constraint, call("get_weather", '{"city": "Paris", "days": 3}'))
    assert _accepts(hf_tokenizer, constraint, call("add", '{"anything": "goes"}'))       # add is not strict
    assert not _accepts(hf_tokenizer, constraint, call("get_weather", '{"city": "Paris", "days": 9}'), False)
    assert not _accepts(hf_tokenizer, constraint, call("get_weather", '{"city": "Paris"}'), False)
    assert not _accepts(hf_tokenizer, constraint, call("no_such_tool", "{}"), False)


def tools_constraint(given: list[dict], choice: str, form=None, parallel: bool | None = None):
    return constraint([Tool.model_validate(t) for t in given], choice, parallel, "hermes", form)


def test_under_auto_with_an_output_format_a_reply_is_formatted_text_or_calls(hf_tokenizer):
    """auto with response_format (as OpenAI answers it, and agent frameworks send it with strict tools): the reply
    is text in the format, or one or more calls (their arguments valid for a strict tool), nothing else."""
    from engine.structured_output import StructuredOutputsParams

    answer = {"type": "object", "required": ["answer"], "additionalProperties": False,
              "properties": {"answer": {"type": "string", "maxLength": 8}}}
    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}, TOOLS[1]]
    call = '<tool_call>\n{{"name": "{}", "arguments": {}}}\n</tool_call>'.format
    weather, add = call("get_weather", '{"city": "Paris", "days": 3}'), call("add", '{"x": 1}')
    for given in (strict, TOOLS):                        # strict tools or not: the format holds either way
        both = tools_constraint(given, "auto", StructuredOutputsParams(json=answer))
        assert _accepts(hf_tokenizer, both, '{"answer": "yes"}')
        assert _accepts(hf_tokenizer, both, weather) and _accepts(hf_tokenizer, both, weather + "\n" + add)
        assert not _accepts(hf_tokenizer, both, "Just text, no call.", False)
        assert not _accepts(hf_tokenizer, both, '{"answer": "far too long"}', False)
        assert not _accepts(hf_tokenizer, both, '{"answer"\n  :\t"yes"}', False)      # as compact as JSON alone
        assert not _accepts(hf_tokenizer, both, weather.replace(": 3", ":     3"), False)
    strict_both = tools_constraint(strict, "auto", StructuredOutputsParams(json=answer))
    assert not _accepts(hf_tokenizer, strict_both, call("get_weather", '{"city": "Paris", "days": 9}'), False)
    single = tools_constraint(strict, "auto", StructuredOutputsParams(json_object=True), parallel=False)
    assert _accepts(hf_tokenizer, single, weather) and not _accepts(hf_tokenizer, single, weather + "\n" + add)
    grammar = tools_constraint(TOOLS, "auto", StructuredOutputsParams(grammar='root ::= "yes" | "no"'))
    assert _accepts(hf_tokenizer, grammar, "no") and not _accepts(hf_tokenizer, grammar, "maybe", False)
    assert _accepts(hf_tokenizer, grammar, weather)
    whole = StructuredOutputsParams(regex="(yes|no)")       # structured_outputs: the whole reply's grammar (vLLM)
    assert constraint([Tool.model_validate(t) for t in TOOLS], "auto", None, "hermes", whole,
                      "structured_outputs") == whole
    required = tools_constraint(TOOLS, "required", StructuredOutputsParams(json=answer))
    assert required == tools_constraint(TOOLS, "required")       # a forced call has no text to format


def test_a_forced_call_with_an_output_format_is_a_call(server, client):
    """required or named with response_format (OpenAI accepts it; a call is all the reply can be)."""
    for choice in ("required", {"type": "function", "function": {"name": "add"}}):
        r = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice=choice,
                                           seed=4, max_tokens=150, response_format={"type": "json_object"})
        assert r.choices[0].message.tool_calls and r.choices[0].message.content is None
        _valid(r.choices[0].message.tool_calls)


def test_the_sdks_parse_helpers_messages_can_be_sent_back(server, client):
    """The openai SDK's tool loop: a message from `chat.completions.parse` (its tool calls carry
    `parsed_arguments`, the message `parsed`) or from `chat.completions.stream` (calls with `index`) is appended
    to the conversation as it is (the SDK sends those fields: they were 400s)."""
    import openai
    import pydantic

    class Add(pydantic.BaseModel):
        a: int
        b: int

    forced = dict(model=server.model, tools=[openai.pydantic_function_tool(Add)], max_tokens=40, seed=3,
                  tool_choice={"type": "function", "function": {"name": "Add"}})
    parsed = client.chat.completions.parse(messages=MESSAGES, **forced).choices[0].message
    (call,) = parsed.tool_calls
    assert isinstance(call.function.parsed_arguments, Add)
    with client.chat.completions.stream(messages=MESSAGES, **forced) as stream:
        streamed = stream.get_final_completion().choices[0].message
    for message in (parsed, streamed):
        conversation = [*MESSAGES, message, {"role": "tool", "tool_call_id": message.tool_calls[0].id,
                                             "content": "5"}]
        reply = client.chat.completions.create(model=server.model, messages=conversation, max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")
