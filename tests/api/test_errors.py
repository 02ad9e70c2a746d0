"""The error envelope and its codes: 400 (never 422) for malformed JSON, wrong types, out-of-range values and
unsupported parameters; 401, 404, 413; and the other routes (/v1/models, /health, /metrics, /openapi.json)."""

from __future__ import annotations

import httpx
import openai
import pytest


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    return body["error"]


@pytest.mark.parametrize("content, headers", [
    (b"{not json", {"content-type": "application/json"}),
    (b'{"model": "m", "prompt": "x",}', {"content-type": "application/json"}),
    (b"[1, 2]", {"content-type": "application/json"}),
    (b"", {"content-type": "application/json"}),
    (b'{"model": "m", "prompt": "x"}', {"content-type": "text/plain"}),
])
def test_malformed_bodies_are_400(server, content, headers):
    r = httpx.post(f"{server.url}/v1/completions", content=content, headers=headers)
    assert _error(r, 400)["type"] == "invalid_request_error"


@pytest.mark.parametrize("field, value", [
    ("temperature", 2.5), ("temperature", -0.1), ("temperature", "hot"), ("top_p", 0), ("top_p", 1.5),
    ("n", 0), ("n", 129), ("n", 2.0), ("n", "2"), ("best_of", 0), ("presence_penalty", 2.5),
    ("frequency_penalty", -3), ("logit_bias", {"abc": 1}), ("logit_bias", {"\u0663": 1}), ("logit_bias", {"5": 101}),
    ("logit_bias", {"99999": 1}),
    ("logprobs", 21), ("logprobs", -1), ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("stop", 5),
    ("seed", "1"), ("seed", 1.5), ("max_tokens", -1), ("max_tokens", "16"), ("stream", "yes"), ("echo", 1),
    ("top_k", -2), ("min_p", 1.5), ("repetition_penalty", 0), ("repetition_penalty", 2.5), ("min_tokens", -1),
    ("stop_token_ids", [-1]), ("stop_token_ids", [99999]), ("ignore_eos", "true"), ("prompt", []),
    ("prompt", [[1, 2], "a"]), ("prompt", [99999]), ("prompt", ""), ("prompt", None), ("model", 5),
    ("context_length_exceeded_behavior", "drop"), ("user", 5),
])
def test_invalid_values_name_the_field(server, field, value):
    body = {"model": server.model, "prompt": "hello", field: value}
    error = _error(server.post("/v1/completions", body), 400)
    assert error["param"].split("[")[0] == field and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", rb'{"model": "M", "prompt": "abc\ud800def"}', "prompt"),
    ("/v1/completions", rb'{"model": "M", "prompt": ["ok", "\udfff"]}', "prompt[1]"),
    ("/v1/completions", rb'{"model": "M", "prompt": "x", "stream": true, "stop": ["\ud83d"]}', "stop[0]"),
    ("/v1/completions", rb'{"model": "\ud800", "prompt": "x"}', "model"),
    ("/v1/chat/completions", rb'{"model": "M", "messages": [{"role": "user", "content": "hi\ud800"}]}',
     "messages[0].content"),
])
def test_text_that_is_not_unicode_is_400(server, path, body, param):
    """JSON can escape a lone UTF-16 surrogate, which no tokenizer or response can encode: 400 naming the field
    (not a 500 from the tokenizer, nor a 404 that cannot render the model's name)."""
    content = body.replace(b'"M"', f'"{server.model}"'.encode())
    r = httpx.post(f"{server.url}{path}", content=content, headers={"content-type": "application/json"})
    error = _error(r, 400)
    assert error["param"] == param and "surrogate" in error["message"]
    assert server.post("/v1/completions", {"model": server.model, "prompt": "\U0001F600 ok",
                                           "max_tokens": 1}).status_code == 200    # a proper pair is fine


def test_cross_field_rules(server):
    body = {"model": server.model, "prompt": "hello"}
    assert _error(server.post("/v1/completions", {**body, "n": 3, "best_of": 2}), 400)["param"] == "best_of"
    assert _error(server.post("/v1/completions", {**body, "min_tokens": 20, "max_tokens": 5}), 400)["param"] == \
        "min_tokens"
    assert _error(server.post("/v1/completions", {key: v for key, v in body.items() if key != "prompt"}), 400)[
        "param"] == "prompt"
    chat = {"model": server.model, "messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}]}
    assert _error(server.post("/v1/chat/completions", chat), 400)["param"] == "messages[1].tool_call_id"  # OpenAI's


@pytest.mark.parametrize("field, value", [("suffix", "tail"), ("functions", []), ("service_tier", "auto")])
def test_unsupported_parameters_are_never_ignored(server, field, value):
    error = _error(server.post("/v1/completions", {"model": server.model, "prompt": "hi", field: value}), 400)
    assert error["param"] == field and "not supported" in error["message"]


def test_informational_fields_are_accepted(server):
    body = {"model": server.model, "prompt": "hi", "max_tokens": 1, "user": "u1", "metadata": {"k": "v"}}
    assert server.post("/v1/completions", body).status_code == 200


def test_unknown_model_is_404(server, client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-5", prompt="hi")
    assert caught.value.body["code"] == "model_not_found"
    error = _error(server.post("/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "a"}]}),
                   404)
    assert error == {"message": error["message"], "type": "invalid_request_error", "param": "model",
                     "code": "model_not_found"}


def test_unknown_route_and_method(server):
    _error(httpx.get(f"{server.url}/v1/nothing"), 404)
    _error(httpx.get(f"{server.url}/v1/completions"), 405)


def test_api_key(small_server):
    url = f"{small_server.url}/v1/models"
    assert _error(httpx.get(url), 401)["type"] == "authentication_error"
    assert _error(httpx.get(url, headers={"Authorization": "Bearer wrong"}), 401)["type"] == "authentication_error"
    assert _error(httpx.post(f"{small_server.url}/v1/completions", json={}), 401)["type"] == "authentication_error"
    generate = {"model": small_server.model, "prompt": "x", "max_tokens": 1}      # SageMaker's route generates too
    assert _error(httpx.post(f"{small_server.url}/invocations", json=generate), 401)["type"] == "authentication_error"
    assert small_server.post("/invocations", generate).status_code == 200
    assert httpx.get(url, headers=small_server.headers()).json()["data"][0]["id"] == small_server.model
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="nope", max_retries=0).models.list()
    assert small_server.client().models.list().data[0].id == small_server.model
    for open_route in ("/health", "/metrics", "/openapi.json"):
        assert httpx.get(f"{small_server.url}{open_route}").status_code == 200


def test_body_size_limit(small_server):
    big = {"model": small_server.model, "prompt": "x" * 70_000}
    assert _error(small_server.post("/v1/completions", big), 413)["type"] == "invalid_request_error"

    def chunked():                                  # no Content-Length: counted while reading
        for _ in range(10):
            yield b" " * 10_000

    r = httpx.post(f"{small_server.url}/v1/completions", content=chunked(),
                   headers={**small_server.headers(), "content-type": "application/json"})
    _error(r, 413)
    ok = small_server.post("/v1/completions", {"model": small_server.model, "prompt": "x" * 1000, "max_tokens": 1})
    assert ok.status_code == 400 and ok.json()["error"]["code"] == "context_length_exceeded"    # read, not 413


def test_models_health_metrics_openapi(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == server.model and card["object"] == "model" and card["max_model_len"] == 1024
    assert isinstance(card["created"], int) and card["owned_by"]
    assert httpx.get(f"{server.url}/health").status_code == 200
    metrics = server.metrics()
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_blocks_used", "kv_cache_blocks_total",
                 "prompt_tokens_total", "generation_tokens_total", "time_to_first_token_seconds_count",
                 "inter_token_latency_seconds_count"):
        assert f"triton_serve_{name}" in metrics, name
    assert metrics["triton_serve_kv_cache_blocks_total"] > 0
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert "temperature" in schemas["CompletionRequest"]["properties"]
    assert "messages" in schemas["ChatCompletionRequest"]["properties"]


def test_token_counters_count_sequences_as_vllm(server, client):
    """The metrics' unit is the sequence (vLLM's): 2 prompts x n=2 are 4 of everything, prompt tokens included,
    which the prefix cache's lookups agree with."""
    before = server.metrics()
    r = client.completions.create(model=server.model, prompt=["a b c", "def"], n=2, max_tokens=5,
                                  extra_body={"ignore_eos": True})
    after = server.metrics()

    def grew(name: str) -> float:
        return after[f"triton_serve_{name}"] - before.get(f"triton_serve_{name}", 0.0)

    assert grew("prompt_tokens_total") == 2 * r.usage.prompt_tokens == grew("prefix_cache_queries_total")
    assert grew("generation_tokens_total") == 20
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
                 "request_prefill_time_seconds", "request_decode_time_seconds", "request_inference_time_seconds",
                 "request_time_per_output_token_seconds", "request_prompt_tokens", "request_generation_tokens"):
        assert grew(f"{name}_count") == 4, name
    assert grew("inter_token_latency_seconds_count") == 4 * 4            # the tokens after each first one
    assert grew("request_generation_tokens_sum") == 20
    assert grew("request_max_num_generation_tokens_count") == 2 and grew("request_max_num_generation_tokens_sum") == 10
    assert grew('request_success_total{finished_reason="length"}') == 4
