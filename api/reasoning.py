"""Reasoning parsers: a reply's thinking goes to `reasoning_content`, the rest to `content` (Fireworks' and vLLM's
fields for Qwen3 and DeepSeek R1).

`qwen3`: a reply that starts with `<think>` thinks until `</think>` (or to its end, if cut short); what follows,
less the blank lines after the tag, is its content. So does a reply whose prompt ends with `<think>` (templates
that write it for the model, as Qwen3.5's and the Thinking-2507 models' do: `opened`), from its first token; a
`<think>` elsewhere in the prompt (a user's message that mentions it) does not count.
Any other reply (thinking switched off with `chat_template_kwargs: {"enable_thinking": false}`, whose prompt
closes it) is all content.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import thinking
from engine.thinking import END, START
from engine.tokenizer import Tokenizer

PARSERS = ("qwen3",)


def opened(tokenizer: Tokenizer, prompt_ids: list[int]) -> bool:
    """Whether the reply to `prompt_ids` thinks from its first token (its prompt ends with a `<think>` that the
    template wrote for the model: engine/thinking.py's `is_open`)."""
    ids = thinking.markers(tokenizer)
    return ids is not None and thinking.is_open(prompt_ids, ids[0], tokenizer)


def split(text: str, final: bool = True, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, content) of a reply's text (`opened`: its prompt opened the thinking); while it
    streams (`final` False) a text that may still become `<think>` is neither yet."""
    if opened:
        body = text
    elif not text.startswith(START):
        return ("", "") if not final and START.startswith(text) else (None, text)
    else:
        body = text[len(START):]
    at = body.find(END)
    if at < 0:
        return body, ""
    return body[:at], body[at + len(END):].lstrip("\n")


def reasoning_tokens(tokenizer: Tokenizer, token_ids: list[int], opened: bool = False) -> int:
    """How many of a reply's tokens are its thinking (through the one that completes `</think>`): all of them if
    it never closes, none if it neither starts with `<think>` nor follows a prompt that `opened` the thinking."""
    detokenizer = tokenizer.detokenizer([], skip_special_tokens=False)
    text = START if opened else ""
    for i, token in enumerate(token_ids):
        text += detokenizer.step(token)
        if len(text) >= len(START) and not text.startswith(START):
            return 0
        if END in text:
            return i + 1
    return len(token_ids) if text.startswith(START) else 0


@dataclass(slots=True)
class StreamSplit:
    """One streamed choice: turns each text delta into (reasoning delta, content delta), holding back what could
    still be the start of `<think>` or `</think>`."""

    opened: bool = False            # its prompt opened the thinking
    text: str = ""
    sent_reasoning: int = 0
    sent_content: int = 0

    def add(self, delta: str, final: bool) -> tuple[str, str]:
        """The new reasoning and content text once `delta` is appended (`final`: the reply has ended)."""
        self.text += delta
        reasoning, content = split(self.text, final, self.opened)
        if not final:
            reasoning = _hold(reasoning or "", END) if reasoning is not None else None
        new_reasoning = (reasoning or "")[self.sent_reasoning:]
        new_content = content[self.sent_content:]
        self.sent_reasoning += len(new_reasoning)
        self.sent_content += len(new_content)
        return new_reasoning, new_content


def _hold(text: str, tag: str) -> str:
    """`text` less a tail that is a proper prefix of `tag` (it may yet become the tag)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return text[:-k]
    return text
