"""A thinking budget (vLLM's `thinking_token_budget`, Anthropic's `thinking.budget_tokens`): once a sequence has
thought for `budget` tokens, its next token is `</think>`.

A model thinks between a `<think>` and a `</think>` token of its vocabulary (Qwen3's, DeepSeek R1's). The thinking
is open from the first generated token when the prompt ends with `<think>` and at most some whitespace (templates
that open it for the model: Qwen3.5's, Qwen3 Thinking-2507's, DeepSeek R1's), or else from a drawn `<think>`. A
`<think>` earlier in the prompt (a user's message that mentions it, a prefill that has begun to think) does not
open it. Each token drawn while it is open counts; the `<think>` that opens it does not. When the count reaches
the budget, the sampler draws `</think>` whatever the logits say (after every other mask: the budget wins). The
first `</think>`, drawn or forced, ends the budget's part: the reply that follows is not limited by it.

The output processor feeds the budget each token it appends; the sampler asks it which token, if any, is due.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.tokenizer import Tokenizer

START, END = "<think>", "</think>"


def markers(tokenizer: Tokenizer) -> tuple[int, int] | None:
    """The ids of `<think>` and `</think>` where both are tokens of the vocabulary, else None."""
    start, end = tokenizer.backend.token_to_id(START), tokenizer.backend.token_to_id(END)
    return None if start is None or end is None else (start, end)


TAIL = 16          # the most tokens of whitespace after the `<think>` that opens the thinking for the model


def is_open(prompt: list[int], start_id: int, tokenizer: Tokenizer) -> bool:
    """Whether `prompt` ends with a `<think>` (its id `start_id`) and nothing after it but whitespace."""
    tail = prompt[-(TAIL + 1):]
    for k in range(len(tail) - 1, -1, -1):
        if tail[k] == start_id:
            rest = tail[k + 1:]
            return not rest or tokenizer.decode(rest, skip_special_tokens=False).strip() == ""
    return False


@dataclass(slots=True)
class ThinkingBudget:
    """One sequence's thinking: how many tokens it has thought since its thinking opened (None while closed)."""

    start_id: int
    end_id: int
    budget: int
    used: int | None = None
    done: bool = False               # its thinking has closed: nothing more to count or force

    @classmethod
    def starting(cls, ids: tuple[int, int], budget: int, opened: bool) -> ThinkingBudget:
        """The budget of a new sequence (`opened`: its prompt opened the thinking, see `is_open`)."""
        return cls(*ids, budget, 0 if opened else None)

    def forced(self) -> int | None:
        """`</think>` when the budget is spent and the thinking still open, else None."""
        return self.end_id if self.used is not None and self.used >= self.budget else None

    def verifiable(self, drafts: list[int]) -> list[int]:
        """The leading `drafts` that one step may verify (engine/speculative.py). The sampler forces each row of the
        step by this state, before any of the drafts, so no row may come where the state would differ in what it
        forces: none after a `<think>` that would open the thinking, and none at the budget or past it while the
        thinking is open (a `</think>` among the drafts closes it, which forces nothing after)."""
        if self.used is None and not self.done:
            return drafts[:drafts.index(self.start_id)] if self.start_id in drafts else drafts
        return drafts[:self.room(len(drafts))]

    def room(self, k: int) -> int:
        """The most of k drafts a step may verify: all of them, or while the thinking is open, as many as leave its
        last row short of the budget (what a proposer need not guess; `verifiable` also cuts at a `<think>`)."""
        return k if self.used is None else min(k, max(self.budget - self.used - 1, 0))

    def accept(self, token: int) -> None:
        """Count a token the sequence drew."""
        if self.done:
            return
        if self.used is None:
            if token == self.start_id:
                self.used = 0
        elif token == self.end_id:
            self.used, self.done = None, True
        else:
            self.used += 1
