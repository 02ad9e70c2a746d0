"""The checkpoint's tokenizer and chat template (loaded locally), and byte-safe incremental detokenization."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from tokenizers import Tokenizer as TokenizerBackend
from tokenizers.decoders import DecodeStream
from tokenizers.models import WordLevel
from transformers import AutoTokenizer

# Prompt tokens given to a detokenizer as context, so that the first generated token decodes as it would in
# the middle of the text (SentencePiece tokenizers drop a leading space at the very start); more, up to
# _MAX_CONTEXT_TOKENS, where those decode to nothing (skipped special tokens) or begin inside a character.
_CONTEXT_TOKENS = 4
_MAX_CONTEXT_TOKENS = 16
# The message of the untyped exception tokenizers' DecodeStream raises when the text it emitted is no longer a
# prefix of what it decodes.
_INVALID_PREFIX = "Invalid prefix encountered"
# A text longer than this many characters per allowed token is first counted by prefixes (see `_refuse_long`).
_CHARS_PER_TOKEN = 4
# Tokens a prefix cut inside a word may count beyond what that stretch of the whole text has.
_CUT_SLACK = 16


class PromptTooLongError(ValueError):
    """A prompt has more tokens than allowed. `num_tokens` is exact, or (`exact` False) a lower bound: the
    tokenizer stopped counting once the limit was clearly passed."""

    def __init__(self, num_tokens: int, limit: int, exact: bool) -> None:
        super().__init__(f"the prompt has {'' if exact else 'at least '}{num_tokens} tokens, more than the "
                         f"{limit} allowed")
        self.num_tokens, self.limit, self.exact = num_tokens, limit, exact


class Tokenizer:
    """Encoding, chat rendering, EOS ids and per-token text for one checkpoint."""

    def __init__(self, path: str, model_eos_ids: list[int]) -> None:
        self.hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.backend = self.hf.backend_tokenizer
        self.eos_token_ids = _eos_ids(Path(path), model_eos_ids, self.hf.eos_token_id)
        self.special_ids = set(self.hf.all_special_ids)
        self._token_text: dict[int, str] = {}

    def encode(self, text: str, limit: int | None = None, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt, with the special tokens (e.g. BOS) the tokenizer adds by default. With `limit`,
        a prompt of more tokens raises PromptTooLongError, and the tokenizer's work is bounded by the limit, not
        by the text: a prompt of megabytes is refused after counting a prefix of a few times `limit` tokens."""
        if limit is not None and len(text) > _CHARS_PER_TOKEN * (limit + 1):
            self._refuse_long(text, limit, add_special_tokens)
        ids = self.hf(text, add_special_tokens=add_special_tokens)["input_ids"]
        if limit is not None and len(ids) > limit:
            raise PromptTooLongError(len(ids), limit, exact=True)
        return ids

    def _refuse_long(self, text: str, limit: int, add_special_tokens: bool) -> None:
        """Raise PromptTooLongError if a prefix of `text` already has more than `limit` tokens (and `_CUT_SLACK`
        for the word the cut may split). The prefix, cut at a space where there is one near, starts at
        `_CHARS_PER_TOKEN` characters per allowed token and grows 4x while it is short of the limit, so the
        characters tokenized stay within a few times what `limit` tokens cover."""
        size = _CHARS_PER_TOKEN * (limit + 1)
        while size < len(text):
            space = text.rfind(" ", max(0, size - 64), size)
            count = len(self.hf(text[:space if space > 0 else size], add_special_tokens=add_special_tokens)
                        ["input_ids"])
            if count > limit + _CUT_SLACK:
                raise PromptTooLongError(count - _CUT_SLACK, limit, exact=False)
            size *= 4

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of a whole token sequence."""
        return self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        """Whether the checkpoint ships a chat template."""
        return bool(getattr(self.hf, "chat_template", None))

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None, template_kwargs: dict | None = None, *,
                    continue_final_message: bool = False, chat_template: str | None = None) -> str:
        """The prompt text of a conversation (and the tools the model may call), rendered with the checkpoint's
        chat template or `chat_template`, which also sees `template_kwargs` (e.g. Qwen3's enable_thinking).
        continue_final_message leaves the last (assistant) message open, for the model to go on with. OpenAI's
        "developer" messages are system messages to a template that does not know the role (as in vLLM)."""
        if chat_template is None and not self.has_chat_template:
            raise ValueError("this model has no chat template, so chat messages cannot be rendered")
        if "developer" not in str(chat_template or self.hf.chat_template):
            messages = [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]
        return self.hf.apply_chat_template(messages, tools=tools, tokenize=False, chat_template=chat_template,
                                           add_generation_prompt=add_generation_prompt,
                                           continue_final_message=continue_final_message, **(template_kwargs or {}))

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, limit: int | None = None,
                    tools: list[dict] | None = None, template_kwargs: dict | None = None, *,
                    continue_final_message: bool = False, chat_template: str | None = None) -> list[int]:
        """Token ids of a rendered conversation (the template writes any BOS itself); `limit` as in `encode`."""
        text = self.render_chat(messages, add_generation_prompt, tools, template_kwargs,
                                continue_final_message=continue_final_message, chat_template=chat_template)
        return self.encode(text, limit, add_special_tokens=False)

    def word_token_ids(self, words: list[str]) -> list[list[int]]:
        """The token sequences of SamplingParams.bad_words, as vLLM forms them: each word (leading spaces
        stripped, unless it is only spaces) as it starts the text, and after a space where that makes other
        tokens of the same number (a word of its own, not the same first token)."""
        sequences = []
        for word in words:
            word = word.lstrip() or word
            alone = self.hf.encode(word, add_special_tokens=False)
            if not alone:
                raise ValueError(f"bad_words entries must tokenize to at least one token, got {word!r}")
            sequences.append(alone)
            spaced = self.hf.encode(" " + word, add_special_tokens=False)
            if spaced and spaced[0] != alone[0] and len(spaced) == len(alone):
                sequences.append(spaced)
        return sequences

    def token_text(self, token_id: int) -> str:
        """The text of a single token (for logprobs), cached."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.backend.decode([token_id], skip_special_tokens=False)
        return text

    def detokenizer(self, prompt_ids: list[int], skip_special_tokens: bool) -> IncrementalDetokenizer:
        """A fresh incremental detokenizer for text generated after `prompt_ids`."""
        skipped = self.special_ids if skip_special_tokens else set()
        return IncrementalDetokenizer(self, _context(self.backend, prompt_ids, skip_special_tokens, skipped),
                                      skip_special_tokens)


def _context(backend: TokenizerBackend, token_ids: list[int], skip_special_tokens: bool,
             skipped: set[int]) -> list[int]:
    """The last tokens of `token_ids` that text after them is decoded with: the trailing `skipped` (special) tokens,
    which decode to nothing, and _CONTEXT_TOKENS before them, or more (up to _MAX_CONTEXT_TOKENS) while those decode
    to nothing or begin inside a character, whose bytes a byte-fallback decoder would turn, with the generated bytes
    after them, into one run of U+FFFD."""
    end = len(token_ids)
    while end > 0 and token_ids[end - 1] in skipped:
        end -= 1
    start = max(0, end - _CONTEXT_TOKENS)
    floor = max(0, end - _MAX_CONTEXT_TOKENS)
    while start > floor:
        text = backend.decode(token_ids[start:], skip_special_tokens=skip_special_tokens)
        if text and not text.startswith("\ufffd"):
            break
        start -= 1
    return token_ids[start:]


class IncrementalDetokenizer:
    """Turns generated tokens into text, one at a time (`step`) or many at once at the end (`finish`), holding back
    bytes of a character split over tokens."""

    __slots__ = ("_backend", "_stream", "_pending", "_skip_special", "_prompt_tail", "_prompt_held", "num_fed")

    def __init__(self, tokenizer: Tokenizer, context_ids: list[int], skip_special_tokens: bool) -> None:
        self._backend = tokenizer.backend
        self._skip_special = skip_special_tokens
        self._prime(context_ids)
        self._pending: list[int] = []      # generated tokens whose text is still held back
        self.num_fed = 0                   # generated tokens given to the stream so far

    def _prime(self, context_ids: list[int]) -> None:
        """A fresh stream, fed `context_ids` token by token, emitting nothing."""
        self._stream = DecodeStream(skip_special_tokens=self._skip_special)
        held: list[int] = []               # context tokens the stream holds back: the prompt ends inside a character
        for token_id in context_ids:
            try:
                emitted = self._stream.step(self._backend, token_id)
            except Exception as error:     # as in `step`: the context's own bytes decode differently now
                if not str(error).startswith(_INVALID_PREFIX):
                    raise
                self._stream = DecodeStream(skip_special_tokens=self._skip_special)
                held = []                  # what the old stream held is not this one's
                emitted = self._stream.step(self._backend, token_id)
            held = [] if emitted is not None else [*held, token_id]
        # The held tokens' text (a space merged with the first byte of a character, say, or bytes that are no
        # character, as U+FFFD) is prompt text that the stream will emit again with the first generated text: what
        # that text begins with of it is cut from there. (Bytes that the generated ones complete to a character
        # are not cut: their U+FFFD here differs from the character the stream emits.)
        self._prompt_tail = self._backend.decode(held, skip_special_tokens=self._skip_special)
        self._prompt_held = held if self._prompt_tail else []      # until the stream emits

    def step(self, token_id: int) -> str:
        """The new text that `token_id` completes ('' while a multi-byte character is incomplete)."""
        try:
            text = self._stream.step(self._backend, token_id)
        except Exception as error:           # tokenizers raises it untyped: its message tells it apart
            if not str(error).startswith(_INVALID_PREFIX):
                raise
            return self._restart(token_id)
        if not text:
            self._pending.append(token_id)
            self.num_fed += 1
            return ""
        if self._pending or self._prompt_tail:
            return self._emitted(text, 1)
        self.num_fed += 1                    # the common case, without a call: a token and its whole text
        return text

    def finish(self, output_ids: list[int]) -> str:
        """At the end of a sequence whose text is that of the generated tokens `output_ids`: the text of those not
        given to `step` yet, then whatever is still held back, incomplete characters shown as U+FFFD."""
        rest = output_ids[self.num_fed:]
        text = self._all_at_once(rest) if len(rest) > 1 and _STEP_TAKES_LISTS else None
        if text is None:
            text = "".join(self.step(token_id) for token_id in rest)
        if self._pending:
            text += self._held_text()
            self._pending.clear()
        return text

    def _held_text(self) -> str:
        """The text of the held-back tokens, incomplete characters as U+FFFD; after the prompt's held tokens when
        the stream emitted nothing since them (a character the prompt began, completed by generated bytes)."""
        held = self._prompt_held
        whole = self._backend.decode(held + self._pending, skip_special_tokens=self._skip_special)
        return whole[len(os.path.commonprefix((self._prompt_tail, whole))):] if held else whole

    def _restart(self, token_id: int) -> str:
        """The stream refused `token_id`: bytes that are no character decoded differently once it followed, so
        the text already emitted was no longer a prefix (vLLM meets the same, its issue 17448). The held-back
        tokens are shown as they are (U+FFFD for their bytes), and a fresh stream, primed with them as the
        context, goes on at `token_id` (a space it begins with is kept)."""
        held = self._backend.decode(self._pending, skip_special_tokens=self._skip_special)
        context = self._prompt_held + self._pending
        self._pending.clear()
        self._prime(context)
        return held + self.step(token_id)

    def _all_at_once(self, token_ids: list[int]) -> str | None:
        """The text of `token_ids` from one call to the stream (far cheaper than one per token), or None, with
        nothing fed, where that text could differ from one call per token's: when it ends inside a character or
        holds U+FFFD (bytes that are no character show as many U+FFFD as the stream's cuts make)."""
        saved = copy.copy(self._stream)
        try:
            text = self._stream.step(self._backend, token_ids)
        except Exception as error:
            if not str(error).startswith(_INVALID_PREFIX):
                raise
            text = None
        if not text or "\ufffd" in text:
            self._stream = saved
            return None
        return self._emitted(text, len(token_ids))

    def _emitted(self, text: str, num_tokens: int) -> str:
        """The stream emitted `text` on being given `num_tokens` tokens: nothing is held back any more."""
        self.num_fed += num_tokens
        if self._pending:
            self._pending.clear()
        if self._prompt_tail:
            text = text[len(os.path.commonprefix((self._prompt_tail, text))):]
            self._prompt_tail = ""
            self._prompt_held = []
        return text


def _step_takes_lists() -> bool:
    """Whether this tokenizers' DecodeStream.step takes a list of ids as well as one id, and the stream can be
    copied (tokenizers 0.23 does both)."""
    if not hasattr(DecodeStream, "__copy__"):
        return False
    try:
        DecodeStream().step(TokenizerBackend(WordLevel({"a": 0}, unk_token="a")), [0])
    except TypeError:
        return False
    return True


def _eos_ids(path: Path, model_eos_ids: list[int], tokenizer_eos: int | None) -> list[int]:
    """EOS ids from config.json, generation_config.json and the tokenizer, in that order, without repeats."""
    ids = list(model_eos_ids)
    gen = path / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer_eos is not None:
        ids.append(tokenizer_eos)
    return list(dict.fromkeys(ids))


_STEP_TAKES_LISTS = _step_takes_lists()
