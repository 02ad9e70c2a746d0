"""A checkpoint's generation_config.json gives the default sampling parameters, as in vLLM (`--generation-config
auto`): LLM.get_default_sampling_params, LLM.generate without parameters, and every field a server request leaves
out; "vllm" and overrides change that. Also the server-wide --chat-template, a request's own on /tokenize, and
CORS."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from api_helpers import asgi_client

from api import ServerSettings, create_app
from engine import LLM, AsyncLLM, SamplingParams

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def tuned(llama_path, tmp_path_factory):
    """The test model, its generation_config.json setting top_k 1 (greedy), a repetition penalty and 5 new
    tokens."""
    path = tmp_path_factory.mktemp("tuned")
    shutil.copytree(llama_path, path, dirs_exist_ok=True)
    config = json.loads((path / "generation_config.json").read_text())
    config.update(top_k=1, repetition_penalty=1.3, max_new_tokens=5, do_sample=True)
    (path / "generation_config.json").write_text(json.dumps(config))
    return str(path)


def test_llm_defaults_come_from_the_generation_config(tuned):
    llm = LLM(tuned)
    assert llm.engine.sampling_defaults == {"top_k": 1, "repetition_penalty": 1.3, "max_tokens": 5}
    default = llm.get_default_sampling_params()
    assert (default.top_k, default.repetition_penalty, default.max_tokens) == (1, 1.3, 5)
    greedy = SamplingParams(temperature=0, repetition_penalty=1.3, max_tokens=5)
    expected = llm.generate(PROMPT, greedy)[0].outputs[0].token_ids
    assert [llm.generate(PROMPT)[0].outputs[0].token_ids for _ in range(2)] == [expected] * 2
    plain = LLM(tuned, generation_config="vllm")
    assert plain.engine.sampling_defaults == {} and plain.get_default_sampling_params().max_tokens == 16
    overridden = LLM(tuned, override_generation_config={"max_new_tokens": 3, "temperature": 0.5})
    assert overridden.engine.sampling_defaults == {"top_k": 1, "repetition_penalty": 1.3, "max_tokens": 3,
                                                   "temperature": 0.5}
    with pytest.raises(ValueError, match="override_generation_config: do_sample cannot be overridden"):
        LLM(tuned, override_generation_config={"do_sample": False})
    with pytest.raises(ValueError, match="override_generation_config: 1 cannot be overridden"):
        LLM(tuned, override_generation_config={1: 2})
    with pytest.raises(ValueError, match="temperature must be a number"):
        LLM(tuned, override_generation_config={"temperature": 10**400})
    with pytest.raises(ValueError, match="generation_config must be 'auto', 'vllm' or a directory"):
        LLM(tuned, generation_config="/no/such/dir")


def test_requests_take_the_defaults_for_the_fields_they_leave_out(tuned):
    async def main():
        llm = AsyncLLM(tuned)
        try:
            app = create_app(llm, ServerSettings("tuned"))
            async with asgi_client(app) as client:
                async def chat(**fields):
                    body = {"model": "tuned", "messages": [{"role": "user", "content": "hi"}], "seed": 7,
                            "ignore_eos": True, "return_token_ids": True, **fields}
                    return (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]["token_ids"]

                defaults = await chat()
                assert len(defaults) == 5                                  # max_new_tokens
                assert defaults == await chat(top_k=1, repetition_penalty=1.3, temperature=1.0, seed=8)
                assert len(await chat(max_tokens=7)) == 7                  # what a request sends wins
                assert defaults != await chat(top_k=-1, repetition_penalty=1.0, temperature=1.5)
                body = {"model": "tuned", "prompt": PROMPT, "ignore_eos": True}
                completion = (await client.post("/v1/completions", json=body)).json()
                assert completion["usage"]["completion_tokens"] == 16      # completions' own default, as vLLM
                body = {"model": "tuned", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
                message = (await client.post("/v1/messages", json=body)).json()
                assert message["content"][0]["text"] == \
                    (await client.post("/v1/chat/completions", json={**body, "seed": 1})).json()["choices"][0][
                        "message"]["content"]                             # greedy either way: top_k 1
                response = (await client.post("/v1/responses", json={"model": "tuned", "input": "hi"})).json()
                assert response["usage"]["output_tokens"] <= 5
                assert (response["max_output_tokens"], response["temperature"]) == (5, 1.0)    # what ran
        finally:
            llm.shutdown()

    asyncio.run(main())


def test_a_server_chat_template_and_cors(llama_path):
    async def main():
        llm = AsyncLLM(llama_path)
        try:
            template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
            settings = ServerSettings("tiny", chat_template=template,
                                      cors={"allow_origins": ["https://a.example"], "allow_methods": ["POST"],
                                            "allow_headers": ["*"], "allow_credentials": False})
            app = create_app(llm, settings)
            async with asgi_client(app) as client:
                body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
                tokens = (await client.post("/tokenize", json=body)).json()["tokens"]
                assert tokens == llm.tokenizer.encode("[user] hi\n", add_special_tokens=False)
                preflight = await client.options("/v1/chat/completions", headers={
                    "Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
                assert preflight.status_code == 200
                assert preflight.headers["access-control-allow-origin"] == "https://a.example"
                other = await client.options("/v1/chat/completions", headers={
                    "Origin": "https://b.example", "Access-Control-Request-Method": "POST"})
                assert other.status_code == 400
                own = {**body, "chat_template": "{{ messages[0].content }}!"}        # /tokenize takes chat's field
                refused = await client.post("/tokenize", json=own)
                assert refused.status_code == 400 and refused.json()["error"]["param"] == "chat_template"
            trusting = create_app(llm, ServerSettings("tiny", trust_request_chat_template=True))
            async with asgi_client(trusting) as client:
                tokens = (await client.post("/tokenize", json=own)).json()["tokens"]
                assert tokens == llm.tokenizer.encode("hi!", add_special_tokens=False)
                # A reply sent back: its reasoning_content reaches the template; the SDK's `parsed` is accepted.
                thinking = {**own, "chat_template": "{% for m in messages %}{{ m.reasoning_content }}|"
                                                    "{{ m.content }};{% endfor %}",
                            "messages": [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "{}", "reasoning_content": "hm",
                                          "parsed": {}}]}
                tokens = (await client.post("/tokenize", json=thinking)).json()["tokens"]
                assert llm.tokenizer.decode(tokens, skip_special_tokens=False) == "|hi;hm|{};"
                reply = thinking["messages"][1]                     # vLLM's replies call it `reasoning`
                thinking["messages"][1] = {"role": "assistant", "content": "{}", "reasoning": "hm"}
                tokens = (await client.post("/tokenize", json=thinking)).json()["tokens"]
                assert llm.tokenizer.decode(tokens, skip_special_tokens=False) == "|hi;hm|{};"
                thinking["messages"][1] = {**reply, "colour": "red"}        # an error names the message's field
                error = (await client.post("/tokenize", json=thinking)).json()["error"]
                assert error["param"] == "messages[1].colour"
            default = create_app(llm, ServerSettings("tiny"))             # vLLM 0.32: no other origin by default
            async with asgi_client(default) as client:
                preflight = await client.options("/v1/chat/completions", headers={
                    "Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
                assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
                words = {"model": "tiny", "prompt": "x", "max_tokens": 2, "bad_words": ["a"] * 129}
                assert (await client.post("/v1/completions", json=words)).status_code == 200    # one word
        finally:
            llm.shutdown()

    asyncio.run(main())


def test_a_generation_config_directory_or_override_caps_every_request(tuned, tmp_path):
    """vLLM's rule: max_new_tokens from --override-generation-config (or from --generation-config DIR) limits every
    request, max_tokens sent or not; the model's own file only gives the default."""
    async def main(**options):
        llm = AsyncLLM(tuned, **options)
        try:
            async with asgi_client(create_app(llm, ServerSettings("tuned"))) as client:
                counts = []
                for path, body in (("/v1/completions", {"prompt": PROMPT}),
                                   ("/v1/completions", {"prompt": PROMPT, "max_tokens": 9}),
                                   ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                             "max_tokens": 9})):
                    r = await client.post(path, json={"model": "tuned", "ignore_eos": True, **body})
                    counts.append(r.json()["usage"]["completion_tokens"])
                return counts
        finally:
            llm.shutdown()

    assert asyncio.run(main()) == [16, 9, 9]                        # the model's own max_new_tokens: a default
    assert asyncio.run(main(override_generation_config={"max_new_tokens": 3})) == [3, 3, 3]
    (tmp_path / "generation_config.json").write_text(json.dumps({"max_new_tokens": 4}))
    assert asyncio.run(main(generation_config=str(tmp_path))) == [4, 4, 4]
