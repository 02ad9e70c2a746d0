"""Detokenizing a sequence's tokens all at once when it ends (a sequence that is neither streamed nor searched for
stop strings) gives exactly the text that detokenizing them one by one gives, for byte-level and byte-fallback
tokenizers, with the prompt's last tokens as context, special tokens kept or skipped, and characters split over
tokens anywhere, also across the end of the prompt. The oracle is the stream fed token by token."""

from __future__ import annotations

import os
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


def _after(tokenizer: Tokenizer, context: list[int], output: list[int], skip: bool) -> str:
    """The oracle: the whole decode of prompt and output, less the prompt's own text (less the bytes of a character
    the prompt ends inside, which the output completes)."""
    whole = tokenizer.backend.decode(context + output, skip_special_tokens=skip)
    before = tokenizer.backend.decode(context, skip_special_tokens=skip)
    return whole[len(os.path.commonprefix((before, whole))):]


@pytest.mark.parametrize("skip", [True, False])
def test_text_is_the_whole_decode_after_the_prompt(tokenizer, skip):
    """Valid text cut anywhere, after any number of special tokens: a reply's text, step by step or at the end, is
    the whole decode's after the prompt's. Byte-fallback decoders make a run of byte tokens U+FFFD as a whole where
    one of them is no character (so there, the whole decode is the oracle only for cuts between characters): the
    context the detokenizer takes from the prompt must start at a character, and text held back at the end of a
    sequence is decoded after it."""
    rng = random.Random(1)
    specials = sorted(tokenizer.special_ids)
    texts = ["你好世界 日本 world", "café naïve 😀🎉 ok", "  two  spaces and 日本語", TEXT]
    whole_runs = getattr(tokenizer.backend.model, "byte_fallback", False)
    checked = 0
    while checked < 80:
        ids = tokenizer.backend.encode(rng.choice(texts), add_special_tokens=False).ids
        cut = rng.randrange(1, len(ids))
        end = rng.randrange(cut + 1, len(ids) + 1)
        if whole_runs and any("\ufffd" in tokenizer.backend.decode(part) for part in (ids[:cut], ids[cut:end])):
            continue
        context = ids[:cut] + [rng.choice(specials)] * (checked % 7)     # up to 6 special tokens (all skipped)
        output = ids[cut:end]
        checked += 1
        expected = _after(tokenizer, context, output, skip)
        assert one_by_one(tokenizer, context, output, skip) == expected, (context, output)
        assert tokenizer.detokenizer(context, skip).finish(output) == expected, (context, output)


def test_any_token_ids_make_a_detokenizer_that_runs(tokenizer):
    """Token-id prompts are the client's: whatever bytes they end with, the detokenizer is made (tokenizers'
    stream refused some while the context was fed, a 500 on /v1/completions) and decodes any tokens after them."""
    rng = random.Random(2)
    vocab = tokenizer.backend.get_vocab_size()
    for _ in range(150):
        context = [rng.randrange(vocab) for _ in range(rng.randrange(0, 10))]
        output = [rng.randrange(vocab) for _ in range(rng.randrange(1, 10))]
        for skip in (True, False):
            assert isinstance(one_by_one(tokenizer, context, output, skip), str)


def test_byte_fallback_edge_cases(tmp_path):
    """Found by an audit against the whole decode: a prompt ending in bytes the stream refuses; a refused stream
    that then dropped the space it restarted with; a character the prompt began that the output completes, and
    bytes that still complete none, at the end of a sequence."""
    tokenizer = Tokenizer(byte_fallback_tokenizer(tmp_path), [])
    tid = tokenizer.backend.token_to_id
    context = [tid(t) for t in ("<s>", "<0x4C>", "<0xD6>", "e", "v", "o", "g", ".")]
    assert one_by_one(tokenizer, context, [tid("▁"), tid("x")], True) == " x"
    ok = [tid(t) for t in ("<s>", "o", "k", "<0x59>", "<0xC0>")]
    assert one_by_one(tokenizer, ok, [tid("▁")] * 3, True) == "   "
    after_specials = [tid("o"), tid("k")] + [tid("</s>")] * 20           # more than the context's reach
    assert one_by_one(tokenizer, after_specials, [tid("▁"), tid("x")], True) == " x"
    nichi = [tid(t) for t in ("▁", "<0xE6>", "<0x97>")]                 # " " and two bytes of 日 (E6 97 A5)
    assert one_by_one(tokenizer, nichi, [tid("<0xA5>")], True) == "日"
    assert one_by_one(tokenizer, nichi, [tid("<0xA5>"), tid("<0xE6>")], True) == "日\ufffd"


def byte_level_tokenizer(path, merged: list[bytes]) -> str:
    """A GPT-2-like byte-level tokenizer: the 256 bytes and the `merged` byte strings as tokens (no merges: only
    decoding is asked of it)."""
    alphabet = {}
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    for i, byte in enumerate([*printable, *(b for b in range(256) if b not in printable)]):
        alphabet[byte] = chr(byte if byte in printable else 256 + i - len(printable))
    vocab = {alphabet[b]: b for b in range(256)}
    vocab.update({"".join(alphabet[b] for b in token): 256 + i for i, token in enumerate(merged)})
    backend = Backend(models.BPE(vocab, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(path)
    return str(path)


def test_byte_level_held_bytes_at_the_end_decode_after_the_prompts(tmp_path):
    """Byte-level decoders decode UTF-8 lossily as a whole: a token that completes a character the prompt began
    (and begins another) at the end of a sequence gives that character (it gave two U+FFFD), and a byte that
    completes nothing gives nothing (the prompt's one U+FFFD is the whole decode's)."""
    tokenizer = Tokenizer(byte_level_tokenizer(tmp_path, [b"ok", b" \xe6\x97", b"\xa5\xe6", b" \xe2"]), [])
    ok, space_e6_97, a5_e6, space_e2 = 256, 257, 258, 259
    assert one_by_one(tokenizer, [ok, space_e6_97], [a5_e6], True) == "日\ufffd"
    assert tokenizer.detokenizer([ok, space_e6_97], True).finish([a5_e6]) == "日\ufffd"
    assert one_by_one(tokenizer, [ok, space_e2], [0x9C], True) == ""
    assert _after(tokenizer, [ok, space_e2], [0x9C], True) == ""
