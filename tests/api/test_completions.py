"""/v1/completions against independent oracles: the HF tokenizer for token counts, the HF model for greedy
tokens and logprobs, and the contract's own definitions (prompt-major order, echo, best_of, stops)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch
from api_helpers import TIMEOUT, hf_greedy, hf_logprobs, strict_json

PROMPT = "def add(a, b):"


def _greedy(client, model, prompt, max_tokens, **extra):
    extra = {"ignore_eos": True, "return_token_ids": True, **extra}
    return client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                     extra_body=extra)


def test_greedy_tokens_and_text_match_hf(server, client, hf_model, hf_tokenizer):
    prompt_ids = hf_tokenizer(PROMPT).input_ids
    r = _greedy(client, server.model, PROMPT, 12)
    choice = r.choices[0].model_dump()
    assert choice["prompt_token_ids"] == prompt_ids
    assert choice["token_ids"] == hf_greedy(hf_model, prompt_ids, 12)
    assert hf_tokenizer.decode(choice["token_ids"]) == r.choices[0].text
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(prompt_ids), 12,
                                                                                       len(prompt_ids) + 12)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == server.model


def test_four_prompt_forms_are_prompt_major(server, client, hf_tokenizer):
    texts = ["The quick brown fox", "import os"]
    ids = [hf_tokenizer(t).input_ids for t in texts]
    single = [_greedy(client, server.model, t, 5).choices[0].text for t in texts]
    forms = {"string": (texts[0], [single[0]]), "strings": (texts, single), "ids": (ids[0], [single[0]]),
             "id lists": (ids, single)}
    for name, (prompt, expected) in forms.items():
        r = _greedy(client, server.model, prompt, 5, n=2)
        assert [c.index for c in r.choices] == list(range(2 * len(expected))), name
        assert [c.text for c in r.choices] == [t for t in expected for _ in range(2)], name
        prompt_tokens = sum(len(i) for i in ids[:len(expected)])
        assert r.usage.prompt_tokens == prompt_tokens, name            # once per prompt, not per choice
        assert r.usage.completion_tokens == 2 * len(expected) * 5, name
        assert r.usage.total_tokens == prompt_tokens + 2 * len(expected) * 5, name


def test_max_tokens_default_null_and_alias(server, client):
    base = {"model": server.model, "prompt": PROMPT, "temperature": 0, "ignore_eos": True}
    assert server.post("/v1/completions", base).json()["usage"]["completion_tokens"] == 16
    r = server.post("/v1/completions", {**base, "max_tokens": None}).json()
    assert r["usage"]["completion_tokens"] == 1024 - r["usage"]["prompt_tokens"]   # until the context is full
    assert r["choices"][0]["finish_reason"] == "length"
    r = server.post("/v1/completions", {**base, "max_completion_tokens": 7}).json()
    assert r["usage"]["completion_tokens"] == 7
    r = server.post("/v1/completions", {**base, "max_tokens": 3, "max_completion_tokens": 7})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"


def test_logprobs_are_the_raw_model_distribution(server, client, hf_model, hf_tokenizer):
    prompt_ids = hf_tokenizer(PROMPT).input_ids
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=6, temperature=0.7, seed=5,
                                  logprobs=3, echo=True, extra_body={"ignore_eos": True, "return_token_ids": True})
    choice = r.choices[0]
    lp = choice.logprobs
    all_ids = prompt_ids + choice.model_dump()["token_ids"]
    assert len(lp.tokens) == len(all_ids) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None     # the first prompt token
    oracle = hf_logprobs(hf_model, all_ids)          # temperature 0.7 must not change them
    for i in range(1, len(all_ids)):
        assert lp.token_logprobs[i] == pytest.approx(oracle[i - 1, all_ids[i]].item(), abs=2e-3)
        top = torch.topk(oracle[i - 1], 3)
        shown = lp.top_logprobs[i]
        assert 3 <= len(shown) <= 4
        assert sorted(shown.values(), reverse=True)[:3] == pytest.approx(top.values.tolist(), abs=2e-3)
        for token, value in zip(top.indices.tolist(), top.values.tolist()):
            text = hf_tokenizer.decode([token])
            if "\ufffd" not in text:
                assert shown[text] == pytest.approx(value, abs=2e-3)
    assert choice.text.startswith(PROMPT)


def test_logprobs_zero_gives_exactly_the_sampled_token(server, client):
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=5, temperature=1.0, seed=3,
                                  logprobs=0, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 5
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top == {token: value}


def test_text_offsets_index_the_text(server, client, hf_tokenizer):
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=1,
                                  echo=True, extra_body={"ignore_eos": True, "return_token_ids": True})
    choice = r.choices[0]
    ids = hf_tokenizer(PROMPT).input_ids + choice.model_dump()["token_ids"]
    offsets = choice.logprobs.text_offset
    checked = 0
    for i in range(len(ids)):
        before = hf_tokenizer.decode(ids[:i])
        if not before.endswith("\ufffd"):        # a character split over tokens has no offset of its own
            assert offsets[i] == len(before), i
            checked += 1
    assert checked >= len(PROMPT) // 4 and offsets == sorted(offsets)


def test_echo_is_the_prompt_with_its_special_tokens_and_offsets_index_it(server, hf_tokenizer):
    """Special-token text written in a text prompt counts its characters in text_offset (it counted none); a
    token-id prompt echoes its whole decode, special tokens included (it echoed nothing of them)."""
    base = {"model": server.model, "max_tokens": 0, "echo": True, "logprobs": 0}
    text = "Hi<|im_end|> there"
    ids = hf_tokenizer(text).input_ids
    end = ids.index(hf_tokenizer.convert_tokens_to_ids("<|im_end|>"))
    for prompt, echoed in ((text, text), (ids, text), ([0] * 5, "<|endoftext|>" * 5)):
        choice = strict_json(server.post("/v1/completions", {**base, "prompt": prompt}))["choices"][0]
        token_ids = prompt if isinstance(prompt, list) else ids
        assert choice["text"] == echoed
        offsets = choice["logprobs"]["text_offset"]
        assert offsets == [len(hf_tokenizer.decode(token_ids[:i])) for i in range(len(token_ids))]
        if echoed == text:
            assert offsets[end:end + 2] == [text.index("<"), text.index(" there")]


def test_logprob_tokens_are_json_safe_and_distinct(server):
    body = {"model": server.model, "prompt": "日本語のテキスト 😀🎉", "max_tokens": 8, "logprobs": 5, "echo": True,
            "temperature": 0, "ignore_eos": True}
    r = server.post("/v1/completions", body)
    lp = strict_json(r)["choices"][0]["logprobs"]
    assert any(t.startswith("bytes:\\x") for t in lp["tokens"])       # halves of multi-byte characters
    for top in lp["top_logprobs"][1:]:
        assert 5 <= len(top) <= 6                                       # distinct keys, none collapsed


def test_echo(server, client, hf_tokenizer):
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=0, echo=True)
    assert r.choices[0].text == PROMPT and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(hf_tokenizer(PROMPT).input_ids)
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    assert len(r.choices[0].logprobs.tokens) == len(hf_tokenizer(PROMPT).input_ids)
    ids = hf_tokenizer("import sys").input_ids
    plain = _greedy(client, server.model, ids, 4).choices[0].text
    echoed = _greedy(client, server.model, ids, 4, echo=True)
    assert echoed.choices[0].text == "import sys" + plain


def test_best_of_returns_the_highest_cumulative_logprob(server, client):
    common = dict(model=server.model, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=11,
                  extra_body={"ignore_eos": True})
    candidates = client.completions.create(n=4, logprobs=0, **common)   # the same 4 draws: seeds (11, j)
    scores = [(sum(c.logprobs.token_logprobs), c.text) for c in candidates.choices]
    best = [text for _, text in sorted(scores, key=lambda s: -s[0])[:2]]
    r = client.completions.create(n=2, best_of=4, **common)
    assert [c.text for c in r.choices] == best and [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].logprobs is None                                   # not asked for
    assert r.usage.completion_tokens == 4 * 6                              # every candidate ran


def test_seed_and_n(server, client):
    common = dict(model=server.model, prompt=PROMPT, max_tokens=12, temperature=1.0, extra_body={"ignore_eos": True})
    a = client.completions.create(n=3, seed=7, **common)
    b = client.completions.create(n=3, seed=7, **common)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1                            # each choice has its own seed
    assert client.completions.create(n=1, seed=7, **common).choices[0].text == a.choices[0].text
    assert client.completions.create(n=1, seed=8, **common).choices[0].text != a.choices[0].text


def test_stop_strings(server, client):
    full = _greedy(client, server.model, PROMPT, 30).choices[0].text
    stop = full[12:15]
    at = full.find(stop)
    r = _greedy(client, server.model, PROMPT, 30, stop=[stop, "\x00never"])
    assert r.choices[0].text == full[:at] and r.choices[0].finish_reason == "stop"
    r = _greedy(client, server.model, PROMPT, 30, stop=stop, include_stop_str_in_output=True)
    assert r.choices[0].text == full[:at + len(stop)]


def test_stop_token_ids_and_eos(server, client, hf_tokenizer):
    ids = _greedy(client, server.model, PROMPT, 20).choices[0].model_dump()["token_ids"]
    token = ids[8]
    k = ids.index(token)
    r = _greedy(client, server.model, PROMPT, 20, stop_token_ids=[token]).choices[0]
    assert r.model_dump()["token_ids"] == ids[:k + 1] and r.finish_reason == "stop"
    assert hf_tokenizer.decode(ids[:k]) == r.text
    eos = hf_tokenizer.eos_token_id
    body = dict(model=server.model, prompt=PROMPT, max_tokens=10, temperature=0, logit_bias={str(eos): 100})
    r = server.post("/v1/completions", body).json()
    assert r["usage"]["completion_tokens"] == 1 and r["choices"][0]["finish_reason"] == "stop"
    r = server.post("/v1/completions", {**body, "min_tokens": 5}).json()
    assert r["usage"]["completion_tokens"] == 6 and r["choices"][0]["finish_reason"] == "stop"
    r = server.post("/v1/completions", {**body, "ignore_eos": True, "max_tokens": 3}).json()
    assert r["usage"]["completion_tokens"] == 3 and r["choices"][0]["text"] == ""
    r = server.post("/v1/completions", {**body, "ignore_eos": True, "max_tokens": 3, "skip_special_tokens": False})
    assert r.json()["choices"][0]["text"] == hf_tokenizer.eos_token * 3


def test_logit_bias_forces_a_token(server, client, hf_tokenizer):
    token = hf_tokenizer(" the").input_ids[-1]
    r = server.post("/v1/completions", {"model": server.model, "prompt": PROMPT, "max_tokens": 5,
                                        "temperature": 1.0, "seed": 1, "logit_bias": {str(token): 100},
                                        "return_token_ids": True}).json()
    assert r["choices"][0]["token_ids"] == [token] * 5


def test_filters_that_leave_one_token_equal_greedy(server, client):
    greedy = _greedy(client, server.model, PROMPT, 10).choices[0].text
    sampled = [client.completions.create(model=server.model, prompt=PROMPT, max_tokens=10, temperature=1.0,
                                         seed=s, extra_body={"ignore_eos": True, **extra}).choices[0].text
               for s, extra in [(1, {"top_k": 1}), (2, {"min_p": 1.0}), (3, {"top_p": 1e-9}), (4, {})]]
    assert sampled[:3] == [greedy] * 3
    assert sampled[3] != greedy


def test_penalties_match_their_definition(server, client, hf_model, hf_tokenizer):
    prompt_ids = hf_tokenizer(PROMPT).input_ids
    penalties = dict(presence=0.8, frequency=0.6, repetition=1.4)
    expected = hf_greedy(hf_model, prompt_ids, 16, **penalties)
    assert expected != hf_greedy(hf_model, prompt_ids, 16)                # they change something here
    r = _greedy(client, server.model, PROMPT, 16, repetition_penalty=1.4, presence_penalty=0.8,
                frequency_penalty=0.6)
    assert r.choices[0].model_dump()["token_ids"] == expected


def test_context_length_behaviour(server, client):
    prompt = [5] * 1000
    base = {"model": server.model, "prompt": prompt, "max_tokens": 100, "ignore_eos": True, "temperature": 0}
    r = server.post("/v1/completions", base).json()            # truncate is the default
    assert r["usage"] == {"prompt_tokens": 1000, "completion_tokens": 24, "total_tokens": 1024,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    assert r["choices"][0]["finish_reason"] == "length"
    r = server.post("/v1/completions", {**base, "context_length_exceeded_behavior": "error"})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "This model's maximum context length is 1024 tokens. However, you requested 1100 tokens "
                   "(1000 in the prompt, 100 in the completion). Please reduce the length of the prompt or "
                   "completion.",
        "type": "invalid_request_error", "param": "prompt", "code": "context_length_exceeded"}
    for behaviour in ("truncate", "error"):
        body = {**base, "prompt": [5] * 1024, "context_length_exceeded_behavior": behaviour}
        r = server.post("/v1/completions", body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = server.post("/v1/completions", {**base, "context_length_exceeded_behavior": "clip"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "context_length_exceeded_behavior"


def test_return_token_ids_and_usage_agree_with_the_tokenizer(server, client, hf_tokenizer):
    prompts = ["café naïve", "for i in range(10):"]
    r = client.completions.create(model=server.model, prompt=prompts, max_tokens=9, temperature=0.9, seed=2,
                                  extra_body={"return_token_ids": True})
    assert r.usage.prompt_tokens == sum(len(hf_tokenizer(p).input_ids) for p in prompts)
    generated = 0
    for p, choice in zip(prompts, r.choices):
        data = choice.model_dump()
        assert data["prompt_token_ids"] == hf_tokenizer(p).input_ids
        generated += len(data["token_ids"])
        assert hf_tokenizer.decode(data["token_ids"], skip_special_tokens=True) == choice.text
        assert (choice.finish_reason == "length") == (len(data["token_ids"]) == 9)
    assert r.usage.completion_tokens == generated and not math.isnan(r.usage.total_tokens)


def test_any_integer_is_a_seed(server):
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 6, "temperature": 1.0, "ignore_eos": True}
    texts = []
    for seed in (-1, 0, 2**63, 2**64 + 5, -(2**70)):
        first = server.post("/v1/completions", {**body, "seed": seed}).json()["choices"][0]["text"]
        assert server.post("/v1/completions", {**body, "seed": seed}).json()["choices"][0]["text"] == first
        texts.append(first)
    assert len(set(texts)) > 1


def test_a_trailing_slash_serves_the_route(server):
    """Not a bare 307 redirect (which clients do not follow for a POST): the same route answers."""
    body = {"model": server.model, "prompt": "def f(x):", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    slashed, plain = server.post("/v1/completions/", body), server.post("/v1/completions", body)
    assert slashed.status_code == 200, slashed.text
    assert slashed.json()["choices"][0]["text"] == plain.json()["choices"][0]["text"]
    r = server.post("/v1/chat/completions/", {"model": server.model, "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    models = httpx.get(f"{server.url}/v1/models/", headers=server.headers(), timeout=TIMEOUT)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == server.model


def test_a_bos_the_tokenizer_added_has_no_width_in_the_echo():
    """The default model's tokenizer adds <|endoftext|> before a text prompt: the echo is the text as sent, so
    that token sits at offset 0 with no width; a token-id prompt that starts with it echoes it."""
    from api.logprobs import echo_offsets, echo_text
    from api.sampling import Prompt
    from engine import DEFAULT_MODEL
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer(DEFAULT_MODEL, [])
    text = "Hi<|im_end|> there"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids[:1], skip_special_tokens=False) == "<|endoftext|>"
    assert echo_text(tokenizer, Prompt(ids, text)) == text
    assert echo_offsets(tokenizer, Prompt(ids, text)) == [0, 0, 1, 2, 12]
    assert echo_text(tokenizer, Prompt(ids)) == "<|endoftext|>" + text
    assert echo_offsets(tokenizer, Prompt(ids)) == [0, 13, 14, 15, 25]


def test_allowed_token_ids_and_bad_words(server, client, hf_model, hf_tokenizer):
    # vLLM's two extensions: greedy decoding restricted to allowed_token_ids is transformers' greedy among them;
    # a bad word's tokens never appear in a row, on either endpoint.
    prompt_ids = hf_tokenizer(PROMPT).input_ids
    free = _greedy(client, server.model, PROMPT, 12).choices[0].model_dump()["token_ids"]
    allowed = sorted({t for t in range(3, 300, 11)} - set(free))
    r = _greedy(client, server.model, PROMPT, 12, allowed_token_ids=allowed)
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False,
                                     eos_token_id=None, pad_token_id=hf_tokenizer.pad_token_id,
                                     prefix_allowed_tokens_fn=lambda batch, ids: allowed)[0, len(prompt_ids):]
    assert r.choices[0].model_dump()["token_ids"] == expected.tolist()
    word = hf_tokenizer.decode(free[1:3])
    banned = hf_tokenizer.encode(word.lstrip(), add_special_tokens=False)
    for generated in (_greedy(client, server.model, PROMPT, 12, bad_words=[word]).choices[0].model_dump(),
                      client.chat.completions.create(
                          model=server.model, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                          temperature=0, extra_body={"bad_words": [word], "return_token_ids": True,
                                                     "ignore_eos": True}).choices[0].model_dump()):
        ids = generated["token_ids"]
        assert not any(ids[i:i + len(banned)] == banned for i in range(len(ids)))
    assert _greedy(client, server.model, PROMPT, 12, bad_words=[word]).choices[0].model_dump()["token_ids"] != free


@pytest.mark.parametrize("extra, param", [({"allowed_token_ids": [10**6]}, "allowed_token_ids"),
                                          ({"allowed_token_ids": []}, "allowed_token_ids"),
                                          ({"bad_words": [""]}, "bad_words[0]")])
def test_allowed_token_ids_and_bad_words_refused(server, client, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        _greedy(client, server.model, PROMPT, 4, **extra)
    assert info.value.body["param"] == param
