"""A server with --reasoning-parser qwen3 and --tool-call-parser hermes: the thinking goes to reasoning_content
(and delta.reasoning_content when streamed), the rest to content, and usage counts the thinking's tokens; calls
the model makes with tool_choice auto are read from the rest, and stream as they are generated. The random model
is made to think and call with a structured-output regex; chat_template_kwargs reach the template."""

from __future__ import annotations

import json
import re

import openai
import pytest
from api_helpers import TIMEOUT, start_server, wait_ready

from api.reasoning import StreamSplit, split

FORMAT = {"regex": r"<think>[a-z]{2,6} [a-z]{2,6}</think>\n\n[a-z]{3,8}"}


@pytest.fixture(scope="module")
def thinker(main_checkpoint, tmp_path_factory):
    import openai

    log = tmp_path_factory.mktemp("reasoning") / "server.log"
    proc = start_server(["--model", main_checkpoint, "--reasoning-parser", "qwen3", "--tool-call-parser", "hermes"],
                        log)
    try:
        url = wait_ready(proc, log)
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def _model(client) -> str:
    return client.models.list().data[0].id


def test_reasoning_content_and_usage(thinker, hf_tokenizer):
    r = thinker.chat.completions.create(model=_model(thinker), messages=[{"role": "user", "content": "Hi"}],
                                        seed=1, max_tokens=60,
                                        extra_body={"structured_outputs": FORMAT, "return_token_ids": True})
    message = r.choices[0].message
    thinking, answer = message.model_extra["reasoning_content"], message.content
    assert re.fullmatch("[a-z]{2,6} [a-z]{2,6}", thinking) and re.fullmatch("[a-z]{3,8}", answer)
    ids = r.choices[0].model_extra["token_ids"]
    through_tag = next(i for i in range(1, len(ids) + 1) if "</think>" in hf_tokenizer.decode(ids[:i]))
    assert r.usage.completion_tokens_details.reasoning_tokens == through_tag < r.usage.completion_tokens


def test_streamed_reasoning_reassembles(thinker):
    common = dict(model=_model(thinker), messages=[{"role": "user", "content": "Hi"}], seed=2, max_tokens=60,
                  extra_body={"structured_outputs": FORMAT})
    whole = thinker.chat.completions.create(**common).choices[0].message
    thinking, content = "", ""
    for chunk in thinker.chat.completions.create(stream=True, **common):
        for choice in chunk.choices:
            thinking += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
    assert (thinking, content) == (whole.model_extra["reasoning_content"], whole.content)


def test_a_reply_that_does_not_think_is_all_content(thinker):
    r = thinker.chat.completions.create(model=_model(thinker), messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=20, extra_body={"structured_outputs": {"regex": "[a-z]{3,8}"},
                                                                   "chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.model_extra.get("reasoning_content") is None
    assert re.fullmatch("[a-z]{3,8}", r.choices[0].message.content)
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_the_split_holds_back_what_may_be_a_tag():
    assert split("<think>a b</think>\n\nhello") == ("a b", "hello")
    assert split("<think>cut short") == ("cut short", "")
    assert split("no thinking") == (None, "no thinking")
    assert split("a b</think>\n\nhello", opened=True) == ("a b", "hello")      # the prompt opened it
    assert split("<th", final=False, opened=True) == ("<th", "")
    stream, parts = StreamSplit(), []
    for delta in ["<th", "ink>ab", "c</th", "ink>", "\n\nans", "wer"]:
        parts.append(stream.add(delta, False))
    parts.append(stream.add("", True))
    assert "".join(p[0] for p in parts) == "abc" and "".join(p[1] for p in parts) == "answer"
    assert parts[0] == ("", "") and parts[2] == ("c", "")                 # "<th" and "</th" held back


def test_reserved_template_kwargs_are_400(server):
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": [{"role": "user", "content": "x"}],
                                             "chat_template_kwargs": {"tools": []}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"


def test_streamed_usage_counts_the_thinking(thinker):
    common = dict(model=_model(thinker), messages=[{"role": "user", "content": "Hi"}], seed=3, max_tokens=60,
                  extra_body={"structured_outputs": FORMAT})
    whole = thinker.chat.completions.create(**common).usage
    chunks = list(thinker.chat.completions.create(stream=True, stream_options={"include_usage": True}, **common))
    streamed = chunks[-1].usage
    assert streamed.completion_tokens_details.reasoning_tokens == whole.completion_tokens_details.reasoning_tokens > 0


CALLING = {"regex": r'<think>[a-z]{2,6}</think>\n\nOk[a-z]{0,3}\.\n<tool_call>\n\{"name": "add", "arguments": '
                    r'\{"a": [1-9]{1,3}, "b": [1-9]{1,3}\}\}\n</tool_call>'}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]


def test_auto_calls_after_the_thinking_stream_as_they_are_generated(thinker):
    common = dict(model=_model(thinker), messages=[{"role": "user", "content": "Add 1 and 2"}], seed=3,
                  max_tokens=200, tools=TOOLS, tool_choice="auto", extra_body={"structured_outputs": CALLING})
    whole = thinker.chat.completions.create(**common).choices[0]
    assert whole.finish_reason == "tool_calls" and re.fullmatch("Ok[a-z]{0,3}\\.", whole.message.content)
    assert re.fullmatch("[a-z]{2,6}", whole.message.model_extra["reasoning_content"])
    (call,) = whole.message.tool_calls
    assert call.function.name == "add" and re.fullmatch(r'\{"a": \d+, "b": \d+\}', call.function.arguments)
    thinking, content, parts, finish = "", "", [], None
    for chunk in thinker.chat.completions.create(stream=True, **common):
        for choice in chunk.choices:
            thinking += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
            parts += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert (thinking, content, finish) == (whole.message.model_extra["reasoning_content"], whole.message.content,
                                           "tool_calls")
    assert parts[0].id and parts[0].function.name == "add" and parts[0].function.arguments == ""
    assert len(parts) > 2                   # the arguments came in fragments, as they were generated
    assert "".join(p.function.arguments for p in parts) == call.function.arguments


def test_strict_tools_under_auto_with_an_output_format_answer_in_it_or_call(thinker):
    """A strict tool under auto with an output format (the OpenAI Agents SDK's default for an agent with tools and
    an output type): the reply is text in the format or calls (tests/api/test_tools.py checks the grammar), on
    chat and on the Responses API alike. vLLM's structured_outputs is the whole reply's grammar instead, which a
    forced call cannot be combined with."""
    strict = [{"type": "function", "function": {**TOOLS[0]["function"], "strict": True}}]
    common = dict(model=_model(thinker), messages=[{"role": "user", "content": "Add 1 and 2"}], seed=3,
                  max_tokens=200, tools=strict, tool_choice="auto")
    message = thinker.chat.completions.create(**common, response_format={"type": "json_object"}).choices[0].message
    assert message.tool_calls or isinstance(json.loads(message.content), dict)
    whole = thinker.chat.completions.create(**common, extra_body={"structured_outputs": {"regex": "(yes|no)"}})
    assert whole.choices[0].message.content in ("yes", "no")
    with pytest.raises(openai.BadRequestError, match="whole reply"):
        thinker.chat.completions.create(**{**common, "tool_choice": "required"},
                                        extra_body={"structured_outputs": {"regex": "(yes|no)"}})
    function = {"type": "function", **TOOLS[0]["function"], "strict": True}
    reply = thinker.responses.create(model=_model(thinker), input="Add 1 and 2", max_output_tokens=200,
                                     tool_choice="auto", tools=[function], text={"format": {"type": "json_object"}})
    assert reply.status == "completed"
    assert any(item.type == "function_call" for item in reply.output) or isinstance(json.loads(reply.output_text),
                                                                                      dict)
