"""The tool-call reader: whatever way a reply's text is cut into streamed pieces, its deltas add up to what the
whole text reads as; calls start with their id and name, and their arguments are the generated JSON text."""

from __future__ import annotations

import json
import random

import pytest

from api.tool_parser import CallReader, merge, read_calls

HERMES = [
    # (text, content, [(name, arguments)])
    ('Let me check.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
     '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}</tool_call>',
     "Let me check.", [("add", '{"a": 1, "b": 2}'), ("get_weather", '{"city": "Oslo", "days": 2}')]),
    ("no calls, just text  \n", "no calls, just text  \n", []),
    ("no calls <tool_call>not json</tool_call>", "no calls <tool_call>not json</tool_call>", []),
    ('A <tool_call>{"oops": 1}</tool_call> B', 'A <tool_call>{"oops": 1}</tool_call> B', []),    # no name
    ('<tool_call>{"arguments": {"x": "}</tool_call>{"}, "name": "f"}</tool_call>\nDone.', "Done.",
     [("f", '{"x": "}</tool_call>{"}')]),                  # arguments first; markup inside a string
    ('<tool_call>{"name": "f"}</tool_call>', None, [("f", "{}")]),                     # no arguments
    ('<tool_call>{"name": "q\\"uote", "arguments": {"s": "a\\\\"}}</tool_call>', None,
     [('q"uote', '{"s": "a\\\\"}')]),
    ('<tool_call>{"name": "f", "arguments": {"a": [1, {"b": 2}]}', None, [("f", '{"a": [1, {"b": 2}]}')]),  # cut
    ('Text <tool_call>{"na', 'Text <tool_call>{"na', []),     # cut before a name: the block is content
    ("ends with a partial <tool_ca", "ends with a partial <tool_ca", []),
    ('A <tool_call>{"name": "f"}</tool_call> B\n', "A B", [("f", "{}")]),
    ('<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call> tail <tool_call>{"name": "g"}</tool_call>',
     "tail", [("f", '{"a": 1}'), ("g", "{}")]),          # an object not closed ends with its block
    ('\n<tool_call>{"name": "f"}</tool_call>\n\n<tool_call>{"name": "g"}</tool_call>\n', None,
     [("f", "{}"), ("g", "{}")]),
]


def _chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def _stream(mode: str, text: str, rng: random.Random, name: str | None = None) -> list[dict]:
    reader = CallReader(mode, name)
    pieces = _chunks(text, rng) + [""]             # the engine's last output may add no text
    return [d for i, piece in enumerate(pieces) for d in reader.feed(piece, final=i == len(pieces) - 1)]


@pytest.mark.parametrize(("text", "content", "calls"), HERMES)
def test_hermes_reads_the_calls_and_the_content(text, content, calls):
    got_content, got_calls = read_calls(text, "hermes")
    assert got_content == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in got_calls] == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in got_calls)


@pytest.mark.parametrize(("mode", "text", "name"), [
    *[("hermes", text, None) for text, _, _ in HERMES],
    ("required", '[{"name":"add","parameters":{"a":1,"b":2}},{"name":"get_weather","parameters":'
                 '{"city":"Pa{ri}s\\"","days":3}}]', None),
    ("required", '[{"name":"add","parameters":{"a":1,', None),                     # cut short
    ("named", '{"city":"Oslo","days":2}', "get_weather"),
])
def test_any_streaming_of_the_text_adds_up_to_the_whole_reading(mode, text, name):
    whole = read_calls(text, mode, name)
    for seed in range(40):
        deltas = _stream(mode, text, random.Random(seed), name)
        content, calls = merge(deltas)
        assert (content, [c["function"] for c in calls]) == (whole[0], [c["function"] for c in whole[1]]), seed
        starts = [part for d in deltas for part in d.get("tool_calls", []) if "id" in part]
        assert [s["index"] for s in starts] == list(range(len(calls)))
        assert all(s["function"]["arguments"] == "" for s in starts)
        assert all(set(d) in ({"content"}, {"tool_calls"}) and d[next(iter(d))] for d in deltas)


def test_required_calls_are_the_arrays_items():
    _, calls = read_calls('[{"name":"add","parameters":{"a":1,"b":2}},{"name":"f","parameters":{}}]', "required")
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("add", {"a": 1, "b": 2}), ("f", {})]


def test_a_call_streams_its_name_before_its_arguments_are_complete():
    reader = CallReader("hermes")
    assert reader.feed("Sure.\n<tool") == [{"content": "Sure."}]        # the possible opening is held back
    assert reader.feed('_call>\n{"name": "add", "argu') [0]["tool_calls"][0]["function"] == {"name": "add",
                                                                                             "arguments": ""}
    assert reader.feed('ments": {"a": 1') == [{"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1'}}]}]
    assert reader.feed(', "b": 2}}\n</tool_call>\n') == [
        {"tool_calls": [{"index": 0, "function": {"arguments": ', "b": 2}'}}]}]
    assert reader.feed("", final=True) == []


def test_without_parallel_calls_only_the_first_counts():
    text = ('<tool_call>{"name": "f", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "g", "arguments": {}}</tool_call>')
    assert [c["function"]["name"] for c in read_calls(text, "hermes")[1]] == ["f", "g"]
    content, calls = read_calls(text, "hermes", max_calls=1)
    assert content is None and [c["function"]["name"] for c in calls] == ["f"]
