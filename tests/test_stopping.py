"""When sequences stop, what their text is, and how streamed deltas add up to it."""

from __future__ import annotations

import pytest
from test_models_vs_hf import PROMPTS, assert_all_blocks_free

from engine import DEFAULT_MODEL, LLM, SamplingParams
from engine.tokenizer import PromptTooLongError, Tokenizer


@pytest.fixture(scope="module")
def llm(llama_path) -> LLM:
    return LLM(llama_path, max_model_len=96)


def greedy_text(llm: LLM, prompt: str, **kw) -> tuple[str, list[int]]:
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, **kw)
    choice = llm.generate(prompt, params)[0].outputs[0]
    return choice.text, choice.token_ids


def readable_substring(text: str, start: int, length: int = 3) -> str:
    """A substring of `text` at or after `start` made of ordinary characters, whose first occurrence is there."""
    for i in range(start, len(text) - length):
        piece = text[i:i + length]
        if "\ufffd" not in piece and piece.isprintable() and text.find(piece) == i:
            return piece
    raise AssertionError(f"no usable substring in {text!r}")


@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_stop_string_cuts_the_text(llm, prompt):
    text, _ = greedy_text(llm, prompt)
    stop = readable_substring(text, 6)
    at = text.find(stop)
    choice = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                                 stop=["never-there", stop]))[0].outputs[0]
    assert choice.text == text[:at]
    assert choice.finish_reason == "stop" and choice.stop_reason == stop
    kept = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=stop,
                                               include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == text[:at + len(stop)]


def test_earliest_stop_string_wins(llm):
    text, _ = greedy_text(llm, PROMPTS[0])
    late, early = readable_substring(text, 20), readable_substring(text, 8)
    choice = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                                     stop=[late, early]))[0].outputs[0]
    assert choice.text == text[:text.find(early)] and choice.stop_reason == early


def test_stop_token_ids(llm):
    text, tokens = greedy_text(llm, PROMPTS[1])
    stop_id = tokens[5]
    first = tokens.index(stop_id)
    choice = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                                     stop_token_ids=[stop_id]))[0].outputs[0]
    assert choice.token_ids == tokens[:first + 1]
    assert choice.finish_reason == "stop" and choice.stop_reason == stop_id
    assert choice.text == llm.get_tokenizer().decode(tokens[:first], skip_special_tokens=True)
    kept = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                                   stop_token_ids=[stop_id], include_stop_str_in_output=True))
    assert kept[0].outputs[0].text == llm.get_tokenizer().decode(tokens[:first + 1], skip_special_tokens=True)


def test_eos_stops_unless_ignored_and_min_tokens_suppresses_it(llm):
    eos = llm.get_tokenizer().eos_token_id
    force_eos = {eos: 100.0}
    choice = llm.generate(PROMPTS[0], SamplingParams(max_tokens=10, logit_bias=force_eos))[0].outputs[0]
    assert choice.token_ids == [eos] and choice.text == "" and choice.finish_reason == "stop"
    choice = llm.generate(PROMPTS[0], SamplingParams(max_tokens=10, logit_bias=force_eos, min_tokens=3,
                                                     seed=0))[0].outputs[0]
    assert len(choice.token_ids) == 4 and eos not in choice.token_ids[:3] and choice.token_ids[3] == eos
    choice = llm.generate(PROMPTS[0], SamplingParams(max_tokens=10, logit_bias=force_eos,
                                                     ignore_eos=True))[0].outputs[0]
    assert choice.token_ids == [eos] * 10 and choice.finish_reason == "length"
    for skip, text in ((True, ""), (False, llm.get_tokenizer().eos_token)):     # EOS's text, as vLLM shows it
        choice = llm.generate(PROMPTS[0], SamplingParams(max_tokens=10, logit_bias=force_eos, skip_special_tokens=skip,
                                                         include_stop_str_in_output=True))[0].outputs[0]
        assert choice.token_ids == [eos] and choice.text == text and choice.stop_reason is None


def test_generation_configs_other_eos_ids_are_stop_tokens():
    """pycoder-tiny's generation_config.json ends on 0 (its tokenizer's EOS) or 2: as in vLLM, 2 is a stop token,
    the stop reason."""
    llm = LLM(DEFAULT_MODEL, max_num_seqs=2)
    assert llm.get_tokenizer().eos_token_id == 0
    for token, reason in ((0, None), (2, 2)):
        choice = llm.generate("x = ", SamplingParams(max_tokens=5, logit_bias={token: 100.0}))[0].outputs[0]
        assert choice.token_ids == [token] and choice.finish_reason == "stop" and choice.stop_reason == reason


def test_min_tokens_holds_back_stop_strings(llm):
    """As vLLM's: a stop string must end in text after the first min_tokens tokens (a stop token can only be drawn
    after them too)."""
    prompt = PROMPTS[2]
    text, tokens = greedy_text(llm, prompt)
    decode = llm.get_tokenizer().decode
    k = next(k for k in range(12, 1, -1)            # k tokens whose text ends in a character new to it
             if text.startswith(decode(tokens[:k])) and decode(tokens[:k])[-1].isalnum()
             and decode(tokens[:k])[-1] not in decode(tokens[:k])[:-1])
    head = decode(tokens[:k])
    stop = head[-1]                                 # the k-th token's last character
    choice = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=stop,
                                                 min_tokens=k))[0].outputs[0]
    at = text.find(stop, len(head))                 # only text from the (k + 1)-th token on may stop it
    assert len(choice.token_ids) > k
    assert choice.text == (text if at == -1 else text[:at])
    assert choice.finish_reason == ("length" if at == -1 else "stop")
    earlier = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=stop,
                                                  min_tokens=k - 1))[0].outputs[0]
    assert earlier.text == head[:-1] and earlier.finish_reason == "stop"     # the k-th token may stop it


def test_max_tokens_and_the_end_of_the_context(llm):
    prompt = PROMPTS[4]                      # 51 tokens
    n_prompt = len(llm.get_tokenizer()(prompt)["input_ids"])
    assert n_prompt < 96
    choice = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=7, ignore_eos=True))[0].outputs[0]
    assert len(choice.token_ids) == 7 and choice.finish_reason == "length"
    for max_tokens in (None, 500):
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        choice = llm.generate(prompt, params)[0].outputs[0]
        assert len(choice.token_ids) == 96 - n_prompt and choice.finish_reason == "length"
    with pytest.raises(ValueError, match="context length is 96"):
        llm.generate("x " * 200, SamplingParams())
    assert_all_blocks_free(llm)


def stream(llm: LLM, prompt: str, params: SamplingParams) -> tuple[list[str], list[int], str | None]:
    engine = llm.engine
    engine.add_request("stream-test", prompt, params, stream=True)
    deltas, tokens, reason = [], [], None
    while engine.has_unfinished_requests():
        for output in engine.step():
            (choice,) = output.outputs
            assert reason is None, "output after the final one"
            deltas.append(choice.text)
            tokens += choice.token_ids
            reason = choice.finish_reason
    return deltas, tokens, reason


@pytest.mark.parametrize("include", [False, True])
def test_streamed_deltas_never_leak_a_stop_string(llm, include):
    prompt = PROMPTS[3]
    text, _ = greedy_text(llm, prompt)
    stop = readable_substring(text, 10, 4)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=stop,
                            include_stop_str_in_output=include)
    final = llm.generate(prompt, params)[0].outputs[0]
    deltas, tokens, reason = stream(llm, prompt, params)
    assert "".join(deltas) == final.text and tokens == final.token_ids and reason == "stop"
    shown = ""
    for delta in deltas[:-1]:
        shown += delta
        assert final.text.startswith(shown) and stop not in shown
    assert_all_blocks_free(llm)


def test_streaming_without_stops_matches_the_full_text(llm):
    params = SamplingParams(temperature=0.8, max_tokens=30, seed=4, ignore_eos=True)
    final = llm.generate(PROMPTS[5], params)[0].outputs[0]
    deltas, tokens, reason = stream(llm, PROMPTS[5], params)
    assert "".join(deltas) == final.text and tokens == final.token_ids and reason == "length"


def test_detokenization_is_byte_safe(llama_path):
    tokenizer = Tokenizer(llama_path, [])
    text = "café naïve 日本語のテキスト 😀🎉🚀 Ελληνικά"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text) / 2          # multi-byte characters really are split over tokens
    detok = tokenizer.detokenizer([], skip_special_tokens=True)
    pieces = [detok.step(t) for t in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_a_prompt_ending_inside_a_character_is_not_emitted_again(llama_path):
    """The prompt holds 'ok ' and three of the emoji's four bytes; the generated token is the fourth. The
    output is the emoji alone: the prompt's text does not come out again, nor can a stop string match it."""
    tokenizer = Tokenizer(llama_path, [])
    ids = tokenizer.backend.encode("ok 😀", add_special_tokens=False).ids
    last = ids[-1]
    assert tokenizer.backend.decode([last]) == "\ufffd"            # a lone byte of the emoji
    llm = LLM(llama_path, max_num_seqs=2)
    for stop in ([], [" "], ["ok"]):
        params = SamplingParams(temperature=0, max_tokens=1, logit_bias={last: 100.0}, stop=stop)
        out = llm.generate(ids[:-1], params)[0].outputs[0]
        assert out.token_ids == [last] and out.text == "😀" and out.finish_reason == "length", (stop, out)


def test_prompt_bytes_that_are_no_character_stay_the_prompts(llama_path):
    """A token-id prompt that ends in bytes that are no character (stray UTF-8 continuation bytes): their U+FFFD is
    prompt text, not output. Oracle: the text of prompt + output, less the prompt's (transformers' decode)."""
    llm = LLM(llama_path, max_num_seqs=2)
    hf = llm.get_tokenizer()
    stray = hf.convert_tokens_to_ids("\u0138")           # byte-level BPE's token for the lone byte 0xB8
    assert hf.decode([stray]) == "\ufffd"
    for tail in ([stray], [stray, stray]):
        prompt = hf("x = 1\n", add_special_tokens=False)["input_ids"] + tail
        out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0]
        whole, before = (hf.decode(ids, skip_special_tokens=True) for ids in (prompt + out.token_ids, prompt))
        assert whole.startswith(before) and out.text == whole[len(before):], (tail, out.text)


@pytest.mark.parametrize("field, value", [
    ("n", 0), ("max_tokens", -1), ("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2),
    ("min_p", 1.5), ("presence_penalty", 3.0), ("frequency_penalty", -2.5), ("repetition_penalty", 0.0),
    ("stop", [""]), ("stop_token_ids", [-1]), ("min_tokens", -1), ("logprobs", 21), ("prompt_logprobs", -1),
    ("logit_bias", {5: 200.0}), ("temperature", float("inf")), ("repetition_penalty", float("inf")),
    ("ignore_eos", "no"), ("include_stop_str_in_output", 1), ("skip_special_tokens", None),
])
def test_out_of_range_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        SamplingParams(**{field: value})


def test_min_tokens_may_not_exceed_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=3, min_tokens=4)


def test_engine_rejects_ids_outside_the_vocabulary(llm):
    vocab = llm.engine.model_config.vocab_size
    with pytest.raises(ValueError, match="prompt token ids"):
        llm.generate([[1, 2, vocab]], SamplingParams())
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate("x", SamplingParams(logit_bias={vocab: 1.0}))
    with pytest.raises(ValueError, match="sampling_params has 2 entries for 1 prompts"):
        llm.generate(["x"], [SamplingParams(), SamplingParams()])
    assert_all_blocks_free(llm)


class _CountingHF:
    """Stands in for the Hugging Face tokenizer, adding up the characters it is asked to tokenize."""

    def __init__(self, hf) -> None:
        self.hf, self.chars = hf, 0

    def __call__(self, text: str, **kwargs):
        self.chars += len(text)
        return self.hf(text, **kwargs)


def test_a_prompt_that_cannot_fit_is_refused_after_a_bounded_prefix():
    """The tokenizer's work is bounded by the limit, not by the text; what fits is tokenized as without a limit.
    (The default model's tokenizer: its tokens can be long, a run of 16 spaces is one.)"""
    tokenizer = Tokenizer(DEFAULT_MODEL, [])
    counting = tokenizer.hf = _CountingHF(tokenizer.hf)
    text = "value = compute(x) + 1\n" * 10_000                           # 230,000 characters
    with pytest.raises(PromptTooLongError) as refused:
        tokenizer.encode(text, limit=1023)
    assert counting.chars < 10_000
    assert not refused.value.exact and 1023 < refused.value.num_tokens <= len(counting.hf(text)["input_ids"])
    fits = " " * 160                                                      # 11 tokens in 160 characters
    assert tokenizer.encode(fits, limit=11) == counting.hf(fits)["input_ids"]
    with pytest.raises(PromptTooLongError) as exact:
        tokenizer.encode(fits, limit=10)
    assert exact.value.exact and exact.value.num_tokens == len(counting.hf(fits)["input_ids"]) == 11
