"""Logprobs in the two OpenAI shapes, and what a token looks like in them.

A token's `bytes` are its true UTF-8 bytes: for byte-level BPE the token string is mapped back through the GPT-2
byte decoder, for SentencePiece `<0xNN>` pieces are bytes and `▁` is a space, so a token that is half of a
multi-byte character gives its real half. Its string form is its text when those bytes are valid UTF-8 on their
own, else OpenAI's `bytes:\\xe6\\x97` notation; an id the model has but the tokenizer lacks (the embedding is
often padded past the vocabulary) has no bytes and is written `token_id:N`, as vLLM writes token ids. Always
JSON-serialisable, and two tokens never share a key in a `top_logprobs` dict. Logprobs are the raw model
distribution's (before temperature, penalties and filters); a -inf (or NaN) is sent as -9999.0, as OpenAI does,
since JSON has no infinities.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

from api.sampling import Prompt
from engine.outputs import PositionLogprobs
from engine.tokenizer import IncrementalDetokenizer, Tokenizer

FLOOR = -9999.0


def finite(logprob: float) -> float:
    """A JSON-safe logprob."""
    return logprob if math.isfinite(logprob) else FLOOR


@lru_cache(maxsize=1)
def _gpt2_byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decoder_kinds(hf_tokenizer) -> set[str]:
    """The types of the backend decoder (and of its parts, for a Sequence decoder)."""
    decoder = getattr(getattr(hf_tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return set()
    state = json.loads(decoder.__getstate__())
    parts = state.get("decoders") or [state]
    return {part.get("type", "") for part in parts} | {state.get("type", "")}


class TokenTable:
    """Token id -> (exact bytes, JSON-safe string), cached."""

    def __init__(self, hf_tokenizer) -> None:
        self.hf = hf_tokenizer
        kinds = _decoder_kinds(hf_tokenizer)
        self.byte_level = "ByteLevel" in kinds
        self.sentencepiece = bool(kinds & {"ByteFallback", "Metaspace"})
        self.added = {tid: tok.content for tid, tok in getattr(hf_tokenizer, "added_tokens_decoder", {}).items()}
        self._cache: dict[int, tuple[bytes, str]] = {}

    def _compute(self, token_id: int) -> bytes | None:
        if token_id in self.added:
            return self.added[token_id].encode()
        piece = self.hf.convert_ids_to_tokens(token_id)
        if piece is None:
            return None
        if self.byte_level:
            table = _gpt2_byte_decoder()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        if self.sentencepiece:
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode()
        return self.hf.decode([token_id]).encode()

    def _entry(self, token_id: int) -> tuple[bytes, str]:
        entry = self._cache.get(token_id)
        if entry is None:
            raw = self._compute(token_id)
            if raw is None:                          # not in the tokenizer's vocabulary
                raw, text = b"", f"token_id:{token_id}"
            else:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            entry = self._cache[token_id] = (raw, text)
        return entry

    def bytes(self, token_id: int) -> bytes:
        """The token's exact bytes."""
        return self._entry(token_id)[0]

    def text(self, token_id: int) -> str:
        """The token as a JSON-safe string (its text, or `bytes:\\x..` when it is not whole characters)."""
        return self._entry(token_id)[1]


class TokenIds:
    """The token table of return_tokens_as_token_ids: every token written `token_id:N` (vLLM's), its bytes those
    of that string."""

    def text(self, token_id: int) -> str:
        """`token_id:N`."""
        return f"token_id:{token_id}"

    def bytes(self, token_id: int) -> bytes:
        """The bytes of `token_id:N`."""
        return self.text(token_id).encode()


def token_table(state_tokens: TokenTable, request_asks: bool | None, server_asks: bool) -> TokenTable | TokenIds:
    """How a request's logprob tokens are written: as text, or as token ids when the request or the server asks."""
    return TokenIds() if request_asks or server_asks else state_tokens


def prompt_logprobs(tokens: TokenTable | TokenIds, token_ids: list[int], rows: list[PositionLogprobs | None] | None,
                    k: int) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: per prompt token (the first has none: null) a dict of token id to its logprob,
    rank and decoded_token, for the prompt's token and the k most likely ones."""
    out: list[dict | None] = []
    for token, row in zip(token_ids, rows or [None] * len(token_ids)):
        if row is None:
            out.append(None)
            continue
        ranked = sorted(row.items(), key=lambda item: (item[1].rank, -item[1].logprob))[:k]
        kept = {token: row[token], **dict(ranked)}
        out.append({str(t): {"logprob": finite(lp.logprob), "rank": lp.rank, "decoded_token": tokens.text(t)}
                    for t, lp in kept.items()})
    return out


class LegacyLogprobs:
    """Completions logprobs for one choice, built chunk by chunk: tokens, token_logprobs, top_logprobs and
    text_offset, the character offset of each token in the choice's text (echoed prompt included)."""

    def __init__(self, tokens: TokenTable | TokenIds, detokenizer: IncrementalDetokenizer, offset: int = 0,
                 top: int | None = None) -> None:
        self.tokens = tokens
        self.detokenizer = detokenizer
        self.offset = offset
        self.top = top          # top_logprobs per token: the `top` most likely and the token itself (None: all)

    def prompt(self, token_ids: list[int], logprobs: list[PositionLogprobs | None] | None,
               offsets: list[int]) -> dict:
        """The echoed prompt's part (its first token has null logprobs), at `offsets` (`echo_offsets`)."""
        rows = logprobs or [None] * len(token_ids)
        out = _empty()
        for token, row, offset in zip(token_ids, rows, offsets):
            self._append(out, token, row, offset)
        return out

    def add(self, token_ids: list[int], logprobs: list[PositionLogprobs]) -> dict:
        """The part of newly generated tokens."""
        out = _empty()
        for token, row in zip(token_ids, logprobs):
            self._append(out, token, row, self.offset)
            self.offset += len(self.detokenizer.step(token))
        return out

    def _append(self, out: dict, token: int, row: PositionLogprobs | None, offset: int) -> None:
        out["tokens"].append(self.tokens.text(token))
        out["text_offset"].append(offset)
        if row is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            return
        out["token_logprobs"].append(finite(row[token].logprob))
        ranked = sorted(row.items(), key=lambda item: (item[1].rank, -item[1].logprob))
        if self.top is not None:         # the row may hold more (prompt_logprobs asked for a larger k)
            ranked = [(t, lp) for i, (t, lp) in enumerate(ranked) if i < self.top or t == token]
        out["top_logprobs"].append({self.tokens.text(t): finite(lp.logprob) for t, lp in ranked})


def echo_text(tokenizer: Tokenizer, prompt: Prompt) -> str:
    """What `echo` puts before the completion: a text prompt as it was sent, a token-id prompt decoded whole,
    special tokens included (`[0, 0]` echoes `<|endoftext|><|endoftext|>`, not nothing)."""
    if prompt.text is not None:
        return prompt.text
    return tokenizer.decode(prompt.token_ids, skip_special_tokens=False)


def echo_offsets(tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    """The character offset of each prompt token in `echo_text`. A text prompt's come from the tokenizer's own
    offset mapping, so special-token text written in the prompt (`Hi<|im_end|> there`) counts its characters,
    and a token the tokenizer added that the text lacks (a BOS) has no width: it sits where the text is. A
    token-id prompt's count the characters of its decode, special tokens included."""
    if prompt.text is not None:
        spans = tokenizer.hf(prompt.text, return_offsets_mapping=True)["offset_mapping"]
        offsets, end = [], 0
        for start, stop in spans:
            offsets.append(start if stop > start else end)
            end = max(end, stop)
        return offsets
    detokenizer = tokenizer.detokenizer([], skip_special_tokens=False)
    offsets, position = [], 0
    for token in prompt.token_ids:
        offsets.append(position)
        position += len(detokenizer.step(token))
    return offsets


def merge_legacy(first: dict, second: dict) -> dict:
    """Concatenate two legacy logprobs parts."""
    return {key: first[key] + second[key] for key in first}


def _empty() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def chat_logprobs(tokens: TokenTable | TokenIds, token_ids: list[int], logprobs: list[PositionLogprobs],
                  k: int) -> list[dict]:
    """Chat `logprobs.content`: per token its string, logprob, bytes, and its k most likely alternatives."""
    content = []
    for token, row in zip(token_ids, logprobs):
        ranked = sorted(row.items(), key=lambda item: (item[1].rank, -item[1].logprob))[:k]
        content.append({**_chat_token(tokens, token, row[token].logprob),
                        "top_logprobs": [_chat_token(tokens, t, lp.logprob) for t, lp in ranked]})
    return content


def _chat_token(tokens: TokenTable | TokenIds, token: int, logprob: float) -> dict:
    return {"token": tokens.text(token), "logprob": finite(logprob), "bytes": list(tokens.bytes(token))}
