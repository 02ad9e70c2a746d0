"""vLLM's and SGLang's extensions through the official openai client: prompt_logprobs (against transformers),
cached tokens in usage, return_tokens_as_token_ids, the chat template controls, stop_reason / matched_stop,
truncate_prompt_tokens, the utility routes, --root-path, and the request metrics."""

from __future__ import annotations

import httpx
import openai
import pytest
from api_helpers import TIMEOUT, hf_logprobs, start_server, wait_ready

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def flagged(main_checkpoint, tmp_path_factory):
    """A server started with --return-tokens-as-token-ids, --trust-request-chat-template and --root-path."""
    log = tmp_path_factory.mktemp("flagged") / "server.log"
    proc = start_server(["--model", main_checkpoint, "--return-tokens-as-token-ids", "--trust-request-chat-template",
                         "--root-path", "/proxy"], log)
    try:
        yield wait_ready(proc, log)
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def _flagged_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def test_prompt_logprobs_are_the_models(server, client, hf_model):
    r = client.completions.create(model=server.model, prompt="The quick brown fox", max_tokens=1,
                                  extra_body={"prompt_logprobs": 2, "return_token_ids": True})
    choice = r.choices[0].model_dump()
    ids, entries = choice["prompt_token_ids"], choice["prompt_logprobs"]
    oracle = hf_logprobs(hf_model, ids)
    assert len(entries) == len(ids) and entries[0] is None
    for i, entry in enumerate(entries[1:], start=1):
        row = oracle[i - 1]
        top = row.topk(2).indices.tolist()
        assert set(entry) == {str(ids[i]), *map(str, top)}
        for token, info in entry.items():
            assert info["logprob"] == pytest.approx(row[int(token)].item(), abs=2e-3)
            assert info["rank"] == int((row > row[int(token)]).sum()) + 1
            assert isinstance(info["decoded_token"], str)
    chat = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=1,
                                          extra_body={"prompt_logprobs": 0, "return_token_ids": True})
    body = chat.model_dump()
    assert len(body["prompt_logprobs"]) == len(body["prompt_token_ids"])
    assert all(len(e) == 1 for e in body["prompt_logprobs"][1:])              # k = 0: the prompt's token only
    plain = client.completions.create(model=server.model, prompt="Hi", max_tokens=1)
    assert plain.choices[0].model_dump()["prompt_logprobs"] is None
    with pytest.raises(openai.BadRequestError, match="prompt_logprobs"):
        client.completions.create(model=server.model, prompt="Hi", max_tokens=1, stream=True,
                                  extra_body={"prompt_logprobs": 1})


def test_cached_tokens_in_usage_streams_and_metrics(server, client):
    prompt = "A long enough prompt to fill a few cache blocks: " + "lorem ipsum dolor sit amet " * 12
    before = server.metrics().get("triton_serve_prompt_tokens_cached_total", 0.0)
    first = client.completions.create(model=server.model, prompt=prompt + "one", max_tokens=2)
    second = client.completions.create(model=server.model, prompt=prompt + "two", max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 16 == 0 and cached < second.usage.prompt_tokens
    chunks = list(client.completions.create(model=server.model, prompt=prompt + "three", max_tokens=2, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == cached
    assert server.metrics()["triton_serve_prompt_tokens_cached_total"] - before == 2 * cached


def test_tokens_as_token_ids(server, client, flagged):
    asked = dict(max_tokens=4, logprobs=True, top_logprobs=2, extra_body={"return_tokens_as_token_ids": True,
                                                                          "return_token_ids": True})
    for c, model in ((client, server.model), (_flagged_client(flagged), server.model)):
        extra = asked if c is client else dict(asked, extra_body={"return_token_ids": True})
        r = c.chat.completions.create(model=model, messages=MESSAGES, **extra)
        choice = r.choices[0]
        ids = choice.model_dump()["token_ids"]
        assert [e.token for e in choice.logprobs.content] == [f"token_id:{i}" for i in ids]
        assert all(t.token.startswith("token_id:") for e in choice.logprobs.content for t in e.top_logprobs)
        assert bytes(choice.logprobs.content[0].bytes).decode() == f"token_id:{ids[0]}"
    legacy = client.completions.create(model=server.model, prompt="Hi", max_tokens=3, logprobs=1,
                                       extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True})
    assert legacy.choices[0].logprobs.tokens == [f"token_id:{i}" for i in legacy.choices[0].model_dump()["token_ids"]]


def test_chat_template_controls(server, client, hf_tokenizer, flagged):
    convo = MESSAGES + [{"role": "assistant", "content": "General"}]

    def prompt_ids(c, messages, **extra):
        r = c.chat.completions.create(model=server.model, messages=messages, max_tokens=3,
                                      extra_body={"return_token_ids": True, **extra})
        return r.model_dump()["prompt_token_ids"], r.choices[0].message.content

    def oracle(messages, **kw):
        return hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kw)

    assert prompt_ids(client, MESSAGES)[0] == oracle(MESSAGES, add_generation_prompt=True)
    assert prompt_ids(client, MESSAGES, add_generation_prompt=False)[0] == oracle(MESSAGES)
    ids, content = prompt_ids(client, convo, continue_final_message=True, add_generation_prompt=False, echo=True)
    assert ids == oracle(convo, continue_final_message=True)
    assert content.startswith("General")                      # echo: the last (assistant) message, then the reply
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    ids, _ = prompt_ids(_flagged_client(flagged), MESSAGES, chat_template=template)
    assert ids == hf_tokenizer("[user] Hello there\n", add_special_tokens=False)["input_ids"]


def test_stop_reason_and_matched_stop(server, client):
    greedy = client.completions.create(model=server.model, prompt="Once upon", max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True, "return_token_ids": True})
    text, ids = greedy.choices[0].text, greedy.choices[0].model_dump()["token_ids"]
    assert greedy.choices[0].model_dump()["stop_reason"] is None                        # length
    stop = text[3:5]
    r = client.completions.create(model=server.model, prompt="Once upon", max_tokens=12, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    choice = r.choices[0].model_dump()
    assert (choice["finish_reason"], choice["stop_reason"], choice["matched_stop"]) == ("stop", stop, stop)
    r = client.completions.create(model=server.model, prompt="Once upon", max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True, "stop_token_ids": [ids[4]]})
    assert r.choices[0].model_dump()["stop_reason"] == ids[4] == r.choices[0].model_dump()["matched_stop"]
    chat = dict(model=server.model, messages=MESSAGES, max_tokens=12, temperature=0)
    said = client.chat.completions.create(**chat, extra_body={"ignore_eos": True, "return_token_ids": True})
    token = said.choices[0].model_dump()["token_ids"][4]
    chunks = list(client.chat.completions.create(**chat, stream=True, extra_body={"ignore_eos": True,
                                                                                  "stop_token_ids": [token]}))
    finals = [c.choices[0].model_dump() for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0]["finish_reason"] == "stop"
    assert finals[0]["stop_reason"] == token == finals[0]["matched_stop"]


def test_truncate_prompt_tokens_keeps_the_end(server, client, hf_tokenizer):
    prompt = "one two three four five six seven eight nine ten eleven twelve"
    full = hf_tokenizer(prompt)["input_ids"]
    r = client.completions.create(model=server.model, prompt=prompt, max_tokens=1,
                                  extra_body={"truncate_prompt_tokens": 5, "return_token_ids": True})
    assert r.usage.prompt_tokens == 5 and r.choices[0].model_dump()["prompt_token_ids"] == full[-5:]
    with pytest.raises(openai.BadRequestError, match="truncate_prompt_tokens"):
        client.completions.create(model=server.model, prompt=prompt, max_tokens=1,
                                  extra_body={"truncate_prompt_tokens": 5000})


def test_utility_routes(server, client, hf_tokenizer):
    r = server.post("/tokenize", {"model": server.model, "prompt": "Hello world", "return_token_strs": True}).json()
    assert r["tokens"] == hf_tokenizer("Hello world")["input_ids"] and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == 1024 and r["token_strs"] == hf_tokenizer.convert_ids_to_tokens(r["tokens"])
    chat = server.post("/tokenize", {"messages": MESSAGES}).json()
    assert chat["tokens"] == hf_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                                              return_dict=False)
    assert server.post("/detokenize", {"tokens": r["tokens"]}).json() == {
        "prompt": hf_tokenizer.decode(r["tokens"])}
    assert server.post("/detokenize", {"tokens": [10 ** 6]}).status_code == 400
    assert server.post("/tokenize", {"model": "other", "prompt": "x"}).status_code == 404
    assert server.post("/tokenize", {"prompt": "x", "bogus": 1}).status_code == 400
    assert client.models.retrieve(server.model).id == server.model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("not-this-one")
    assert httpx.get(f"{server.url}/version", timeout=TIMEOUT).json()["version"]


def test_root_path_behind_a_proxy(flagged):
    assert httpx.get(f"{flagged}/proxy/v1/models", timeout=TIMEOUT).json()["data"]
    assert httpx.get(f"{flagged}/v1/models", timeout=TIMEOUT).json()["data"]             # a proxy that strips it
    assert httpx.get(f"{flagged}/openapi.json", timeout=TIMEOUT).json()["servers"] == [{"url": "/proxy"}]


def test_request_metrics(server, client):
    before = server.metrics()
    client.completions.create(model=server.model, prompt="Hi", max_tokens=5, extra_body={"ignore_eos": True})
    list(client.completions.create(model=server.model, prompt="Hi", max_tokens=3, stream=True,
                                   extra_body={"ignore_eos": True}))
    after = server.metrics()

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    for name in ("e2e_request_latency_seconds", "request_queue_time_seconds", "request_prefill_time_seconds",
                 "request_decode_time_seconds", "request_prompt_tokens", "request_generation_tokens",
                 "time_to_first_token_seconds"):
        assert grew(f"triton_serve_{name}_count") == 2, name
    assert grew("triton_serve_request_generation_tokens_sum") == 8
    assert grew("triton_serve_e2e_request_latency_seconds_sum") >= grew("triton_serve_request_decode_time_seconds_sum")
    text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    assert f'triton_serve_request_success_total{{finished_reason="length",model_name="{server.model}"}}' in text


def test_the_end_of_text_is_matched_stop_but_no_stop_reason(server, client, hf_tokenizer):
    r = client.completions.create(model=server.model, prompt="Yes or no?", max_tokens=20,
                                  extra_body={"structured_outputs": {"choice": ["yes"]}})   # ends with EOS
    choice = r.choices[0].model_dump()
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == ("yes", "stop", None)
    assert choice["matched_stop"] == hf_tokenizer.eos_token_id


def test_perf_metrics_in_response(server, client):
    r = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=4,
                                       extra_body={"perf_metrics_in_response": True, "ignore_eos": True})
    perf = r.model_dump()["perf_metrics"]
    assert perf["prompt-tokens"] == r.usage.prompt_tokens
    assert perf["cached-prompt-tokens"] == r.usage.prompt_tokens_details.cached_tokens
    assert 0 <= perf["prefill-queue-duration"] <= perf["server-time-to-first-token"] <= perf["server-processing-time"]
    assert perf["prefill-duration"] >= 0
    chunks = list(client.completions.create(model=server.model, prompt="Hi", max_tokens=4, n=2, stream=True,
                                            extra_body={"perf_metrics_in_response": True, "ignore_eos": True}))
    carrying = [i for i, c in enumerate(chunks) if c.model_dump().get("perf_metrics")]
    assert carrying == [len(chunks) - 1] and chunks[-1].choices[0].finish_reason == "length"
    assert "perf_metrics" not in client.completions.create(model=server.model, prompt="Hi", max_tokens=1).model_dump()


def test_prompt_logprobs_beside_echoed_logprobs(server, client):
    r = client.completions.create(model=server.model, prompt="The quick brown fox", max_tokens=2, echo=True,
                                  logprobs=1, extra_body={"prompt_logprobs": 5})
    choice = r.choices[0]
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs if top is not None)    # 1 and the token
    assert all(len(e) >= 5 for e in choice.model_dump()["prompt_logprobs"][1:])


def test_the_api_key_guards_the_root_path_too():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.middleware import ApiKeyMiddleware

    app = FastAPI()
    app.root_path = "/prefix"                       # as api/server.py sets --root-path
    app.add_api_route("/v1/models", lambda: {"ok": True}, methods=["GET"])
    app.add_middleware(ApiKeyMiddleware, api_keys=["secret"])
    http = TestClient(app)
    for path in ("/v1/models", "/prefix/v1/models"):
        assert http.get(path).status_code == 401, path
        assert http.get(path, headers={"Authorization": "Bearer secret"}).status_code == 200, path


@pytest.mark.parametrize("arch", ["gemma3", "qwen3-moe", "mixtral", "mistral-window", "qwen3-yarn"])
def test_the_server_serves_the_new_architectures(checkpoint_factory, tmp_path, arch):
    """Gemma 3 (local and global layers, soft-capped logits), the mixtures of experts, a windowed Mistral and a
    Qwen3 with YaRN through the server and the client."""
    path = checkpoint_factory(arch)
    log = tmp_path / f"{arch}.log"
    proc = start_server(["--model", path], log)
    try:
        url = wait_ready(proc, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
        r = client.completions.create(model=client.models.list().data[0].id, prompt="The quick brown fox",
                                      max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
