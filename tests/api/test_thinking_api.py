"""A thinking budget through the official clients: `thinking_token_budget` on chat completions (vLLM's field, sent
by the openai SDK as an extra), `thinking: {"type": "enabled", "budget_tokens": N}` on /v1/messages (the anthropic
SDK). The engine's own tests (tests/test_thinking_budget.py) check where the `</think>` falls; these check that the
budget reaches it, and Anthropic's bounds."""

from __future__ import annotations

import asyncio
import shutil

import anthropic
import httpx
import openai
import pytest
from api_helpers import anthropic_asgi_client
from transformers import AutoTokenizer

from api import ServerSettings, create_app
from engine import AsyncLLM

USER = [{"role": "user", "content": "Hello there"}]


def _serve(path: str, settings: ServerSettings, calls):
    """Run `calls(app)` against a fresh server of `path`; what it returns."""
    async def main():
        llm = AsyncLLM(path)
        try:
            return await calls(create_app(llm, settings))
        finally:
            llm.shutdown()

    return asyncio.run(main())


def test_chat_completions_budget_with_the_reasoning_parser(checkpoint_factory):
    """A bias makes the model draw `<think>` each time: with a budget of 2 the reply thinks `<think><think>`, then
    `</think>` is drawn, and usage counts those 4 tokens as reasoning. A user's message that mentions `<think>`
    opens no thinking."""
    path = checkpoint_factory("qwen3", thinking=True)

    async def calls(app):
        start = app.state.server.llm.tokenizer.hf.get_vocab()["<think>"]
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http) as client:
            reply = await client.chat.completions.create(
                model="tiny", messages=USER, max_tokens=6, temperature=0, logit_bias={str(start): 100},
                extra_body={"thinking_token_budget": 2, "ignore_eos": True})
            mention = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "What is <think> for?"}], max_tokens=4,
                temperature=0, logit_bias={str(start): -100},
                extra_body={"thinking_token_budget": 0, "ignore_eos": True, "return_token_ids": True})
            with pytest.raises(openai.BadRequestError, match="thinking_token_budget"):
                await client.chat.completions.create(model="tiny", messages=USER, max_tokens=6,
                                                     extra_body={"thinking_token_budget": -1})
            # A grammar would cover the thinking too: refused, in the request's own terms.
            tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            for constrained in ({"response_format": {"type": "json_object"}},
                                {"tools": [tool], "tool_choice": "required"},
                                {"tools": [{**tool, "function": {**tool["function"], "strict": True}}]}):
                with pytest.raises(openai.BadRequestError, match="response_format, structured_outputs, or tools") \
                        as refused:
                    await client.chat.completions.create(model="tiny", messages=USER, max_tokens=6,
                                                         extra_body={"thinking_token_budget": 4}, **constrained)
                assert refused.value.body["param"] == "thinking_token_budget"
        return reply, mention

    settings = ServerSettings("tiny", reasoning_parser="qwen3", tool_call_parser="hermes")
    reply, mention = _serve(path, settings, calls)
    message = reply.choices[0].message
    assert message.model_extra["reasoning_content"] == "<think><think>"
    assert message.content == "<think><think>"
    assert reply.usage.completion_tokens_details.reasoning_tokens == 4
    # A `<think>` in the user's message opens nothing: no `</think>` forced, no reasoning.
    end = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("</think>")
    assert end not in mention.choices[0].model_extra["token_ids"]
    assert mention.choices[0].message.model_extra.get("reasoning_content") is None
    assert mention.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.fixture(scope="module")
def opens(checkpoint_factory, tmp_path_factory) -> str:
    """A thinking checkpoint whose template opens the thinking for the model (writes `<think>` after the
    assistant's header, as Qwen3.5's and the Thinking-2507 models' templates do)."""
    path = tmp_path_factory.mktemp("opens") / "model"
    shutil.copytree(checkpoint_factory("qwen3", thinking=True, max_position_embeddings=2048), path)
    template = path / "chat_template.jinja"
    template.write_text(template.read_text() + "{% if add_generation_prompt %}<think>\n{% endif %}")
    return str(path)


def test_a_reply_to_a_prompt_that_opens_the_thinking_thinks_from_its_first_token(opens):
    """The reasoning parser takes what comes before `</think>` as the thinking when the prompt opened it (the
    budget puts the `</think>` after 3 tokens): chat, streamed chat and usage agree, Anthropic's reply starts with
    a thinking block and the Responses API's with a reasoning item."""
    common = dict(model="tiny", messages=USER, max_tokens=8, temperature=0,
                  extra_body={"thinking_token_budget": 3, "ignore_eos": True, "return_token_ids": True})

    async def calls(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http) as client:
            whole = await client.chat.completions.create(**common)
            thinking, content = "", ""
            async for chunk in await client.chat.completions.create(stream=True, **common):
                for choice in chunk.choices:
                    thinking += (choice.delta.model_extra or {}).get("reasoning_content") or ""
                    content += choice.delta.content or ""
            response = await client.responses.create(model="tiny", input=USER, max_output_tokens=8, temperature=0)
        async with anthropic_asgi_client(app) as claude:
            message = await claude.messages.create(model="tiny", max_tokens=1100, messages=USER,
                                                   extra_body={"temperature": 0},
                                                   thinking={"type": "enabled", "budget_tokens": 1024})
        return whole, (thinking, content), response, message

    whole, streamed, response, message = _serve(opens, ServerSettings("tiny", reasoning_parser="qwen3"), calls)
    tokenizer = AutoTokenizer.from_pretrained(opens)
    ids = whole.choices[0].model_extra["token_ids"]
    assert ids[3] == tokenizer.convert_tokens_to_ids("</think>")
    reply = whole.choices[0].message
    assert reply.model_extra["reasoning_content"] == tokenizer.decode(ids[:3])
    assert reply.content == tokenizer.decode(ids[4:]).lstrip("\n")
    assert whole.usage.completion_tokens_details.reasoning_tokens == 4
    assert streamed == (reply.model_extra["reasoning_content"], reply.content)
    assert response.output[0].type == "reasoning"           # no budget on the Responses API: the reply thinks
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    assert message.content[0].type == "thinking" and message.content[1].type == "text"
    assert message.content[0].thinking.startswith(reply.model_extra["reasoning_content"])


def test_messages_budget_tokens_cuts_the_thinking(opens):
    """A template that opens the thinking for the model: with budget_tokens 1024 the reply's text has `</think>`
    where the same greedy reply without a budget goes on thinking; Anthropic's bounds are 400s."""

    async def calls(app):
        async with anthropic_asgi_client(app) as claude:
            replies = [await claude.messages.create(model="tiny", max_tokens=1100, messages=USER,
                                                    extra_body={"temperature": 0}, **extra)
                       for extra in ({"thinking": {"type": "enabled", "budget_tokens": 1024}},
                                     {"thinking": {"type": "adaptive"}})]
            refusals = []
            enabled = {"type": "enabled", "budget_tokens": 1024}
            tool = {"name": "add", "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}
            schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
                      "additionalProperties": False}
            for thinking, max_tokens, extra in (
                    (enabled, 1024, {}), ({"type": "enabled", "budget_tokens": 1023}, 2000, {}),
                    (enabled, 2000, {"tools": [tool], "tool_choice": {"type": "any"}}),
                    (enabled, 2000, {"extra_body": {"output_config": {"format": {"type": "json_schema",
                                                                                 "schema": schema}}}})):
                with pytest.raises(anthropic.BadRequestError) as refused:
                    await claude.messages.create(model="tiny", max_tokens=max_tokens, messages=USER,
                                                 thinking=thinking, **extra)
                refusals.append(str(refused.value))
            return replies, refusals

    (budgeted, free), refusals = _serve(opens, ServerSettings("tiny"), calls)
    text, free_text = budgeted.content[0].text, free.content[0].text
    thought = text.split("</think>")[0]
    assert "</think>" in text and len(thought) > 0
    assert free_text.startswith(thought) and not free_text[len(thought):].startswith("</think>")
    assert "max_tokens must be greater than thinking.budget_tokens" in refusals[0]
    assert "budget_tokens" in refusals[1]
    assert "Thinking may not be enabled when tool_choice forces tool use" in refusals[2]
    assert "output_config.format" in refusals[3]
