"""OpenAI's Responses API through the official client (`client.responses.create`): text input and message items,
instructions, max_output_tokens, the event stream, stored responses and previous_response_id, function tools
and text.format with a JSON schema (validated with jsonschema)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
           "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer", "minimum": 1,
                                                                               "maximum": 7}}}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather.", "parameters": WEATHER}]


def test_text_in_text_out(server, client, hf_tokenizer):
    r = client.responses.create(model=server.model, input="Hello there", instructions="Be brief.",
                                max_output_tokens=10, temperature=0)
    assert r.object == "response" and r.status in ("completed", "incomplete") and r.id.startswith("resp_")
    assert r.output[0].type == "message" and r.output_text == r.output[0].content[0].text
    rendered = hf_tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hello there"}],
                                                add_generation_prompt=True, tokenize=True, return_dict=False)
    assert r.usage.input_tokens == len(rendered) and r.usage.output_tokens <= 10
    same = client.chat.completions.create(model=server.model, max_tokens=10, temperature=0,
                                          messages=[{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Hello there"}])
    assert r.output_text == same.choices[0].message.content
    assert (r.status == "incomplete") == (same.choices[0].finish_reason == "length")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"


def test_the_event_stream_adds_up_to_the_response(server, client):
    common = dict(model=server.model, input=[{"role": "user", "content": "Hi"}], max_output_tokens=8, temperature=0)
    whole = client.responses.create(**common, store=False)
    events = list(client.responses.create(**common, stream=True, store=False))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] in ("response.completed",
                                                                                         "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert events[-1].response.output_text == whole.output_text
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens
    # The SDK's stream helper wants response.completed: a reply that ends by itself (a finite JSON schema).
    small = {"format": {"type": "json_schema", "name": "a", "schema": {
        "type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"], "additionalProperties": False}}}
    done = dict(common, max_output_tokens=40, text=small)
    with client.responses.stream(**done) as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == client.responses.create(**done).output_text
    assert json.loads(final.output_text) in ({"a": True}, {"a": False})


def test_logprobs_of_the_message(server, client):
    """include ["message.output_text.logprobs"] and top_logprobs: each token of the reply with its logprob and
    alternatives, as chat completions lists them for the same prompt (checked against transformers in
    test_chat.py); a stream's output_text.delta events carry them as they come, adding up to the response's.
    top_logprobs alone asks for them too."""
    common = dict(model=server.model, input="Hello there", max_output_tokens=6, temperature=0, store=False)
    include = ["message.output_text.logprobs"]
    r = client.responses.create(**common, include=include, top_logprobs=3)
    chat = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Hello there"}],
                                          max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    got, expected = r.output[0].content[0].logprobs, chat.choices[0].logprobs.content
    assert len(got) == r.usage.output_tokens and r.top_logprobs == 3
    assert [(t.token, t.bytes) for t in got] == [(t.token, t.bytes) for t in expected]
    assert [t.logprob for t in got] == pytest.approx([t.logprob for t in expected], abs=1e-4)
    assert [[a.token for a in t.top_logprobs] for t in got] == [[a.token for a in t.top_logprobs] for t in expected]
    assert all(len(t.top_logprobs) == 3 for t in got)
    events = list(client.responses.create(**common, include=include, top_logprobs=3, stream=True))
    streamed = [t for e in events if e.type == "response.output_text.delta" for t in e.logprobs]
    assert [t.token for t in streamed] == [t.token for t in got]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in got], abs=1e-4)
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response.output[0].content[0].logprobs
    assert [(t.token, t.logprob) for t in done.logprobs] == [(t.token, t.logprob) for t in final] == \
        [(t.token, t.logprob) for t in streamed]
    # A reply that ends by itself: its EOS has a logprob and no text, and comes in an empty delta.
    small = {"format": {"type": "json_schema", "name": "a", "schema": {
        "type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"], "additionalProperties": False}}}
    ended = dict(common, max_output_tokens=40, text=small, include=include)
    events = list(client.responses.create(**ended, stream=True))
    streamed = [t.token for e in events if e.type == "response.output_text.delta" for t in e.logprobs]
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response
    assert final.status == "completed" and len(streamed) == final.usage.output_tokens
    assert streamed == [t.token for t in done.logprobs] == [t.token for t in final.output[0].content[0].logprobs]
    # A response's output, logprobs and all, goes back as input.
    sent_back = [*r.model_dump()["output"], {"role": "user", "content": "More"}]
    again = client.responses.create(**dict(common, input=sent_back))
    assert again.status in ("completed", "incomplete")
    assert not client.responses.create(**common).output[0].content[0].logprobs
    bare = client.responses.create(**common, include=include).output[0].content[0].logprobs
    assert [t.token for t in bare] == [t.token for t in got] and all(t.top_logprobs == [] for t in bare)
    alone = client.responses.create(**common, top_logprobs=2).output[0].content[0].logprobs
    assert [t.token for t in alone] == [t.token for t in got] and all(len(t.top_logprobs) == 2 for t in alone)


def test_previous_response_id_continues_a_stored_conversation(server, client):
    first = client.responses.create(model=server.model, input="My name is Ada.", max_output_tokens=4)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(model=server.model, input="What is my name?", max_output_tokens=4,
                                     previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # The continued prompt holds the first turn, its reply and the new turn: more tokens than the new turn alone.
    alone = client.responses.create(model=server.model, input="What is my name?", max_output_tokens=4)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    unstored = client.responses.create(model=server.model, input="x", max_output_tokens=1, store=False)
    with pytest.raises(openai.BadRequestError, match="previous_response_id|not found"):
        client.responses.create(model=server.model, input="y", max_output_tokens=1,
                                previous_response_id=unstored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_function_tools_and_their_outputs(server, client):
    common = dict(model=server.model, input="Weather in Oslo?", tools=TOOLS, max_output_tokens=120, temperature=0,
                  tool_choice={"type": "function", "name": "get_weather"})
    r = client.responses.create(**common)
    (call,) = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    events = list(client.responses.create(**common, stream=True))
    streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert streamed == call.arguments and len([e for e in events if e.type.endswith("arguments.delta")]) > 1
    follow = client.responses.create(model=server.model, max_output_tokens=4, tools=TOOLS, tool_choice="none",
                                     input=[{"role": "user", "content": "Weather in Oslo?"}, call,
                                            {"type": "function_call_output", "call_id": call.call_id,
                                             "output": "Sunny"}])
    assert follow.output[0].type == "message"


def test_text_format_json_schema(server, client):
    r = client.responses.create(model=server.model, input="A city", max_output_tokens=60, temperature=0,
                                text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER}})
    jsonschema.validate(json.loads(r.output_text), WEATHER)


def test_what_cannot_be_honoured_is_a_400(server, client):
    for extra in ({"reasoning": {"effort": "high"}}, {"include": ["reasoning.encrypted_content"]},
                  {"background": True}, {"top_logprobs": 21}):
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model=server.model, input="x", max_output_tokens=1, **extra)
    with pytest.raises(openai.BadRequestError, match="only 'message.output_text.logprobs' can be included"):
        client.responses.create(model=server.model, input="x", max_output_tokens=1,
                                include=["message.output_text.logprobs", "reasoning.encrypted_content"])
    with pytest.raises(openai.BadRequestError, match="not supported"):
        client.responses.create(model=server.model, max_output_tokens=1,
                                input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}])
    # An item's error is about the item's own kind (it named a message's `type` before)
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "parsed_arguments": {}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=server.model, max_output_tokens=1, input=[
            {"role": "user", "content": "x"}, call, {"type": "function_call_output", "call_id": "c1", "output": "1"}])
    assert caught.value.body["param"] == "input[1].parsed_arguments"
    assert caught.value.body["message"] == "Unsupported parameter: 'input[1].parsed_arguments' is not supported by " \
                                           "this server."


def test_the_store_is_bounded_by_count_and_bytes():
    from api.response_store import ResponseStore, Stored

    store = ResponseStore(capacity=3, max_bytes=10_000)
    for i in range(5):
        store.put(f"r{i}", Stored({"i": i}, [{"role": "user", "content": "x"}]))
    assert [store.get(f"r{i}") is not None for i in range(5)] == [False, False, True, True, True]
    store.put("big", Stored({"text": "y" * 9_000}, []))
    assert store.get("big") is not None and store.get("r2") is None and store.get("r4") is not None   # count
    store.put("huge", Stored({"text": "z" * 20_000}, []))
    assert store.get("huge") is None and store.get("big") is None           # nothing larger than the bound


def test_tool_choice_without_tools_is_a_400(server, client):
    with pytest.raises(openai.BadRequestError, match="tool_choice requires tools"):
        client.responses.create(model=server.model, input="x", max_output_tokens=1, tool_choice="required")


def _strict(body: dict) -> None:
    """`body` is a Response as the SDK types it, every field required there present (not only what it parses)."""
    from openai.types.responses import Response

    Response.model_validate(body, strict=False)
    usage = body["usage"]
    assert set(usage["input_tokens_details"]) >= {"cached_tokens", "cache_write_tokens"}, usage


def test_responses_carry_every_field_the_sdk_requires_and_echo_what_was_set(server):
    body = {"model": server.model, "input": "Hi", "max_output_tokens": 2, "service_tier": "auto",
            "prompt_cache_key": "k", "safety_identifier": "u-1", "background": False, "reasoning": {}}
    r = server.post("/v1/responses", body).json()
    _strict(r)
    assert (r["service_tier"], r["prompt_cache_key"], r["safety_identifier"], r["background"]) == (
        "default", "k", "u-1", False)
    assert r["status"] == "incomplete" and r["output"][0]["status"] == "incomplete"     # cut by max_output_tokens


def test_a_cut_call_is_incomplete_and_a_chain_renders_as_its_items(server, client):
    forced = dict(model=server.model, input="Weather in Oslo?", tools=TOOLS,
                  tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
    cut = client.responses.create(**forced, max_output_tokens=3)
    assert cut.status == "incomplete" and [i.status for i in cut.output] == ["incomplete"]
    first = client.responses.create(**forced, max_output_tokens=120)
    (call,) = first.output
    assert call.status == "completed"
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}
    chained = client.responses.create(model=server.model, tools=TOOLS, tool_choice="none", max_output_tokens=1,
                                      previous_response_id=first.id, input=[output])
    explicit = client.responses.create(model=server.model, tools=TOOLS, tool_choice="none", max_output_tokens=1,
                                       input=[{"role": "user", "content": "Weather in Oslo?"}, call, output])
    assert chained.usage.input_tokens == explicit.usage.input_tokens
    with pytest.raises(openai.BadRequestError, match="call_id"):
        client.responses.create(model=server.model, max_output_tokens=1,
                                input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}])
    with pytest.raises(openai.BadRequestError, match="name"):
        client.responses.create(model=server.model, input="x", max_output_tokens=1,
                                text={"format": {"type": "json_schema", "schema": WEATHER}})


def test_truncation_auto_drops_the_first_items_until_the_input_fits(server, client):
    """truncation "auto" (OpenAI's): the conversation's first items are dropped, as few as can be, until the input
    fits the context (1024 tokens here); a function_call_output is never kept without its call. The kept input is
    the longest suffix that fits with truncation disabled."""
    long = " ".join(f"word{i}" for i in range(120))
    call = {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Rome"}'}
    items = [{"role": "user", "content": "A " + long}, call,
             {"type": "function_call_output", "call_id": "c1", "output": "B " + long},
             {"role": "user", "content": "C " + long}, {"role": "assistant", "content": "D " + long},
             {"role": "user", "content": "E " + long}]
    common = dict(model=server.model, instructions="Be brief.", max_output_tokens=1, tools=TOOLS,
                  tool_choice="none")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.responses.create(input=items, **common)
    auto = client.responses.create(input=items, truncation="auto", **common)
    assert auto.truncation == "auto" and auto.status in ("completed", "incomplete")
    fits = []
    for start in range(len(items)):
        if items[start].get("role") != "user":           # kept input starts at a user message
            continue
        try:
            fits.append(client.responses.create(input=items[start:], **common).usage.input_tokens)
            break
        except openai.BadRequestError:
            continue
    assert fits and auto.usage.input_tokens == fits[0] < 1024


def test_truncation_keeps_room_for_the_reply_starts_at_a_user_turn_and_renders_little():
    """The kept messages leave max_output_tokens of room, start at a user message (templates that alternate roles
    refuse anything else), and a conversation that fits is rendered once."""
    from api.openai_responses import _fitted
    from engine.tokenizer import PromptTooLongError

    class Counting:                       # one token per character; refuses a first turn that is not the user's
        renders = 0

        def encode_chat(self, messages, add_generation_prompt, limit, *args, **kwargs):
            Counting.renders += 1
            if next(m for m in messages if m["role"] != "system")["role"] != "user":
                raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
            size = sum(len(m["content"]) for m in messages)
            if limit is not None and size > limit:
                raise PromptTooLongError(size, limit, True)
            return [1] * size

    turns = [{"role": role, "content": "x" * 30} for role in ("user", "assistant") * 6]
    system = [{"role": "system", "content": "s"}]
    prompt, kept = _fitted(Counting(), system, turns, [], 400, 1)
    assert (len(prompt.token_ids), kept, Counting.renders) == (361, turns, 1)
    prompt, kept = _fitted(Counting(), system, turns, [], 400, 250)
    assert kept == turns[8:] and len(prompt.token_ids) + 250 <= 400 < len(prompt.token_ids) + 60 + 250
    prompt, kept = _fitted(Counting(), system, turns, [], 100, 500)      # no room anywhere: the last user turn
    assert kept == turns[10:] and len(prompt.token_ids) == 61
    prompt, kept = _fitted(Counting(), system, turns[:4], [], 400, 500)  # fits, but no room: nothing dropped
    assert kept == turns[:4] and len(prompt.token_ids) == 121
