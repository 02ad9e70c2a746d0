"""A thinking budget (vLLM's `thinking_token_budget`, Anthropic's `thinking.budget_tokens`): once a sequence has
thought for `budget` tokens, its next token is `</think>`.

A model thinks between a `<think>` and a `</think>` token of its vocabulary (Qwen3's, DeepSeek R1's). The thinking
is open from the first generated token when the prompt's last `<think>` has no `</think>` after it (templates that
open it for the model), or else from a drawn `<think>`. Each token drawn while it is open counts; the `<think>`
that opens it does not. When the count reaches the budget, the sampler draws `</think>` whatever the logits say
(after every other mask: the budget wins). The first `</think>`, drawn or forced, ends the budget's part: the
reply that follows is not limited by it.

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


def is_open(prompt: list[int], ids: tuple[int, int]) -> bool:
    """Whether `prompt` leaves a thinking open: its last `<think>` has no `</think>` after it (a template that
    writes `<think>` for the model, as Qwen3.5's and Qwen3's Thinking-2507 models' do)."""
    start, end = ids
    for token in reversed(prompt):
        if token == end:
            return False
        if token == start:
            return True
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
    def for_prompt(cls, prompt: list[int], ids: tuple[int, int], budget: int) -> ThinkingBudget:
        """The budget of a sequence that starts after `prompt` (thinking open if the prompt left it open)."""
        return cls(*ids, budget, 0 if is_open(prompt, ids) else None)

    def forced(self) -> int | None:
        """`</think>` when the budget is spent and the thinking still open, else None."""
        return self.end_id if self.used is not None and self.used >= self.budget else None

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
