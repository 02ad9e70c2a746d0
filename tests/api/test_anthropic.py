"""The Anthropic Messages API through the official `anthropic` SDK: messages, system prompts, stop sequences, usage
(against the template rendered by transformers), Anthropic's event stream, tools (tool_use / tool_result), its
error shape and x-api-key auth."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from api_helpers import TIMEOUT, anthropic_asgi_client

anthropic = pytest.importorskip("anthropic")

USER = [{"role": "user", "content": "Hello there"}]
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
           "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer", "minimum": 1,
                                                                               "maximum": 7}}}
TOOLS = [{"name": "get_weather", "description": "Weather.", "input_schema": WEATHER}]
GREEDY = {"temperature": 0}           # the SDK no longer has sampling parameters; the API still takes them


def _client(server, api_key: str | None = None):
    return anthropic.Anthropic(base_url=server.url, api_key=api_key or server.api_key, timeout=TIMEOUT,
                               max_retries=0)


@pytest.fixture(scope="module")
def claude(server):
    return _client(server)


def test_a_message_and_its_usage(server, claude, client, hf_tokenizer):
    r = claude.messages.create(model=server.model, max_tokens=12, system="Be brief.", messages=USER,
                               extra_body=GREEDY)
    assert (r.type, r.role, r.model) == ("message", "assistant", server.model) and r.id.startswith("msg_")
    assert r.stop_reason in ("end_turn", "max_tokens") and [b.type for b in r.content] == ["text"]
    rendered = hf_tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *USER],
                                                add_generation_prompt=True, tokenize=True, return_dict=False)
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens == len(rendered)
    same = client.chat.completions.create(model=server.model, max_tokens=12, temperature=0,
                                          messages=[{"role": "system", "content": "Be brief."}, *USER])
    assert r.content[0].text == same.choices[0].message.content
    assert r.usage.output_tokens == same.usage.completion_tokens


def test_stop_sequences(server, claude):
    text = claude.messages.create(model=server.model, max_tokens=12, messages=USER, extra_body=GREEDY).content[0].text
    stop = text[4:6]
    r = claude.messages.create(model=server.model, max_tokens=12, messages=USER, extra_body=GREEDY,
                               stop_sequences=[stop])
    assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", stop)
    assert r.content[0].text == text[:text.index(stop)]


def test_the_event_stream(server, claude):
    whole = claude.messages.create(model=server.model, max_tokens=10, messages=USER, extra_body=GREEDY)
    events = list(claude.messages.create(model=server.model, max_tokens=10, messages=USER, extra_body=GREEDY,
                                         stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[-3] == "content_block_stop" and set(kinds[2:-3]) == {"content_block_delta"}
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == whole.content[0].text
    assert events[-2].delta.stop_reason == whole.stop_reason and events[-2].usage.output_tokens == \
        whole.usage.output_tokens
    with claude.messages.stream(model=server.model, max_tokens=10, messages=USER, extra_body=GREEDY) as stream:
        assert "".join(stream.text_stream) == whole.content[0].text
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text and final.usage.output_tokens == whole.usage.output_tokens


def test_a_forced_tool_is_a_valid_tool_use_and_its_result_renders(server, claude):
    common = dict(model=server.model, max_tokens=120, messages=USER, tools=TOOLS, extra_body=GREEDY,
                  tool_choice={"type": "tool", "name": "get_weather"})
    r = claude.messages.create(**common)
    (call,) = [b for b in r.content if b.type == "tool_use"]
    assert r.stop_reason == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER)
    with claude.messages.stream(**common) as stream:
        final = stream.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert (streamed.name, streamed.input, final.stop_reason) == (call.name, call.input, "tool_use")
    follow = claude.messages.create(model=server.model, max_tokens=4, tools=TOOLS, tool_choice={"type": "none"},
                                    messages=[*USER, {"role": "assistant", "content": [call.model_dump()]},
                                              {"role": "user", "content": [{"type": "tool_result",
                                                                            "tool_use_id": call.id,
                                                                            "content": "Sunny"}]}])
    assert follow.stop_reason in ("end_turn", "max_tokens")
    required = claude.messages.create(**{**common, "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    assert required.stop_reason == "tool_use" and any(b.type == "tool_use" for b in required.content)


def test_errors_in_anthropics_shape(server, claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=server.model, max_tokens=4,
                               messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}])
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="not-this-one", max_tokens=4, messages=USER)
    assert caught.value.body["error"]["type"] == "not_found_error"
    r = server.post("/v1/messages", {"model": server.model, "messages": USER})          # max_tokens is required
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):
        claude.messages.create(model=server.model, max_tokens=4, messages=USER, tools=TOOLS)   # auto needs a parser


def test_x_api_key_auth(small_server):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        _client(small_server, "wrong").messages.create(model=small_server.model, max_tokens=4, messages=USER)
    assert caught.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError, match="chat template"):     # past the key: this model has none
        _client(small_server).messages.create(model=small_server.model, max_tokens=4, messages=USER)
    big = small_server.post("/v1/messages", {"model": small_server.model, "max_tokens": 4,
                                             "messages": [{"role": "user", "content": "x" * 70000}]},
                            headers={"x-api-key": small_server.api_key})
    assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"


def test_thinking_is_a_thinking_block():
    from types import SimpleNamespace

    from api import messages
    from engine.outputs import CompletionOutput, RequestOutput

    settings = SimpleNamespace(reasoning_parser="qwen3", tool_call_parser=None)
    job = SimpleNamespace(model="m", prompt_tokens=5, cached_tokens=lambda: 0)
    view = messages._View(SimpleNamespace(settings=settings), job, None, True)
    final = RequestOutput("r", None, [1] * 5, [CompletionOutput(0, "<think>hmm</think>\n\nHi", [7, 8, 9], None,
                                                                None, "stop")], True)
    message = anthropic.types.Message.model_validate(view.message(final))        # the SDK's own type
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
        ("thinking", "hmm"), ("text", "Hi")]
    assert (message.stop_reason, message.usage.output_tokens, message.usage.input_tokens) == ("end_turn", 3, 5)


def test_a_last_assistant_message_is_continued(server, claude, client):
    prefill = [*USER, {"role": "assistant", "content": "Well, I"}]
    r = claude.messages.create(model=server.model, max_tokens=6, messages=prefill, extra_body=GREEDY)
    same = client.chat.completions.create(model=server.model, max_tokens=6, temperature=0, messages=prefill,
                                          extra_body={"continue_final_message": True, "add_generation_prompt": False})
    assert r.content[0].text == same.choices[0].message.content
    plain = claude.messages.create(model=server.model, max_tokens=6, messages=USER, extra_body=GREEDY)
    for empty in ("", []):          # an empty last assistant message continues nothing: the reply is a new turn
        r = claude.messages.create(model=server.model, max_tokens=6, extra_body=GREEDY,
                                   messages=[*USER, {"role": "assistant", "content": empty}])
        assert (r.content[0].text, r.usage.input_tokens) == (plain.content[0].text, plain.usage.input_tokens)


@pytest.mark.parametrize(("change", "named"), [
    ({"tool_choice": {"type": "any", "name": "get_weather"}}, "tool_choice.name"),      # only `tool` names one
    ({"tool_choice": {"type": "none", "disable_parallel_tool_use": True}}, "tool_choice.disable_parallel_tool_use"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"tools": [{"name": "s", "input_schema": {"type": "string"}}]}, "tools[0].input_schema"),
    ({"tools": TOOLS * 2}, "'get_weather' is given more than once"),                   # names must be distinct
    ({"tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"a": {"type": "x"}}}}]},
     "The parameters schema of tool 'get_weather' cannot be enforced"),
    ({"system": "\ud800"}, "system"),                                                  # a lone surrogate
    ({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "Hm."}]}]},
     "The conversation is empty"),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(server, change, named):
    body = {"model": server.model, "max_tokens": 4, "messages": USER, "tools": TOOLS,
            "tool_choice": {"type": "tool", "name": "get_weather"}, **change}
    r = httpx.post(f"{server.url}/v1/messages", content=json.dumps(body), headers={"content-type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["type"] == "invalid_request_error" and named in error["message"], r.text


def test_a_stop_sequence_inside_a_forced_call_is_the_stop_reason(server, claude):
    forced = dict(model=server.model, max_tokens=120, messages=USER, tools=TOOLS, extra_body=GREEDY,
                  tool_choice={"type": "tool", "name": "get_weather"})
    r = claude.messages.create(**forced, stop_sequences=["city"])
    assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", "city")
    assert claude.messages.create(**forced).stop_reason == "tool_use"


def test_a_wrong_method_is_an_invalid_request(server):
    r = httpx.get(f"{server.url}/v1/messages")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_blocks_come_back_in_the_order_they_were_generated_and_the_reply_can_be_sent_back():
    from types import SimpleNamespace

    from api import messages
    from engine.outputs import CompletionOutput, RequestOutput

    settings = SimpleNamespace(reasoning_parser="qwen3", tool_call_parser="hermes")
    job = SimpleNamespace(model="m", prompt_tokens=5, cached_tokens=lambda: 0)
    auto = messages._View(SimpleNamespace(settings=settings), job, "auto", True)
    text = '<think>hm</think>\n\nLet me check.<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>Done.'
    final = RequestOutput("r", None, [1] * 5, [CompletionOutput(0, text, [7] * 9, None, None, "stop")], True)
    message = anthropic.types.Message.model_validate(auto.message(final))
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "text"]
    assert (message.content[2].input, message.content[3].text, message.stop_reason) == ({"a": 1}, "Done.", "tool_use")
    # The reply as the SDK would send it back: thinking blocks are accepted (and not rendered).
    from api.messages_protocol import MessagesRequest

    MessagesRequest.model_validate({"model": "m", "max_tokens": 4, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [
            b.model_dump(exclude_none=True) for b in message.content]}]})


def test_count_tokens_is_the_prompt_of_the_same_request(server, claude):
    conversation = dict(model=server.model, messages=USER, system="Be brief.", tools=TOOLS)
    counted = claude.messages.count_tokens(**conversation)
    r = claude.messages.create(**conversation, max_tokens=2, tool_choice={"type": "none"}, extra_body=GREEDY)
    assert counted.input_tokens == r.usage.input_tokens + r.usage.cache_read_input_tokens > 0
    assert claude.messages.count_tokens(model=server.model, messages=USER).input_tokens < counted.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="not-this-one", messages=USER)
    with pytest.raises(anthropic.BadRequestError) as caught:                        # Anthropic's error shape
        claude.messages.count_tokens(model=server.model, messages=[])
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "invalid_request_error"


def test_a_reply_the_context_ends_says_so(server, claude):
    """A reply cut by the end of the context, before max_tokens, is model_context_window_exceeded (Anthropic's
    stop reason for it); the prompt is sized with count_tokens to leave 3 tokens."""
    context = httpx.get(f"{server.url}/v1/models").json()["data"][0]["max_model_len"]
    unit = claude.messages.count_tokens(model=server.model, messages=[{"role": "user", "content": "ab " * 100}])
    base = claude.messages.count_tokens(model=server.model, messages=[{"role": "user", "content": "a"}])
    per_unit = (unit.input_tokens - base.input_tokens) / 100
    text = "ab " * int((context - base.input_tokens - 3) / per_unit)

    def count(text: str) -> int:
        return claude.messages.count_tokens(model=server.model, messages=[{"role": "user", "content": text}]
                                            ).input_tokens

    text = next(t for t in (text + " a" * k for k in range(8)) if count(t) == context - 3)
    conversation = [{"role": "user", "content": text}]
    r = claude.messages.create(model=server.model, messages=conversation, max_tokens=50, extra_body=GREEDY)
    assert (r.stop_reason, r.usage.output_tokens) == ("model_context_window_exceeded", 3)
    short = claude.messages.create(model=server.model, messages=conversation, max_tokens=2, extra_body=GREEDY)
    assert (short.stop_reason, short.usage.output_tokens) == ("max_tokens", 2)


_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "days": 1}}
_RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny."}
_ASKED = [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": [_USE]}]


@pytest.mark.parametrize(("messages", "said"), [
    ([{"role": "user", "content": [_USE]}], "messages.0.content.0: `tool_use` blocks can only be in assistant"),
    ([*USER, {"role": "assistant", "content": [_RESULT]}],
     "messages.1.content.0: `tool_result` blocks can only be in user messages"),
    ([{"role": "user", "content": [_RESULT]}], "messages.0.content.0: unexpected `tool_use_id` found in "
                                               "`tool_result` blocks: toolu_1"),
    ([*_ASKED, {"role": "user", "content": [{**_RESULT, "tool_use_id": "toolu_2"}]}],
     "unexpected `tool_use_id` found in `tool_result` blocks: toolu_2"),
    ([*_ASKED, {"role": "user", "content": "And tomorrow?"}],
     "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
    ([*_ASKED, {"role": "user", "content": [{"type": "text", "text": "Here:"}, _RESULT]}],
     "messages.2.content.1: `tool_result` blocks must come first"),
    ([*USER, {"role": "assistant", "content": [_USE, _USE]}, {"role": "user", "content": [_RESULT]}],
     "messages.1.content.1: `tool_use` ids must be unique"),
])
def test_tool_blocks_out_of_place_are_refused_as_anthropic_does(server, claude, messages, said):
    for call in (claude.messages.create, claude.messages.count_tokens):
        extra = {"max_tokens": 4} if call == claude.messages.create else {}
        with pytest.raises(anthropic.BadRequestError) as caught:
            call(model=server.model, messages=messages, tools=TOOLS, tool_choice={"type": "none"}, **extra)
        assert said in caught.value.body["error"]["message"]
    answered = [*_ASKED, {"role": "user", "content": [_RESULT, {"type": "text", "text": "Thanks."}]}]
    r = claude.messages.create(model=server.model, max_tokens=4, messages=answered, tools=TOOLS,
                               tool_choice={"type": "none"})
    assert r.stop_reason in ("end_turn", "max_tokens")


def test_a_tool_results_text_blocks_are_lines():
    """As vLLM renders them: a tool_result's text blocks joined a line each."""
    from api.messages_protocol import ToolResultBlock

    result = ToolResultBlock(type="tool_result", tool_use_id="t", content=[{"type": "text", "text": "a"},
                                                                         {"type": "text", "text": "b"}])
    assert result.text() == "a\nb"


@pytest.mark.parametrize(("messages", "said"), [
    ([{"role": "user", "content": ""}], "messages.0: all messages must have non-empty content"),
    ([{"role": "user", "content": []}], "messages.0: all messages must have non-empty content"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "messages[0].content[0].text"),
    ([*USER, {"role": "assistant", "content": "Sure "}], "final assistant content cannot end with trailing whitespace"),
])
def test_empty_content_is_refused_as_anthropic_does(server, claude, messages, said):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=server.model, max_tokens=4, messages=messages)
    assert said in caught.value.body["error"]["message"]


def test_server_tool_types_are_refused_by_type(server, claude):
    with pytest.raises(anthropic.BadRequestError, match="tools of type 'web_search_20250305' are not supported"):
        claude.messages.create(model=server.model, max_tokens=4, messages=USER,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])


def test_request_ids_and_max_tokens_zero(server, claude, client):
    """Every response carries its request id where the official clients read it (Anthropic's `request-id`,
    OpenAI's `x-request-id`; a client's own X-Request-Id is kept); max_tokens 0 answers the prompt alone."""
    r = claude.messages.create(model=server.model, max_tokens=0, messages=USER)
    assert r._request_id.startswith("req_")
    assert (r.content, r.stop_reason, r.usage.output_tokens) == ([], "max_tokens", 0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="other", max_tokens=1, messages=USER)
    assert caught.value.request_id.startswith("req_")
    assert client.models.list()._request_id.startswith("req_")
    own = httpx.get(f"{server.url}/v1/models", headers={"X-Request-Id": "trace-7"})
    assert own.headers["x-request-id"] == "trace-7" and "request-id" not in own.headers


def test_output_config_format_is_json_that_matches_the_schema(server, claude):
    """Anthropic's structured outputs (`output_config.format`), through the SDK's `messages.parse`, which
    validates the reply into the model; a forced tool still answers with the call; effort is refused by name."""
    from typing import Literal

    import pydantic

    class Forecast(pydantic.BaseModel):        # the SDK drops what Anthropic's schemas lack (lengths, bounds)
        city: Literal["Paris", "Rome"]
        sunny: bool

    parsed = claude.messages.parse(model=server.model, max_tokens=200, messages=USER, output_format=Forecast)
    assert parsed.stop_reason == "end_turn" and isinstance(parsed.parsed_output, Forecast)
    forced = claude.messages.create(model=server.model, max_tokens=200, messages=USER, tools=TOOLS,
                                    tool_choice={"type": "tool", "name": "get_weather"},
                                    output_config={"format": {"type": "json_schema", "schema": WEATHER}})
    (call,) = [block for block in forced.content if block.type == "tool_use"]
    jsonschema.validate(call.input, WEATHER)
    with pytest.raises(anthropic.BadRequestError, match="output_config.effort"):
        claude.messages.create(model=server.model, max_tokens=4, messages=USER, output_config={"effort": "low"})
    with pytest.raises(anthropic.BadRequestError, match="output_config.format.schema"):
        claude.messages.create(model=server.model, max_tokens=4, messages=USER,
                               output_config={"format": {"type": "json_schema", "schema": {"type": "nope"}}})
    counted = claude.messages.count_tokens(model=server.model, messages=USER,
                                           output_config={"format": {"type": "json_schema", "schema": WEATHER}})
    assert counted.input_tokens == claude.messages.count_tokens(model=server.model, messages=USER).input_tokens


def test_thinking_adaptive_and_disabled_reach_the_template_and_a_budget_is_refused(llama_path, tmp_path):
    """`thinking: disabled` renders with enable_thinking false (Qwen3's templates then close the thinking before
    the reply), `adaptive` leaves the template's default; a budget_tokens needs `<think>` tokens, which this model
    lacks: a 400 that says so (tests/api/test_thinking_api.py has a model that has them)."""
    import asyncio
    import shutil

    from api import ServerSettings, create_app
    from engine import AsyncLLM

    path = tmp_path / "thinks"
    shutil.copytree(llama_path, path)
    template = path / "chat_template.jinja"
    closed = "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    template.write_text(template.read_text() + closed)

    async def main():
        llm = AsyncLLM(str(path))
        app = create_app(llm, ServerSettings("tiny"))
        try:
            async with anthropic_asgi_client(app) as claude:
                counts = [(await claude.messages.count_tokens(model="tiny", messages=USER, **extra)).input_tokens
                          for extra in ({}, {"thinking": {"type": "adaptive"}}, {"thinking": {"type": "disabled"}})]
                reply = await claude.messages.create(model="tiny", max_tokens=3, messages=USER,
                                                     thinking={"type": "disabled"})
                with pytest.raises(anthropic.BadRequestError, match="<think>") as refused:
                    await claude.messages.create(model="tiny", max_tokens=2000, messages=USER,
                                                 thinking={"type": "enabled", "budget_tokens": 1024})
                return counts, reply, refused.value
        finally:
            llm.shutdown()

    counts, reply, refused = asyncio.run(main())
    assert counts[0] == counts[1] < counts[2]           # the closed thinking's tokens are in the prompt
    assert reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0) == counts[2]
    assert "thinking_token_budget" in str(refused)


def test_a_calls_input_is_json_or_nothing():
    """A call's arguments become its tool_use input only where they are JSON: NaN, Infinity and numbers past
    float's range (which Python's parser takes) made a reply that could not be sent (a 500, seen in a soak run)."""
    from api import messages

    assert messages._object('{"a": 1.5, "b": [1e308, -2]}') == {"a": 1.5, "b": [1e308, -2]}
    for text in ('{"a": NaN}', '{"a": -Infinity}', '{"a": 1e999}', '{"a": [1, 2', '[1, 2]'):
        assert messages._object(text) == {}, text
    json.dumps(messages._object('{"a": 1e999}'), allow_nan=False)
