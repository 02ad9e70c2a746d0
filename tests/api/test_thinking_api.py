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
    `</think>` is drawn, and usage counts those 4 tokens as reasoning."""
    path = checkpoint_factory("qwen3", thinking=True)

    async def calls(app):
        start = app.state.server.llm.tokenizer.hf.get_vocab()["<think>"]
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http) as client:
            reply = await client.chat.completions.create(
                model="tiny", messages=USER, max_tokens=6, temperature=0, logit_bias={str(start): 100},
                extra_body={"thinking_token_budget": 2, "ignore_eos": True})
            with pytest.raises(openai.BadRequestError, match="thinking_token_budget"):
                await client.chat.completions.create(model="tiny", messages=USER, max_tokens=6,
                                                     extra_body={"thinking_token_budget": -1})
        return reply

    reply = _serve(path, ServerSettings("tiny", reasoning_parser="qwen3"), calls)
    message = reply.choices[0].message
    assert message.model_extra["reasoning_content"] == "<think><think>"
    assert message.content == "<think><think>"
    assert reply.usage.completion_tokens_details.reasoning_tokens == 4


def test_messages_budget_tokens_cuts_the_thinking(checkpoint_factory, tmp_path):
    """A template that opens the thinking for the model: with budget_tokens 1024 the reply's text has `</think>`
    where the same greedy reply without a budget goes on thinking; Anthropic's bounds are 400s."""
    path = tmp_path / "opens"
    shutil.copytree(checkpoint_factory("qwen3", thinking=True, max_position_embeddings=2048), path)
    template = path / "chat_template.jinja"
    template.write_text(template.read_text() + "{% if add_generation_prompt %}<think>\n{% endif %}")

    async def calls(app):
        async with anthropic_asgi_client(app) as claude:
            replies = [await claude.messages.create(model="tiny", max_tokens=1100, messages=USER,
                                                    extra_body={"temperature": 0}, **extra)
                       for extra in ({"thinking": {"type": "enabled", "budget_tokens": 1024}},
                                     {"thinking": {"type": "adaptive"}})]
            refusals = []
            for thinking, max_tokens in (({"type": "enabled", "budget_tokens": 1024}, 1024),
                                         ({"type": "enabled", "budget_tokens": 1023}, 2000)):
                with pytest.raises(anthropic.BadRequestError) as refused:
                    await claude.messages.create(model="tiny", max_tokens=max_tokens, messages=USER,
                                                 thinking=thinking)
                refusals.append(str(refused.value))
            return replies, refusals

    (budgeted, free), refusals = _serve(str(path), ServerSettings("tiny"), calls)
    text, free_text = budgeted.content[0].text, free.content[0].text
    thought = text.split("</think>")[0]
    assert "</think>" in text and len(thought) > 0
    assert free_text.startswith(thought) and not free_text[len(thought):].startswith("</think>")
    assert "max_tokens must be greater than thinking.budget_tokens" in refusals[0]
    assert "budget_tokens" in refusals[1]
