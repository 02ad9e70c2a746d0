"""Behaviour under load and faults: many concurrent clients, seeded sampling under load, preemption, and
clients that disconnect (their requests must be aborted and their KV blocks freed)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from api_helpers import TIMEOUT

PROMPT = "def add(a, b):"


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_fifty_concurrent_requests_complete_with_the_right_counts(server):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, int, str]:
        extra = {"ignore_eos": True}
        if i % 4 == 0:
            r = await client.completions.create(model=server.model, prompt=f"{i} {PROMPT}", max_tokens=i + 1,
                                                temperature=0.8, seed=i, extra_body=extra)
            return r.usage.completion_tokens, i + 1, r.choices[0].finish_reason
        if i % 4 == 1:
            r = await client.chat.completions.create(model=server.model, max_tokens=i + 1, temperature=0.8,
                                                     messages=[{"role": "user", "content": str(i)}], extra_body=extra)
            return r.usage.completion_tokens, i + 1, r.choices[0].finish_reason
        stream = await client.completions.create(model=server.model, prompt=[i % 50 + 10] * 5, max_tokens=i + 1,
                                                 n=2, stream=True, extra_body=extra)
        usage, finishes = None, []
        async for chunk in stream:
            finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
            usage = chunk.usage or usage
        return usage.completion_tokens, 2 * (i + 1), finishes == ["length", "length"] and "length"

    async def run() -> list:
        async with server.async_client(timeout=TIMEOUT) as client:
            return await asyncio.gather(*(one(client, i) for i in range(50)))

    results = asyncio.run(run())
    assert [(got, reason) for got, _, reason in results] == [(want, "length") for _, want, _ in results]


def test_seeded_output_is_the_same_alone_and_under_load(server):
    probe = {"model": server.model, "prompt": PROMPT, "max_tokens": 24, "temperature": 1.0, "seed": 1234, "n": 2,
             "ignore_eos": True, "top_p": 0.9, "top_k": 50}

    async def run(load: int) -> list[dict]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            async def post(body):
                return (await http.post(f"{server.url}/v1/completions", json=body)).json()

            noise = [{**probe, "seed": s, "prompt": f"noise {s}", "max_tokens": 8 + s % 16} for s in range(load)]
            results = await asyncio.gather(*(post(b) for b in [*noise[:load // 2], probe, *noise[load // 2:]]))
            return results[load // 2]["choices"]

    alone = asyncio.run(run(0))
    loaded = asyncio.run(run(100))
    assert [c["text"] for c in loaded] == [c["text"] for c in alone]
    assert alone[0]["text"] != alone[1]["text"]


def test_disconnected_streams_free_their_kv_blocks(server):
    assert _wait_for(lambda: server.metrics()["triton_serve_num_requests_running"] == 0)
    before = server.metrics()
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 900, "ignore_eos": True, "stream": True}

    async def read_a_little(http: httpx.AsyncClient, seen: list) -> None:
        async with http.stream("POST", f"{server.url}/v1/completions", json=body) as response:
            chunks = 0
            async for line in response.aiter_lines():
                chunks += line.startswith("data: ")
                if chunks == 5:
                    seen.append(server.metrics())
                    return                          # leaving the block closes the connection mid-stream

    async def run() -> list:
        seen: list = []
        async with httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(max_connections=20)) as http:
            await asyncio.gather(*(read_a_little(http, seen) for _ in range(10)))
        return seen

    during = asyncio.run(run())
    assert max(m["triton_serve_kv_cache_blocks_used"] for m in during) > before["triton_serve_kv_cache_blocks_used"]
    assert _wait_for(lambda: server.metrics()["triton_serve_kv_cache_blocks_used"] ==
                     before["triton_serve_kv_cache_blocks_used"])
    after = server.metrics()
    assert after["triton_serve_num_requests_running"] == 0 and after["triton_serve_num_requests_waiting"] == 0
    generated = after["triton_serve_generation_tokens_total"] - before["triton_serve_generation_tokens_total"]
    assert generated < 0.5 * 10 * 900                          # aborted long before they would have finished
    r = server.client().completions.create(model=server.model, prompt=PROMPT, max_tokens=3)
    assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason in ("stop", "length")


def test_a_disconnected_non_streamed_request_is_aborted(server):
    assert _wait_for(lambda: server.metrics()["triton_serve_num_requests_running"] == 0)
    before = server.metrics()
    body = {"model": server.model, "prompt": PROMPT, "n": 8, "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):         # the client gives up early
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.3)
    assert _wait_for(lambda: server.metrics()["triton_serve_num_requests_running"] == 0)
    after = server.metrics()
    assert after["triton_serve_kv_cache_blocks_used"] == before["triton_serve_kv_cache_blocks_used"]
    generated = after["triton_serve_generation_tokens_total"] - before["triton_serve_generation_tokens_total"]
    assert generated < 0.75 * 8 * 1000


def test_preempted_requests_finish_with_unloaded_output(small_server):
    client = small_server.client(timeout=TIMEOUT)
    prompts = [f"{i} the quick brown fox" for i in range(8)]
    common = dict(model=small_server.model, max_tokens=90, temperature=0, extra_body={"ignore_eos": True})
    alone = [client.completions.create(prompt=p, **common).choices[0].text for p in prompts]
    before = small_server.metrics()["triton_serve_num_preemptions_total"]

    async def run() -> list[str]:
        async with small_server.async_client(timeout=TIMEOUT) as aclient:
            results = await asyncio.gather(*(aclient.completions.create(prompt=p, **common) for p in prompts))
        return [r.choices[0].text for r in results]

    loaded = asyncio.run(run())      # 8 requests, 4 run at once; 4 x 100 tokens do not fit in 20 blocks of 16
    assert loaded == alone
    assert small_server.metrics()["triton_serve_num_preemptions_total"] > before


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_prompts_of_megabytes_are_refused_without_growing_the_server(server):
    """Eight concurrent 5 MB prompts (about a million tokens each, a 1024-token context) are refused with the
    context-length 400 and raise the server's RSS by less than 200 MB: the tokenizer counts a bounded prefix
    (the whole text took 13 s and left the server 1.5 GB larger)."""
    text = ("value = compute(x) + 1\n" * 220_000)[:5_000_000]
    before = _rss_mb(server.proc.pid)

    async def one(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(f"{server.url}/v1/completions", json={"model": server.model, "prompt": text})

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            return await asyncio.gather(*(one(http) for _ in range(8)))

    replies = asyncio.run(main())
    grown = _rss_mb(server.proc.pid) - before
    for reply in replies:
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert error["code"] == "context_length_exceeded" and "has at least" in error["message"]
    assert grown < 200, f"RSS grew by {grown:.0f} MB"


LONG = {"type": "object", "properties": {"s": {"type": "string", "minLength": 900}}, "required": ["s"],
        "additionalProperties": False}       # no end of text before some 900 characters


@pytest.mark.parametrize("path, body", [
    ("/v1/messages", {"max_tokens": 1000, "stream": True, "messages": [{"role": "user", "content": PROMPT}],
                      "tools": [{"name": "f", "input_schema": LONG}], "tool_choice": {"type": "tool", "name": "f"}}),
    ("/v1/responses", {"max_output_tokens": 1000, "stream": True, "input": PROMPT,
                       "text": {"format": {"type": "json_schema", "name": "long", "schema": LONG}}}),
])
def test_disconnected_streams_of_the_other_apis_free_their_kv_blocks(server, path, body):
    assert _wait_for(lambda: server.metrics()["triton_serve_num_requests_running"] == 0)
    before = server.metrics()

    async def read_a_little(http: httpx.AsyncClient) -> None:
        async with http.stream("POST", f"{server.url}{path}", json={"model": server.model, **body}) as response:
            assert response.status_code == 200
            events = 0
            async for line in response.aiter_lines():
                events += line.startswith("data: ")
                if events == 8:
                    return                          # leaving the block closes the connection mid-stream

    async def run() -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            await asyncio.gather(*(read_a_little(http) for _ in range(4)))

    asyncio.run(run())
    assert _wait_for(lambda: server.metrics()["triton_serve_kv_cache_blocks_used"] ==
                     before["triton_serve_kv_cache_blocks_used"])
    after = server.metrics()
    assert after["triton_serve_num_requests_running"] == 0
    assert after["triton_serve_generation_tokens_total"] - before["triton_serve_generation_tokens_total"] < 0.5 * 4000
