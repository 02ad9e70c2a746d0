"""Detokenizing a sequence's tokens all at once when it ends (a sequence that is neither streamed nor searched for
stop strings) gives exactly the text that detokenizing them one by one gives, for byte-level and byte-fallback
tokenizers, with the prompt's last tokens as context, special tokens kept or skipped, and characters split over
tokens anywhere, also across the end of the prompt. The oracle is the stream fed token by token."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import engine.tokenizer as tokenizer_module
from engine import DEFAULT_MODEL, LLM, SamplingParams
from engine.tokenizer import Tokenizer

TEXT = "café naïve 日本語のテキスト 😀🎉 Ελληνικά, def f(x):\n    return x ** 2  # ok"


def byte_fallback_tokenizer(path) -> str:
    """A SentencePiece-like tokenizer (Llama 2's decoder: '▁' for spaces, byte fallback, a leading space
    stripped), without merges: every character is a token where it is in the vocabulary, bytes where not."""
    chars = sorted(set("▁abcdefghijklmnopqrstuvwxyz,.():#*=\n0123456789"))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    vocab.update({c: len(vocab) + i for i, c in enumerate(chars)})
    backend = Backend(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["default", "byte-fallback"])
def tokenizer(request, tmp_path_factory) -> Tokenizer:
    if request.param == "default":
        return Tokenizer(DEFAULT_MODEL, [])
    return Tokenizer(byte_fallback_tokenizer(tmp_path_factory.mktemp("bf")), [])


def one_by_one(tokenizer: Tokenizer, context: list[int], ids: list[int], skip: bool) -> str:
    detok = tokenizer.detokenizer(context, skip)
    return "".join(detok.step(t) for t in ids) + detok.finish(ids)


@pytest.mark.parametrize("lists", [True, False], ids=["step-takes-lists", "one-id-steps"])
@pytest.mark.parametrize("skip", [True, False])
def test_all_at_once_equals_one_by_one(tokenizer, skip, lists, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "_STEP_TAKES_LISTS", lists and tokenizer_module._STEP_TAKES_LISTS)
    ids = tokenizer.backend.encode(TEXT, add_special_tokens=False).ids
    assert len(ids) > len(TEXT) // 2                   # characters really are split over tokens
    specials = sorted(tokenizer.special_ids)
    rng = random.Random(0)
    vocab = tokenizer.backend.get_vocab_size()
    checked = 0
    for trial in range(60):
        cut = rng.randrange(1, len(ids) - 1)             # the prompt may end inside a character
        context, output = ids[:cut], ids[cut:]
        if trial % 3 == 1:                               # random tokens: bytes that never make a character
            output = [rng.randrange(vocab) for _ in range(rng.randrange(1, 12))]
        if trial % 4 == 2:
            output = output[:3] + [rng.choice(specials)] + output[3:]
        expected = one_by_one(tokenizer, context, output, skip)
        for done in (0, rng.randrange(len(output) + 1)):     # some tokens already given to `step`, then the rest
            detok = tokenizer.detokenizer(context, skip)
            text = "".join(detok.step(t) for t in output[:done]) + detok.finish(output)
            assert text == expected, (context, output, done)
            checked += 1
    assert checked == 120


def test_finish_after_a_held_back_character_shows_it_once(tokenizer):
    ids = tokenizer.backend.encode("ok 😀", add_special_tokens=False).ids
    detok = tokenizer.detokenizer([], skip_special_tokens=True)
    text = detok.step(ids[0]) + detok.finish(ids[:-1])
    assert text == tokenizer.backend.decode(ids[:-1]) and text.startswith("ok ") and text.endswith("\ufffd")
    assert detok.finish(ids[:-1]) == ""
    assert tokenizer.detokenizer([], True).finish(ids) == "ok 😀"


def test_text_is_the_same_streamed_or_not_with_split_characters(llama_path):
    """Sampling at a high temperature from the random test model draws byte tokens that split characters; the
    text of a non-streamed request (detokenized when it ends) equals the streamed deltas joined."""
    llm = LLM(llama_path, max_num_seqs=8)
    engine = llm.engine
    params = SamplingParams(temperature=1.5, max_tokens=40, seed=3, ignore_eos=True, n=4)
    for streamed in (False, True):
        engine.add_request(f"r-{streamed}", "café 日本", params, stream=streamed)
    texts: dict[bool, dict[int, str]] = {False: {}, True: {}}
    while engine.has_unfinished_requests():
        for out in engine.step():
            for choice in out.outputs:
                streamed = out.request_id == "r-True"
                texts[streamed][choice.index] = texts[streamed].get(choice.index, "") * streamed + choice.text
    assert texts[False] == texts[True] and len(texts[False]) == 4
    assert any(t for t in texts[False].values())


def test_a_byte_that_is_no_character_does_not_stop_the_stream(tmp_path):
    """Llama 2's byte-fallback decoder decodes a run of byte tokens together, and a byte that is no character
    makes the whole run U+FFFD: 'Y' (a byte token), then 0xC0, then 'y' made tokenizers' stream raise on 'y' (the
    'Y' it had emitted was no longer a prefix of its text), which ended the engine's step. The detokenizer shows
    the held-back byte as U+FFFD and goes on with a fresh stream; all at once, the text is the same."""
    tokenizer = Tokenizer(byte_fallback_tokenizer(tmp_path), [])
    ids = [tokenizer.backend.token_to_id(t) for t in ("<0x59>", "<0xC0>", "y", "o", "u")]
    detok = tokenizer.detokenizer([], skip_special_tokens=True)
    text = "".join(detok.step(t) for t in ids) + detok.finish(ids)
    assert text in ("Y\ufffdyou", "\ufffd\ufffdyou")        # the second if tokenizers stops raising
    assert tokenizer.detokenizer([], skip_special_tokens=True).finish(ids) == text
