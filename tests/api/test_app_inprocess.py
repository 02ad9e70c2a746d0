"""The app in-process (httpx over ASGI) where a subprocess cannot reach: an engine thread that dies, a full
waiting queue (429), and the command line's choices (default model, API_KEY, served name)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
from api_helpers import TIMEOUT, anthropic_asgi_client, asgi_client

import api.cli as cli
import engine
from api import ServerSettings, create_app
from engine import AsyncLLM, SamplingParams


def _serve(llm: AsyncLLM, **settings) -> httpx.AsyncClient:
    app = create_app(llm, ServerSettings("tiny", **settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=TIMEOUT)


def _break_after(llm: AsyncLLM, steps: int) -> None:
    real_step, calls = llm._engine.step, [0]

    def step():
        calls[0] += 1
        if calls[0] > steps:
            raise RuntimeError("simulated device failure")
        return real_step()

    llm._engine.step = step


def test_engine_death_health_and_errors(llama_path):
    async def main():
        llm = AsyncLLM(llama_path)
        try:
            async with _serve(llm) as http:
                assert (await http.get("/health")).status_code == 200
                _break_after(llm, 5)
                body = {"model": "tiny", "prompt": "hello", "max_tokens": 50, "ignore_eos": True, "stream": True}
                streamed = await http.post("/v1/completions", json=body)
                health = await http.get("/health")
                after = await http.post("/v1/completions", json={**body, "stream": False})
                chat = await http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 2,
                                                                     "messages": [{"role": "user", "content": "x"}]})
                metrics = await http.get("/metrics")
                return streamed, health, after, chat, metrics
        finally:
            llm.shutdown()

    streamed, health, after, chat, metrics = asyncio.run(main())
    events = [block[len("data: "):] for block in streamed.text.split("\n\n") if block]
    assert streamed.status_code == 200 and events[-1] == "[DONE]"
    assert len(events) >= 3                                    # some chunks came before the failure
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "simulated device failure" in error["message"]
    assert all("choices" in json.loads(e) for e in events[:-2])
    assert health.status_code == 503 and health.json()["error"]["type"] == "server_error"
    for r in (after, chat):
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    gauges = {line.split("{")[0]: line.split()[1] for line in metrics.text.splitlines()
              if line.startswith("triton_serve_")}
    assert gauges["triton_serve_engine_healthy"] == "0.0"
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_blocks_used"):   # nothing runs now
        assert gauges[f"triton_serve_{name}"] == "0.0"


def test_prompts_are_tokenized_off_the_event_loop(llama_path, monkeypatch):
    """A prompt of megabytes takes seconds to tokenize; on the event loop it would stall every other stream."""
    async def main():
        llm = AsyncLLM(llama_path)
        try:
            loop_thread, threads = threading.get_ident(), []
            encode, encode_chat = llm.tokenizer.encode, llm.tokenizer.encode_chat
            monkeypatch.setattr(llm.tokenizer, "encode",
                                lambda *a, **k: threads.append(threading.get_ident()) or encode(*a, **k))
            monkeypatch.setattr(llm.tokenizer, "encode_chat",
                                lambda *a, **k: threads.append(threading.get_ident()) or encode_chat(*a, **k))
            async with _serve(llm) as http:
                completion = await http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1})
                chat = await http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 1,
                                                                     "messages": [{"role": "user", "content": "x"}]})
            return loop_thread, threads, completion, chat
        finally:
            llm.shutdown()

    loop_thread, threads, completion, chat = asyncio.run(main())
    assert completion.status_code == chat.status_code == 200
    assert len(threads) >= 2 and loop_thread not in threads          # encode_chat calls encode


def test_full_waiting_queue_is_429(llama_path):
    """A full queue is 429 with `retry-after`, and Anthropic's 529 overloaded_error on /v1/messages (the anthropic
    SDK's OverloadedError), so that clients back off and retry."""
    import anthropic
    import openai

    async def main():
        llm = AsyncLLM(llama_path, max_num_seqs=2, max_queued_seqs=2)
        app = create_app(llm, ServerSettings("tiny"))
        try:
            async with asgi_client(app) as http, anthropic_asgi_client(app) as claude:
                busy = await llm.add_request("hello", SamplingParams(n=3, max_tokens=200, ignore_eos=True))
                body = {"model": "tiny", "prompt": "hi", "n": 2, "max_tokens": 2}
                rejected = await http.post("/v1/completions", json=body)
                too_big = await http.post("/v1/completions", json={**body, "n": 5})
                too_many_candidates = await http.post("/v1/completions", json={**body, "n": 1, "best_of": 5})
                chat = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http, max_retries=0)
                with pytest.raises(openai.RateLimitError) as openai_error:
                    await chat.chat.completions.create(model="tiny", n=2, max_tokens=2,
                                                       messages=[{"role": "user", "content": "hi"}])
                await llm.add_request("hello", SamplingParams(max_tokens=200, ignore_eos=True))   # 4 of 4 now
                with pytest.raises(anthropic.OverloadedError) as anthropic_error:
                    await claude.messages.create(model="tiny", max_tokens=2,
                                                 messages=[{"role": "user", "content": "hi"}])
                await llm.abort(busy.request_id)
                accepted = await http.post("/v1/completions", json=body)
                return rejected, too_big, too_many_candidates, accepted, openai_error.value, anthropic_error.value
        finally:
            llm.shutdown()

    rejected, too_big, too_many_candidates, accepted, openai_error, anthropic_error = asyncio.run(main())
    assert rejected.status_code == 429 and rejected.json()["error"]["type"] == "rate_limit_error"
    assert rejected.headers["retry-after"] == "1"
    assert openai_error.status_code == 429 and openai_error.response.headers["retry-after"] == "1"
    assert anthropic_error.status_code == 529 and anthropic_error.response.headers["retry-after"] == "1"
    assert anthropic_error.body["error"]["type"] == "overloaded_error"
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "n"     # can never fit
    assert too_many_candidates.status_code == 400 and too_many_candidates.json()["error"]["param"] == "best_of"
    assert accepted.status_code == 200 and accepted.json()["usage"]["completion_tokens"] <= 4


def test_without_model_the_default_must_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "DEFAULT_MODEL", str(tmp_path / "pycoder-tiny"))
    with pytest.raises(SystemExit, match="the built-in default model is not available .* pass --model"):
        cli.main(["--port", "0"])
    with pytest.raises(SystemExit) as exited:
        cli.main(["--model", str(tmp_path)])
    assert exited.value.code == 2 and "is not a checkpoint directory (no config.json)" in capsys.readouterr().err


def test_without_model_the_built_in_model_is_served_as_pycoder_tiny():
    args = cli.build_parser().parse_args([])
    model = cli.resolve_model(args.model)
    assert (Path(model) / "model.safetensors").is_file()
    assert cli.server_settings(args, model).served_model_name == "pycoder-tiny"


def test_settings_from_the_command_line(llama_path, monkeypatch):
    args = cli.build_parser().parse_args(["--model", llama_path])
    monkeypatch.delenv("API_KEY", raising=False)
    settings = cli.server_settings(args, llama_path)
    assert settings.served_model_name == Path(llama_path).name and settings.api_key is None
    monkeypatch.setenv("API_KEY", "from-env")
    assert cli.server_settings(args, llama_path).api_key == "from-env"
    args = cli.build_parser().parse_args(["--model", llama_path, "--api-key", "flag", "--served-model-name", "m"])
    assert cli.server_settings(args, llama_path) == ServerSettings("m", "flag", args.max_request_bytes)


def test_engine_options_from_the_command_line(llama_path):
    """Every engine flag reaches AsyncLLM; CUDA graphs are the engine's choice unless --enforce-eager."""
    options = cli.engine_options(cli.build_parser().parse_args(["--model", llama_path]))
    assert options["cuda_graphs"] is None and options["enable_prefix_caching"] is True
    args = cli.build_parser().parse_args(["--enforce-eager", "--no-prefix-caching", "--max-num-seqs", "3",
                                          "--max-queued-seqs", "5", "--seed", "7", "--cpu-threads", "3"])
    options = cli.engine_options(args)
    assert options["cuda_graphs"] is False and options["enable_prefix_caching"] is False
    chosen = (options["max_num_seqs"], options["max_queued_seqs"], options["seed"], options["cpu_threads"])
    assert chosen == (3, 5, 7, 3)


def test_ready_line_names_the_model_and_address(server):
    log = server.log.read_text()
    assert f"ready: serving model '{server.model}' ({server.checkpoint}, max_model_len 1024) at {server.url}" in log


def test_unexpected_errors_are_500_without_a_trace(llama_path, monkeypatch):
    import api.completions

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(api.completions, "completion_prompts", broken)

    async def main():
        llm = AsyncLLM(llama_path)
        try:
            app = create_app(llm, ServerSettings("tiny"))
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await http.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
        finally:
            llm.shutdown()

    r = asyncio.run(main())
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "Traceback" not in r.text


def test_ids_the_tokenizer_lacks_keep_distinct_logprob_entries(checkpoint_factory):
    """The model's vocabulary is padded past the tokenizer's: those ids are written `token_id:N`, so a legacy
    top_logprobs dict keeps every one of its k entries and chat's list repeats no token (they all rendered "")."""
    path = checkpoint_factory("llama", vocab_size=1024, seed=3)        # the test tokenizer has about 400 tokens
    prompt = "def add(a, b):"

    async def main():
        llm = AsyncLLM(path, max_num_seqs=2)
        try:
            async with _serve(llm) as http:
                legacy = await http.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 4,
                                                                   "temperature": 0, "logprobs": 20})
                chat = await http.post("/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                    "temperature": 0, "logprobs": True, "top_logprobs": 20})
                return legacy, chat, len(llm.tokenizer.hf)
        finally:
            llm.shutdown()

    legacy, chat, known = asyncio.run(main())
    assert legacy.status_code == 200 and chat.status_code == 200, (legacy.text, chat.text)
    tops = legacy.json()["choices"][0]["logprobs"]["top_logprobs"]
    padded = [key for top in tops for key in top if key.startswith("token_id:")]
    assert padded and all(int(key.split(":")[1]) >= known for key in padded)     # the premise: they do appear
    assert all(len(top) >= 20 for top in tops)
    for entry in chat.json()["choices"][0]["logprobs"]["content"]:
        tokens = [alt["token"] for alt in entry["top_logprobs"]]
        assert len(tokens) == 20 and len(set(tokens)) == 20


def test_a_stopping_server_takes_no_new_work(llama_path):
    """Once shutdown has begun (api/serve.py sets `stopping`), requests get 503 and /health turns 503; the
    requests cut by `AsyncLLM.abort_all` end with the shutdown's error, and the engine frees their blocks."""
    async def main():
        llm = AsyncLLM(llama_path)
        try:
            app = create_app(llm, ServerSettings("tiny"))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                         timeout=TIMEOUT) as http:
                stream = await llm.add_request([1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True))
                await anext(stream)
                assert llm.num_requests == 1
                assert llm.abort_all("going away") == 1 and llm.num_requests == 0
                with pytest.raises(RuntimeError, match="going away"):
                    async for _ in stream:
                        pass
                app.state.server.stopping = True
                body = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
                replies = [await http.post("/v1/completions", json=body), await http.get("/health")]
                for _ in range(500):
                    if llm.stats().kv_blocks_used == 0:
                        break
                    await asyncio.sleep(0.01)
                return replies, llm.stats().kv_blocks_used
        finally:
            llm.shutdown()

    (completion, health), used = asyncio.run(main())
    assert completion.status_code == 503 and "shutting down" in completion.json()["error"]["message"]
    assert health.status_code == 503
    assert used == 0


def test_several_served_names(llama_path):
    """vLLM's `--served-model-name a b`: each name is accepted and listed, the first first; any other is a 404."""
    args = cli.build_parser().parse_args(["--model", llama_path, "--served-model-name", "coder", "coder-v2"])
    settings = cli.server_settings(args, llama_path)
    assert (settings.served_model_name, settings.aliases) == ("coder", ("coder-v2",))

    async def main():
        llm = AsyncLLM(llama_path)
        try:
            async with asgi_client(create_app(llm, settings)) as http:
                listed = (await http.get("/v1/models")).json()["data"]
                assert [card["id"] for card in listed] == ["coder", "coder-v2"]
                assert (await http.get("/v1/models/coder-v2")).json()["id"] == "coder-v2"
                for name in ("coder", "coder-v2"):
                    r = await http.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2})
                    assert r.status_code == 200 and r.json()["model"] == name
                missing = await http.post("/v1/completions", json={"model": "other", "prompt": "x"})
                assert missing.status_code == 404
                assert missing.json()["error"]["message"] == \
                    "The model 'other' does not exist; this server serves 'coder', 'coder-v2'."
        finally:
            llm.shutdown()

    asyncio.run(main())


def test_several_api_keys(llama_path):
    """vLLM's `--api-key k1 k2`: each key is accepted (as a Bearer token, or Anthropic's x-api-key), others 401."""
    settings = cli.server_settings(cli.build_parser().parse_args(["--api-key", "k1", "k2"]), llama_path)
    assert (settings.api_key, settings.more_api_keys) == ("k1", ("k2",))

    async def main():
        llm = AsyncLLM(llama_path)
        try:
            async with asgi_client(create_app(llm, settings)) as http:
                for headers, status in (({}, 401), ({"Authorization": "Bearer k1"}, 200),
                                        ({"Authorization": "Bearer k2"}, 200), ({"Authorization": "Bearer k3"}, 401),
                                        ({"Authorization": "k2"}, 401)):
                    assert (await http.get("/v1/models", headers=headers)).status_code == status, headers
                body = {"model": settings.served_model_name, "messages": [{"role": "user", "content": "x"}]}
                assert (await http.post("/v1/messages/count_tokens", json=body,
                                        headers={"x-api-key": "k2"})).status_code == 200
        finally:
            llm.shutdown()

    asyncio.run(main())
