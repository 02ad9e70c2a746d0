"""Sampling through the engine: seeds, filters, penalties, logit_bias and logprobs against transformers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from test_models_vs_hf import PROMPTS, assert_all_blocks_free, hf_greedy

from engine import LLM, SamplingParams
from llm_kernels.reference.sampling import apply_penalties


@pytest.fixture(scope="module")
def llm(llama_path) -> LLM:
    return LLM(llama_path, block_size=8)


@pytest.fixture(scope="module")
def hf(llama_path):
    return transformers.AutoModelForCausalLM.from_pretrained(llama_path, dtype=torch.float32).eval()


def test_seeded_sampling_is_independent_of_the_batch(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, seed=1234, ignore_eos=True)
    alone = llm.generate(PROMPTS[1], params)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=0.7, max_tokens=30, ignore_eos=True)] * 6
    batch = llm.generate(PROMPTS[:7], others[:1] + [params] + others[1:])
    assert batch[1].outputs[0].token_ids == alone
    shuffled = llm.generate([PROMPTS[5], PROMPTS[1], PROMPTS[0]], [others[0], params, others[0]])
    assert shuffled[1].outputs[0].token_ids == alone
    assert_all_blocks_free(llm)


def test_unseeded_requests_follow_the_engine_seed(llama_path):
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    runs = [LLM(llama_path, seed=seed).generate(PROMPTS[:3], params) for seed in (7, 7, 8)]
    tokens = [[o.outputs[0].token_ids for o in run] for run in runs]
    assert tokens[0] == tokens[1]
    assert tokens[0] != tokens[2]


def test_n_choices_are_seeded_per_choice(llm):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=99, ignore_eos=True)
    out = llm.generate(PROMPTS[3], params)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    choices = [tuple(c.token_ids) for c in out.outputs]
    assert len(set(choices)) == 4
    # Choice 0 of a seeded request is the request with n=1 and the same seed.
    single = llm.generate(PROMPTS[3], SamplingParams(temperature=1.0, max_tokens=16, seed=99, ignore_eos=True))
    assert single[0].outputs[0].token_ids == list(choices[0])


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_n_choices_share_the_prompt_blocks(llama_path, prefix_caching):
    llm = LLM(llama_path, block_size=4, enable_prefix_caching=prefix_caching)
    prompt = PROMPTS[4]
    params = SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True)
    out = llm.generate(prompt, params)[0]
    full_blocks = (len(out.prompt_token_ids) - 1) // 4
    assert llm.engine.stats().prefix_cache_hits == 0 == out.num_cached_tokens     # shared, not found in a cache
    expected = hf_greedy(llama_path, prompt)[:8]
    assert all(c.token_ids == expected for c in out.outputs)
    assert_all_blocks_free(llm)
    # One choice at a time: the later ones find the first's blocks in the cache, which is no hit of the request's.
    one_at_a_time = LLM(llama_path, block_size=4, enable_prefix_caching=prefix_caching, max_num_seqs=1)
    alone = one_at_a_time.generate(prompt, params)[0]
    assert one_at_a_time.engine.stats().prefix_cache_hits == 0 == alone.num_cached_tokens
    assert all(c.token_ids == expected for c in alone.outputs)
    # Another request for the same prompt: with prefix caching on, each of its choices finds the first request's
    # blocks in the cache (cache hits); without it, they share their first choice's blocks again (no hits).
    again = llm.generate(prompt, params)[0]
    cached = full_blocks * 4 if prefix_caching else 0
    assert (llm.engine.stats().prefix_cache_hits, again.num_cached_tokens) == (3 * cached, cached)
    assert all(c.token_ids == expected for c in again.outputs)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_k=1),
    SamplingParams(temperature=2.0, top_p=1e-6),
    SamplingParams(temperature=1.0, min_p=1.0),
])
def test_filters_that_leave_one_token_are_greedy(llm, llama_path, params):
    params.max_tokens, params.ignore_eos, params.seed = 24, True, 5
    outputs = llm.generate(PROMPTS[:4], params)
    assert [o.outputs[0].token_ids for o in outputs] == [hf_greedy(llama_path, p) for p in PROMPTS[:4]]


def test_logit_bias_forces_a_token(llm):
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=1.0, max_tokens=5, logit_bias={17: 100},
                                                  ignore_eos=True))[0]
    assert out.outputs[0].token_ids == [17] * 5


def test_penalties_match_transformers_logits(llm, hf, llama_path):
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, presence_penalty=0.8,
                            frequency_penalty=0.5, repetition_penalty=1.4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama_path)
    for prompt in PROMPTS[:3]:
        ids = tokenizer(prompt)["input_ids"]
        expected: list[int] = []
        for _ in range(16):     # the oracle: transformers' logits, the penalty definition, argmax
            with torch.no_grad():
                logits = hf(torch.tensor([ids + expected])).logits[:, -1].float()
            pad = [-1]
            logits = apply_penalties(logits, torch.tensor([ids]), torch.tensor([expected or pad]),
                                     torch.tensor([0.8]), torch.tensor([0.5]), torch.tensor([1.4]))
            expected.append(int(logits.argmax()))
        assert llm.generate(prompt, params)[0].outputs[0].token_ids == expected
    assert expected != hf_greedy(llama_path, prompt)[:16]     # the penalties did change something


def test_logprobs_are_the_raw_model_distribution(llm, hf, llama_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama_path)
    prompt = PROMPTS[3]
    params = SamplingParams(temperature=0.9, top_k=5, max_tokens=6, seed=3, logprobs=3, prompt_logprobs=2,
                            ignore_eos=True)
    out = llm.generate(prompt, params)[0]
    choice = out.outputs[0]
    ids = out.prompt_token_ids + choice.token_ids
    with torch.no_grad():
        reference = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    n_prompt = len(out.prompt_token_ids)
    assert len(choice.logprobs) == 6
    total = 0.0
    for i, (token, entry) in enumerate(zip(choice.token_ids, choice.logprobs)):
        row = reference[n_prompt - 1 + i]
        top = row.topk(3)
        assert list(entry)[:3] == top.indices.tolist()
        assert token in entry and len(entry) in (3, 4)
        for tid, lp in entry.items():
            assert lp.logprob == pytest.approx(row[tid].item(), abs=1e-4)
            assert lp.rank == int((row > row[tid]).sum()) + 1
            assert lp.decoded_token == tokenizer.decode([tid])
        total += row[token].item()
    assert choice.cumulative_logprob == pytest.approx(total, abs=1e-3)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == n_prompt
    for j in range(1, n_prompt):
        entry, row = out.prompt_logprobs[j], reference[j - 1]
        assert ids[j] in entry and list(entry)[:2] == row.topk(2).indices.tolist()
        assert entry[ids[j]].logprob == pytest.approx(row[ids[j]].item(), abs=1e-4)


def test_prompt_logprobs_with_chunked_prefill_and_cache(llama_path):
    llm = LLM(llama_path, block_size=4, max_num_batched_tokens=5)
    prompt = PROMPTS[4]
    llm.generate(prompt, SamplingParams(max_tokens=1))            # fills the prefix cache
    params = SamplingParams(max_tokens=0, prompt_logprobs=0)
    out = llm.generate(prompt, params)[0]
    assert out.outputs[0].token_ids == [] and out.outputs[0].finish_reason == "length"
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    plain = LLM(llama_path, enable_prefix_caching=False).generate(prompt, params)[0]
    for ours, theirs in zip(out.prompt_logprobs[1:], plain.prompt_logprobs[1:]):
        assert ours.keys() == theirs.keys()
        for tid in ours:
            assert ours[tid].logprob == pytest.approx(theirs[tid].logprob, abs=1e-4)
    assert_all_blocks_free(llm)


def test_logprobs_zero_gives_the_sampled_token_only(llm):
    out = llm.generate(PROMPTS[0], SamplingParams(max_tokens=4, logprobs=0, seed=1, ignore_eos=True))[0]
    choice = out.outputs[0]
    assert [list(entry) for entry in choice.logprobs] == [[t] for t in choice.token_ids]


@pytest.mark.parametrize("prompt", ["x", PROMPTS[4]])
def test_streamed_prompt_logprobs_come_whole_with_n_choices(llama_path, prompt):
    # A small token budget chunks the prompt; the other choices must not report before the prompt's logprobs
    # are complete, and a one-token prompt has just its leading None.
    llm = LLM(llama_path, block_size=4, max_num_batched_tokens=6)
    engine = llm.engine
    engine.add_request("r", prompt, SamplingParams(n=3, max_tokens=3, prompt_logprobs=1, seed=0), stream=True)
    sent = []
    while engine.has_unfinished_requests():
        sent += [o.prompt_logprobs for o in engine.step() if o.prompt_logprobs is not None]
    (whole,) = sent
    assert len(whole) == len(engine.tokenizer.encode(prompt)) and whole[0] is None
    assert_all_blocks_free(llm)


def test_extreme_but_valid_parameters(llm, llama_path):
    """top_k past an int32 keeps every token (it once killed the engine loop); a temperature so small that
    logits / T overflows float32 is greedy, the limit of the distribution (it once drew NaN garbage)."""
    prompts = PROMPTS[:3]
    greedy = [hf_greedy(llama_path, p)[:8] for p in prompts]
    for temperature in (1e-6, 1e-38, 1e-44):
        params = SamplingParams(temperature=temperature, max_tokens=8, ignore_eos=True, seed=3)
        assert params.greedy
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == greedy
    assert not SamplingParams(temperature=1e-5).greedy
    huge, off = (SamplingParams(temperature=1.0, top_k=k, max_tokens=8, ignore_eos=True, seed=4)
                 for k in (2 ** 31, -1))
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, huge)] == \
        [o.outputs[0].token_ids for o in llm.generate(prompts, off)]
    assert_all_blocks_free(llm)


def test_a_repetition_penalty_near_zero_matches_the_exact_computation(llm, hf, llama_path):
    """Dividing by 1e-44 overflows float32 (inf logits, NaN probabilities); the oracle is the penalty's definition
    in float64 on transformers' logits, argmax (a seen token with a positive logit wins over all others)."""
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, repetition_penalty=1e-44)
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama_path)
    changed = 0
    for prompt in PROMPTS[:4]:
        ids = tokenizer(prompt)["input_ids"]
        expected: list[int] = []
        for _ in range(6):
            with torch.no_grad():
                logits = hf(torch.tensor([ids + expected])).logits[:, -1].double()
            logits = apply_penalties(logits, torch.tensor([ids]), torch.tensor([expected or [-1]]),
                                     torch.zeros(1), torch.zeros(1), torch.tensor([1e-44], dtype=torch.float64))
            expected.append(int(logits.argmax()))
        assert llm.generate(prompt, params)[0].outputs[0].token_ids == expected
        changed += expected != hf_greedy(llama_path, prompt)[:6]
    assert changed                                               # the penalty did decide something


def test_each_request_parameter_reaches_the_kernel_as_its_own_contiguous_row(llm, monkeypatch):
    """The engine hands its `sample` kernel one [B] tensor per parameter, each contiguous (no copy in the Triton
    wrapper), row i holding request i's settings."""
    seen = []
    sampler = llm.engine.runner.sampler
    kernels = sampler.kernels
    monkeypatch.setattr(sampler, "kernels",
                        dataclasses.replace(kernels, sample=lambda *a: seen.append(a) or kernels.sample(*a)))
    params = [SamplingParams(temperature=0.5, top_k=7, top_p=0.8, min_p=0.1, max_tokens=1, seed=3),
              SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, max_tokens=1, seed=-2)]
    llm.generate(PROMPTS[:2], params)
    logits, temperature, top_k, top_p, min_p, seeds, positions = seen[-1]
    assert all(t.is_contiguous() and t.shape == (2,) for t in seen[-1][1:])
    assert temperature.tolist() == [0.5, 1.5] and top_k.tolist() == [7, 0]
    assert top_p.tolist() == pytest.approx([0.8, 1.0]) and min_p.tolist() == pytest.approx([0.1, 0.0])
    assert seeds.tolist() == [3, -2] and (top_k.dtype, seeds.dtype) == (torch.int32, torch.int64)


def _hf_generate(hf, llm, prompt: str, new_tokens: int, **kwargs) -> list[int]:
    """transformers' greedy continuation of `prompt` with its own logits processors (`kwargs`), in float32."""
    ids = llm.get_tokenizer()(prompt)["input_ids"]
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                          pad_token_id=llm.get_tokenizer().pad_token_id, **kwargs)
    return out[0, len(ids):].tolist()


def test_allowed_token_ids_match_transformers_prefix_constraint(llm, hf):
    # The allowed tokens are those greedy decoding picks least: every step must choose among them instead.
    unconstrained = set(llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
                        [0].outputs[0].token_ids)
    allowed = [t for t in range(5, 200, 7) if t not in unconstrained]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, allowed_token_ids=allowed)
    got = llm.generate(PROMPTS[1], params)[0].outputs[0].token_ids
    assert got == _hf_generate(hf, llm, PROMPTS[1], 16, prefix_allowed_tokens_fn=lambda batch, ids: allowed)
    sampled = llm.generate(PROMPTS[:3], SamplingParams(temperature=1.5, max_tokens=24, ignore_eos=True, seed=3,
                                                        allowed_token_ids=allowed[:3]))
    assert all(set(o.outputs[0].token_ids) <= set(allowed[:3]) for o in sampled)


def test_bad_words_match_transformers_bad_words_ids(llm, hf):
    # Ban words whose tokens greedy decoding produces: as transformers' bad_words_ids (the same rule, on a prompt
    # whose own tokens cannot complete any of them), the last token of each is never drawn after the others.
    tokenizer = llm.get_tokenizer()
    free = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0].outputs[0]
    words = [tokenizer.decode(free.token_ids[2:4]), tokenizer.decode(free.token_ids[9:10])]
    sequences = llm.engine.tokenizer.word_token_ids(words)
    assert free.token_ids[2:4] in sequences or free.token_ids[9:10] in sequences
    for word in words:
        assert llm.engine.tokenizer.word_token_ids([word])[0] == tokenizer.encode(word.lstrip(),
                                                                                  add_special_tokens=False)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, bad_words=words)
    got = llm.generate(PROMPTS[0], params)[0].outputs[0].token_ids
    assert got != free.token_ids
    assert got == _hf_generate(hf, llm, PROMPTS[0], 24, bad_words_ids=sequences)
    for ids in sequences:
        assert not any(got[i:i + len(ids)] == ids for i in range(len(got)))


def test_detokenize_false_keeps_the_tokens_and_no_text(llm):
    prompts = PROMPTS[:2]
    text = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12))
    ids = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, detokenize=False))
    for a, b in zip(text, ids):
        assert a.outputs[0].text and b.outputs[0].text == ""
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


@pytest.mark.parametrize("fields, message", [
    ({"allowed_token_ids": []}, "allowed_token_ids must be None or a non-empty list"),
    ({"allowed_token_ids": [-1]}, "allowed_token_ids must be None or a non-empty list"),
    ({"bad_words": [""]}, "bad_words must be non-empty strings"),
    ({"detokenize": False, "stop": ["\n"]}, "stop strings need detokenize=True"),
    ({"detokenize": 0}, "detokenize must be True or False"),
    ({"logprobs": True}, "logprobs must be None or an integer"),          # a bool is no count: it crashed a step
    ({"prompt_logprobs": True}, "prompt_logprobs must be None or an integer"),
    ({"temperature": None}, "temperature must be a number"),
    ({"min_p": "0.1"}, "min_p must be a number"),
    ({"stop": 5}, "stop must be None, a string or a list of strings"),
    ({"stop_token_ids": [1.7]}, "stop_token_ids must be None or a list of token ids"),
    ({"logit_bias": [1]}, "logit_bias must be None or a dict"),
    ({"logit_bias": {1: None}}, "logit_bias must be None or a dict"),
    ({"structured_outputs": {"bogus": 1}}, "structured_outputs: "),
    ({"structured_outputs": {"choice": "abc"}}, "choice must be a non-empty list"),
    ({"temperature": 10**400}, "temperature must be a number"),                   # no float holds it
    ({"logit_bias": {5: 10**400}}, "logit_bias must be None or a dict"),
    ({"temperature": 1e39}, "temperature must be >= 0 and finite as the samplers' float32 holds it"),
])
def test_vllm_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**fields)


def test_allowed_token_ids_outside_the_vocabulary_are_refused(llm):
    with pytest.raises(ValueError, match=r"allowed_token_ids has token ids outside the vocabulary"):
        llm.generate(PROMPTS[0], SamplingParams(allowed_token_ids=[1, 10**6]))
    assert_all_blocks_free(llm)


@pytest.mark.parametrize("fields, message", [
    ({"min_tokens": 3, "allowed_token_ids": [0]}, "min_tokens leaves no token to draw"),
    ({"min_tokens": 3, "stop_token_ids": list(range(1, 400))}, "min_tokens leaves no token to draw"),
    ({"allowed_token_ids": [17], "bad_words": ["<one token 17>"]}, "bad_words leave no token to draw"),
    ({"min_tokens": 3, "allowed_token_ids": [0, 17], "bad_words": ["<one token 17>"]}, "min_tokens leaves no token"),
], ids=["only-eos-allowed", "every-token-stops", "every-allowed-token-bad", "bad-or-stop"])
def test_bans_that_leave_nothing_to_draw_are_refused(llm, fields, message):
    """Before min_tokens, EOS and the stop tokens cannot be drawn, one-token bad words never: where nothing else
    is left the request is a ValueError (it drew EOS anyway, greedy, or a token past the vocabulary that crashed
    the next step)."""
    assert llm.get_tokenizer().eos_token_id == 0 and llm.engine.model_config.vocab_size == len(llm.get_tokenizer())
    word = llm.get_tokenizer().decode([17])
    assert llm.engine.tokenizer.word_token_ids([word])[0] == [17]
    fields = {**fields, "bad_words": [word]} if "bad_words" in fields else fields
    with pytest.raises(ValueError, match=message):
        llm.generate(PROMPTS[0], SamplingParams(max_tokens=5, **fields))
    out = llm.generate(PROMPTS[0], SamplingParams(min_tokens=3, max_tokens=5, ignore_eos=True, seed=1,
                                                  allowed_token_ids=[0, 5]))[0].outputs[0]
    assert set(out.token_ids) <= {0, 5} and len(out.token_ids) == 5
    assert_all_blocks_free(llm)


def test_a_row_its_bans_empty_on_the_way_draws_eos(llm):
    """Bans add_request cannot foresee (allowed tokens a grammar excludes) leave a row nothing: it draws EOS, which
    ends it, not a token it banned (it drew a token past the vocabulary, or one of the banned)."""
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=1.0, seed=1, max_tokens=5, allowed_token_ids=[5, 6],
                                                  structured_outputs={"choice": ["yes", "no"]}))[0].outputs[0]
    assert (out.token_ids, out.finish_reason) == ([0], "stop")
    assert_all_blocks_free(llm)
