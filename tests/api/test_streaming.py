"""Streaming: SSE framing, one choice per chunk, finish_reason exactly once, streamed text equal to the
non-streamed text (greedy and seeded, with stops, logprobs and multi-byte text), and the four usage cases."""

from __future__ import annotations

import httpx
import pytest
from api_helpers import TIMEOUT, sse_events

PROMPTS = ["def add(a, b):", "日本語のテキスト 😀"]


def _stream(server, path: str, body: dict) -> list[dict]:
    """The chunks of a streamed response, checking what every stream must satisfy."""
    with httpx.Client(timeout=TIMEOUT, headers=server.headers()) as http:
        r = http.post(f"{server.url}{path}", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert "event:" not in r.text
    events = sse_events(r)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    finishes: dict[int, int] = {}
    for position, chunk in enumerate(chunks):
        assert len(chunk["choices"]) <= 1
        for choice in chunk["choices"]:
            assert choice["index"] not in finishes, "a chunk after the choice's finish_reason"
            if choice["finish_reason"] is not None:
                finishes[choice["index"]] = position
    indexes = {c["choices"][0]["index"] for c in chunks if c["choices"]}
    assert set(finishes) == indexes, "every choice finishes exactly once"
    return chunks


def _joined(chunks: list[dict], field: str = "text") -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            piece = choice[field] if field == "text" else choice["delta"].get("content") or ""
            out[choice["index"]] = out.get(choice["index"], "") + piece
    return out


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 21}])
def test_completions_stream_equals_non_streamed(server, sampling):
    body = {"model": server.model, "prompt": PROMPTS, "n": 2, "max_tokens": 40, "logprobs": 2, "echo": True,
            **sampling}
    whole = server.post("/v1/completions", body).json()
    chunks = _stream(server, "/v1/completions", body)
    texts = _joined(chunks)
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    assert all(len(c["text"]) > 20 for c in whole["choices"])
    for choice in whole["choices"]:
        parts = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and
                 c["choices"][0]["index"] == choice["index"]]
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            assert_logprobs_match(sum((p[key] for p in parts), []), choice["logprobs"][key])
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]
                  and c["choices"][0]["index"] == choice["index"]]
        assert finish[-1] == choice["finish_reason"] and finish.count(None) == len(finish) - 1


def _split_floats(value, floats: list[float]):
    """`value` with its floats taken out into `floats` (in order), for comparing the rest exactly."""
    if isinstance(value, float):
        floats.append(value)
        return float
    if isinstance(value, dict):
        return {k: _split_floats(v, floats) for k, v in value.items()}
    if isinstance(value, list):
        return [_split_floats(v, floats) for v in value]
    return value


def assert_logprobs_match(got, expected) -> None:
    """Same tokens, ranks and structure; logprobs equal to float32's precision. The second of two requests for
    one prompt takes its prefix from the cache and computes only the rest, through other kernels (the prompt's
    last tokens through the C kernel, not the reference's matrix products), so its numbers may differ in the last
    bits."""
    got_floats, expected_floats = [], []
    assert _split_floats(got, got_floats) == _split_floats(expected, expected_floats)
    assert got_floats == pytest.approx(expected_floats, rel=1e-5, abs=1e-5)


def test_chat_stream_equals_non_streamed(server):
    body = {"model": server.model, "messages": [{"role": "user", "content": "日本語 😀🎉"}], "n": 2,
            "max_tokens": 30, "temperature": 1.0, "seed": 5, "logprobs": True, "top_logprobs": 1}
    whole = server.post("/v1/chat/completions", body).json()
    chunks = _stream(server, "/v1/chat/completions", body)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert all("role" not in c["delta"] for c in mine[1:])
        content = sum((c["logprobs"]["content"] for c in mine[1:] if c["logprobs"]), [])
        assert_logprobs_match(content, whole["choices"][index]["logprobs"]["content"])
    assert _joined(chunks, "delta") == {c["index"]: c["message"]["content"] for c in whole["choices"]}


def test_stop_strings_never_leak(server):
    base = {"model": server.model, "prompt": PROMPTS[0], "max_tokens": 60, "temperature": 0, "ignore_eos": True}
    full = server.post("/v1/completions", base).json()["choices"][0]["text"]
    assert len(full) > 40
    stops = [full[25:29], full[10:12] + "\x00", full[30:31] + full[5:7]]     # a hit, and two near misses
    expected = full[:full.find(stops[0])]
    chunks = _stream(server, "/v1/completions", {**base, "stop": stops})
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed == expected
    whole = server.post("/v1/completions", {**base, "stop": stops}).json()["choices"][0]
    assert whole["text"] == expected and whole["finish_reason"] == "stop"
    chunks = _stream(server, "/v1/completions", {**base, "stop": stops[1:]})
    assert "".join(c["choices"][0]["text"] for c in chunks) == full               # held back, then released


def test_multibyte_text_streams_byte_safe(server):
    prompt = "中文字符 😀🎉🚀 Ελληνικά"
    partial = 0
    for seed in range(6):
        body = {"model": server.model, "prompt": prompt, "max_tokens": 30, "temperature": 1.0, "seed": seed,
                "logprobs": 0}
        whole = server.post("/v1/completions", body).json()["choices"][0]
        partial += sum(t.startswith("bytes:") for t in whole["logprobs"]["tokens"])
        chunks = _stream(server, "/v1/completions", body)
        assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert partial > 0                        # the outputs did split characters over tokens


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("options", [None, {"include_usage": True}, {"include_usage": False}, {},
                                     {"include_usage": True, "continuous_usage_stats": True},
                                     {"include_usage": False, "continuous_usage_stats": True},   # vLLM: none
                                     {"continuous_usage_stats": True}])
def test_stream_usage(server, endpoint, options):
    if endpoint == "chat":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
    else:
        path, body = "/v1/completions", {"prompt": PROMPTS}
    body = {**body, "model": server.model, "n": 2, "max_tokens": 7, "temperature": 1.0, "seed": 3}
    server.post(path, body)                  # the prompt is then in the prefix cache (cached_tokens), as below
    expected = server.post(path, body).json()["usage"]
    if options is not None:
        body["stream_options"] = options
    chunks = _stream(server, path, body)
    usages = [c.get("usage") for c in chunks]
    if options is None:                                   # Fireworks: in the last chunk, with the finish
        assert usages[-1] == expected and chunks[-1]["choices"][0]["finish_reason"] is not None
        assert usages[:-1] == [None] * (len(chunks) - 1)
    elif options.get("include_usage"):                    # OpenAI: one extra chunk with no choices
        assert chunks[-1]["choices"] == [] and usages[-1] == expected
        assert all(c["choices"] for c in chunks[:-1])
        if options.get("continuous_usage_stats"):
            counts = [u["completion_tokens"] for u in usages]
            assert all(u is not None and u["prompt_tokens"] == expected["prompt_tokens"] for u in usages)
            assert counts == sorted(counts) and counts[-2] == counts[-1] == expected["completion_tokens"]
        else:
            assert usages[:-1] == [None] * (len(chunks) - 1)
    else:
        assert usages == [None] * len(chunks)


def test_echo_streams_the_prompt_first(server):
    body = {"model": server.model, "prompt": PROMPTS, "n": 2, "max_tokens": 3, "echo": True, "temperature": 0}
    chunks = _stream(server, "/v1/completions", body)
    for index in range(4):
        mine = [c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0].startswith(PROMPTS[index // 2])
    chunks = _stream(server, "/v1/completions", {**body, "max_tokens": 0})
    assert _joined(chunks) == {i: PROMPTS[i // 2] for i in range(4)}


def test_openai_client_streams(server):
    client = server.client()
    stream = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = list(stream)
    whole = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 12                # Fireworks: usage in the last chunk


@pytest.mark.parametrize("body, param", [
    ({"best_of": 3, "n": 1, "stream": True}, "best_of"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
])
def test_streaming_parameter_errors(server, body, param):
    r = server.post("/v1/completions", {"model": server.model, "prompt": "x", **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_named_event_streams_end_a_failure_with_their_apis_error_event():
    """Anthropic's and the Responses API's framing (`event:` and `data:`), and the error event each sends when the
    stream fails mid-way: an APIError as it is, anything else as a 500."""
    import asyncio
    import json

    from api import messages, openai_responses
    from api.errors import APIError
    from api.streaming import named_events

    async def failing(exc: Exception):
        yield {"type": "ping"}
        raise exc

    async def frames(exc: Exception, error_event, numbered: bool) -> list[tuple[str, dict]]:
        out = []
        async for raw in named_events(failing(exc), error_event, numbered):
            event, data = raw.decode().rstrip("\n").split("\n")
            out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
        return out

    anthropic = asyncio.run(frames(APIError(429, "busy"), messages._error_event, False))
    assert anthropic == [("ping", {"type": "ping"}),
                         ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})]
    unexpected = asyncio.run(frames(RuntimeError("boom"), messages._error_event, False))
    assert unexpected[-1][1]["error"]["type"] == "api_error"
    responses = asyncio.run(frames(RuntimeError("boom"), openai_responses._error_event, True))
    assert [data["sequence_number"] for _, data in responses] == [0, 1]
    assert responses[-1] == ("error", {"type": "error", "code": "server_error", "param": None, "sequence_number": 1,
                                       "message": "The server had an error while processing your request."})
