"""Structured outputs through the official openai client: response_format (json_schema, json_object, Fireworks'
grammar) and vLLM's structured_outputs, on chat and completions, streamed too; every output checked with
jsonschema or re, oracles nobody here wrote. Invalid constraints are 400s."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}}}
MESSAGES = [{"role": "user", "content": "Who are you?"}]


def test_chat_json_schema_validates(server, client):
    response = client.chat.completions.create(
        model=server.model, messages=MESSAGES, n=3, seed=1, max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    for choice in response.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_streamed_json_schema_reassembles_to_valid_json(server, client):
    stream = client.chat.completions.create(
        model=server.model, messages=MESSAGES, seed=2, max_tokens=100, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    parts, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads("".join(parts)), PERSON)


def test_json_object_and_grammar_formats(server, client):
    response = client.chat.completions.create(model=server.model, messages=MESSAGES, seed=3, max_tokens=200,
                                              response_format={"type": "json_object"})
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(response.choices[0].message.content), dict)
    completion = client.completions.create(model=server.model, prompt="x", max_tokens=50, seed=4,
                                           extra_body={"response_format": {"type": "grammar",
                                                                           "grammar": 'root ::= "a" [0-9]+ "b"'}})
    assert re.fullmatch("a[0-9]+b", completion.choices[0].text)


@pytest.mark.parametrize(("structured", "check"), [
    ({"regex": r"\d{3}-[a-z]{2}"}, lambda t: re.fullmatch(r"\d{3}-[a-z]{2}", t)),
    ({"choice": ["red", "green", "dark blue"]}, lambda t: t in ("red", "green", "dark blue")),
    ({"json": PERSON}, lambda t: jsonschema.validate(json.loads(t), PERSON) is None),
])
def test_vllm_structured_outputs_on_completions_and_chat(server, client, structured, check):
    completion = client.completions.create(model=server.model, prompt=["a", "b"], max_tokens=60, seed=5,
                                           extra_body={"structured_outputs": structured})
    chat = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=60, seed=5,
                                          extra_body={"structured_outputs": structured})
    texts = [c.text for c in completion.choices] + [chat.choices[0].message.content]
    assert all(check(t) for t in texts), texts


def test_an_invalid_structural_tag_is_a_400_through_the_client(server, client):
    with pytest.raises(openai.BadRequestError, match="missing 'schema'"):
        client.completions.create(model=server.model, prompt="x", max_tokens=2, extra_body={"structured_outputs": {
            "structural_tag": '{"structures": [{"begin": "x"}], "triggers": ["x"]}'}})


@pytest.mark.parametrize(("body", "param"), [
    ({"structured_outputs": {"regex": "([a-z]"}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": '{"structures": [{"begin": "x"}], "triggers": ["x"]}'}},
     "structured_outputs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "grammar", "grammar": "root ::= ("}}, "response_format.grammar"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),                  # OpenAI's: 16 pairs at most
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"structured_outputs": {"choice": ["a"]}, "response_format": {"type": "json_object"}}, "structured_outputs"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"structured_outputs": {"choice": ["a"]}, "min_tokens": 2}, "min_tokens"),
])
def test_invalid_constraints_are_400(server, body, param):
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_the_client_raises_bad_request(server, client):
    with pytest.raises(openai.BadRequestError, match="structured_outputs.regex"):
        client.completions.create(model=server.model, prompt="x", extra_body={"structured_outputs": {"regex": "("}})
    with pytest.raises(openai.BadRequestError) as caught:          # OpenAI's limit on metadata: 16 pairs
        client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=1,
                                       metadata={f"k{i}": "v" for i in range(17)})
    assert caught.value.body["param"] == "metadata"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=1, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a+$",
                                                                        "maxLength": 3}}})
    assert caught.value.body["param"] == "response_format.json_schema.schema"


def test_constraint_verdicts_are_remembered_and_bounded(monkeypatch):
    """A constraint a request repeats is not parsed again on the event loop; the verdicts kept are bounded."""
    from api import structured
    from engine.structured_output import StructuredOutputsParams

    calls = []
    real = StructuredOutputsParams.parse
    monkeypatch.setattr(StructuredOutputsParams, "parse", lambda self: calls.append(self.key) or real(self))
    monkeypatch.setattr(structured, "_VERDICTS", type(structured._VERDICTS)())
    monkeypatch.setattr(structured, "_VERDICTS_KEPT", 2)
    bad = StructuredOutputsParams(regex="([a-z]")
    assert structured.constraint_error(bad).startswith("structured_outputs.regex: not a valid regex")
    assert structured.constraint_error(StructuredOutputsParams(regex="([a-z]")) == structured.constraint_error(bad)
    assert structured.constraint_error(StructuredOutputsParams(regex="a")) is None
    assert len(calls) == 2
    structured.constraint_error(StructuredOutputsParams(regex="b"))          # the oldest verdict goes
    assert list(structured._VERDICTS) == [("regex", "a"), ("regex", "b")]
