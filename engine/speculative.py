"""Speculative decoding: guess a sequence's next few tokens cheaply, then check them all in one forward.

A proposer (`ngram_proposal`: the tokens that followed the last earlier occurrence of the sequence's latest n-gram;
or a smaller draft model's greedy guesses, engine/draft_model.py) drafts up to k tokens for a decoding sequence.
The scheduler appends them to its step (`SchedulerOutput.draft_token_ids`), so the target model computes k + 1
positions of it at once, like a short prefill chunk, and the sampler draws a token at each of them, at the position
each would have had without speculation. Drafts are accepted while they equal the token drawn at their position;
the first draw that differs (or the one after the last draft) is kept too. So one step yields 1 to k + 1 tokens.

Why this is exact: the drafts are a deterministic guess, and row j is sampled from the target's distribution
given the tokens before it, which are the real ones as long as every earlier draft was accepted. Accepting the
draft d when the draw equals it, and keeping the draw when it does not, is rejection sampling with a proposal that
puts all its mass on d (accept with probability p(d), else draw from p without d, renormalised), and it draws the
same token as the step without speculation would: the draw depends only on (seed, position). Output is therefore
token-identical with and without speculation, greedy or sampled, whatever the batch, so the gate below may switch
speculation on and off freely.

Not every sequence speculates: structured outputs (the grammar must see each token first), penalties and bad_words
(they depend on the tokens before each row) and sequences still under `min_tokens` decode one token at a time. A
thinking budget's count decides which token a row must draw, and the sampler reads it as it was before the step:
its drafts stop before a `<think>` that would open the thinking and, while it is open, before the budget's end
(`ThinkingBudget.verifiable`, engine/thinking.py).

`SpeculationGate` (engine/speculation_gate.py) switches speculation off for a step when it would not pay: verifying
k drafts costs k more tokens of compute per sequence, which is nearly free for a small batch and not for a large
one. It keeps the mean acceptance and the measured cost of a step's tokens, and speculates when the expected tokens
per second are higher with it; in a closed batch (LLM.generate's), when the steps its slowest sequences gain save
more than the drafts cost.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from engine.sequence import Sequence
from engine.speculation_gate import SpeculationGate

METHODS = {"ngram": ("prompt_lookup_max", "prompt_lookup_min"), "draft_model": ("model",)}   # and their keys


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    """`LLM(speculative_config={...})`, vLLM's keys: the method and how many tokens it drafts per step. "ngram":
    the lengths of the suffix it looks up (vLLM's defaults: 5 and 5, or the one given for both). "draft_model":
    the checkpoint of the draft model (`model`), which must share the target's vocabulary."""

    method: str
    num_speculative_tokens: int
    prompt_lookup_max: int = 0
    prompt_lookup_min: int = 0
    model: str | None = None

    @classmethod
    def parse(cls, value: dict | SpeculativeConfig | None) -> SpeculativeConfig | None:
        """A config from the user's dict (ValueError for what it cannot honour), or None for no speculation."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a dict, got {type(value).__name__}")
        method = value.get("method")
        if method not in METHODS:
            raise ValueError(f"speculative_config: method must be one of {list(METHODS)}, got {method!r}")
        known = {"method", "num_speculative_tokens", *METHODS[method]}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config: unsupported keys {unknown} for method {method!r} (supported: "
                             f"{sorted(known)})")
        numbers = {"num_speculative_tokens": value.get("num_speculative_tokens")}
        if method == "ngram":
            high, low = value.get("prompt_lookup_max"), value.get("prompt_lookup_min")
            numbers["prompt_lookup_max"] = high if high is not None else 5 if low is None else low
            numbers["prompt_lookup_min"] = low if low is not None else numbers["prompt_lookup_max"]
        for name, number in numbers.items():
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError(f"speculative_config: {name} must be an integer >= 1, got {number!r}")
        if numbers.get("prompt_lookup_min", 0) > numbers.get("prompt_lookup_max", 0):
            raise ValueError(f"speculative_config: prompt_lookup_min {numbers['prompt_lookup_min']} must be <= "
                             f"prompt_lookup_max {numbers['prompt_lookup_max']}")
        model = value.get("model")
        if method == "draft_model" and not (isinstance(model, str) and (Path(model) / "config.json").is_file()):
            raise ValueError(f"speculative_config: model must be a checkpoint directory with a config.json, got "
                             f"{model!r}")
        return cls(method, model=model, **numbers)


def ngram_proposal(tokens: list[int], k: int, low: int, high: int, data: bytes | bytearray | None = None) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the longest suffix of `tokens` of `low` to
    `high` tokens (empty if none occurred). The search runs over the tokens' bytes (int32 each), in C; `data`, those
    bytes if the caller keeps them (converting the list is most of a search's time: 17 of 20 us at 1,000 tokens)."""
    total = len(tokens)
    if total <= low or k < 1:
        return []
    if data is None:
        data = array("i", tokens).tobytes()
    end = (total - 1) * 4                  # the occurrence must be followed by a token
    for n in range(min(high, total - 1), low - 1, -1):
        pattern = data[-4 * n:]
        at = data.rfind(pattern, 0, end)
        while at > 0 and at % 4:           # a match across token boundaries: look further back
            at = data.rfind(pattern, 0, at + len(pattern) - 1)
        if at >= 0 and at % 4 == 0:
            start = at // 4 + n
            return tokens[start:start + k]
    return []


def _tokens_left(seq: Sequence) -> int:
    """The most tokens `seq` may still generate."""
    return seq.max_tokens - seq.num_output_tokens


def accepted_length(drafts: list[int], drawn: list[int]) -> int:
    """How many leading drafts equal the tokens drawn at their positions (`drawn` has one more row)."""
    n = 0
    while n < len(drafts) and drafts[n] == drawn[n]:
        n += 1
    return n


def _verifiable(seq: Sequence, drafts: list[int]) -> list[int]:
    """The leading drafts a step may verify for `seq` (all of them without a thinking budget)."""
    return drafts if seq.thinking is None else seq.thinking.verifiable(drafts)


def can_speculate(seq: Sequence) -> bool:
    """Whether `seq` is decoding and its sampling allows drafts (see the module docstring)."""
    params = seq.params
    return (seq.num_computed_tokens == seq.num_tokens - 1 and seq.matcher is None and not params.has_penalties
            and seq.num_output_tokens >= params.min_tokens and not seq.request.bad_words_token_ids)


class Speculation:
    """The engine's speculative decoding: drafts for the running sequences before each step (as many as the gate
    allows), from n-grams or from a draft model (`draft`, engine/draft_model.py), and what verification accepted,
    for the gate and the metrics."""

    def __init__(self, config: SpeculativeConfig, draft=None) -> None:
        self.config = config
        self.draft = draft
        self.gate = SpeculationGate()
        self.num_drafts = 0                 # sequences that verified drafts
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self._slowest: list[Sequence] | None = None     # in a closed batch, the sequences with the most tokens left
        self._batch = 0
        self._propose_s: float | None = None             # this step's search for drafts (None: none)
        self._picked: list[Sequence] = []                # the sequences given drafts this step
        self._token_bytes: dict[int, bytearray] = {}     # per sequence id, its tokens as int32 bytes so far
        self._moves: dict[int, float] = {}      # per sequence id, how often it moved when slowest, recently

    def propose(self, running: list[Sequence], reserve: Callable[[Sequence, int], bool],
                waiting: Collection[Sequence] = (), max_num_seqs: int | None = None, closed: bool = False) -> None:
        """Set the draft tokens of the decoding sequences that may draft this step (the oldest first), with
        `waiting` sequences queued for a batch of at most `max_num_seqs` (default: no limit). A draft model first
        needs `reserve(seq, tokens)` to give the sequence blocks for the KV of its guesses. The gate learns the
        time proposing takes.

        `closed`: no request joins until these finish (LLM.generate). Once every waiting sequence has a place in
        the batch, nothing is let in when a sequence ends early: the batch ends with its slowest sequences, those
        with the most tokens left, and a token gained by any other saves nothing but its own compute, which
        verifying its drafts costs. So only the sequences within `num_speculative_tokens` of the most tokens left
        (waiting ones included) may draft, and the gate weighs the steps the slowest gain (`observe`)."""
        cfg = self.config
        for seq in self._picked:            # a guess the scheduler had no room for last step is not this step's
            seq.draft_token_ids = []
        self._picked = []
        queued = len(running) + len(waiting)
        self._batch = min(queued, max_num_seqs or queued)
        self._slowest = None
        self._propose_s = None
        closed = closed and queued <= self._batch
        if closed and any(map(can_speculate, running)) and self.gate.closed_idle():
            return
        decoding = [seq for seq in running if can_speculate(seq)]
        if closed and decoding:
            left = {seq: _tokens_left(seq) for seq in (*running, *waiting)}
            most = max(left.values())
            self._slowest = [seq for seq, n in left.items() if n == most]
            decoding = [seq for seq in decoding if left[seq] > most - cfg.num_speculative_tokens]
        allowed = self.gate.allowed(len(decoding), self._batch, self._slowest is not None) if decoding else 0
        started = time.perf_counter()
        picked, ks = [], []
        for seq in decoding:
            if len(picked) == allowed:
                break
            k = min(cfg.num_speculative_tokens, seq.max_tokens - seq.num_output_tokens - 1)
            if seq.thinking is not None:
                k = seq.thinking.room(k)
            if k < 1:
                continue
            if self.draft is None:
                drafts = ngram_proposal(seq.token_ids, k, cfg.prompt_lookup_min, cfg.prompt_lookup_max,
                                        self._bytes_of(seq, running))
                seq.draft_token_ids = _verifiable(seq, drafts)
                if seq.draft_token_ids:
                    picked.append(seq)
            elif reserve(seq, seq.num_tokens + k - 1):
                picked.append(seq)
                ks.append(k)
        if self.draft is not None and picked:
            for seq, drafts in zip(picked, self.draft.propose(picked, ks)):
                seq.draft_token_ids = _verifiable(seq, drafts)
            picked = [seq for seq in picked if seq.draft_token_ids]
        self._propose_s = time.perf_counter() - started if allowed else None
        self._picked = picked
        if picked:
            self.gate.observe_proposal(len(picked), self._propose_s)

    def _bytes_of(self, seq: Sequence, running: list[Sequence]) -> bytearray:
        """`seq`'s tokens as int32 bytes, extended by the tokens it gained since the last search (a sequence's
        tokens only grow). Sequences no longer running are dropped once they outnumber the running ones."""
        known = self._token_bytes.get(seq.seq_id)
        if known is None:
            if len(self._token_bytes) > 2 * len(running) + 64:
                alive = {s.seq_id for s in running}
                self._token_bytes = {i: b for i, b in self._token_bytes.items() if i in alive}
            known = self._token_bytes[seq.seq_id] = bytearray()
        count = len(known) // 4
        if count < len(seq.token_ids):
            known += array("i", seq.token_ids[count:]).tobytes()
        return known

    def observe(self, tokens: int, seconds: float, seqs: list[Sequence], drafts: list[list[int]],
                accepted: list[int]) -> None:
        """A step of `tokens` tokens took `seconds`; its sampled sequences `seqs` had `drafts` and accepted as many.
        In a closed batch, after a search for drafts, the gate also learns the step's gain, its rejected drafts and
        its search's time. The gain is the fewest tokens any of the slowest sequences accepted if all of them
        accepted some. Else it is a part of a step: a slowest sequence that moves ahead stays ahead, and the batch
        gains the step once the last of them has moved, so the part is the chance that the least likely of them
        moves on a step, each one's share of the recent steps it drafted in while slowest on which it did (`_moves`).
        (Counting only whole steps, a batch of 32 equal sequences, all slowest at first, saw no gain in its first
        probes and switched drafting off for a whole run of a code workload; counting the share of the slowest that
        moved, drafting went on in a random workload whose slowest sequences never moved.)"""
        if self._propose_s is None and not any(drafts):    # no search, no drafts: only the step's time to learn
            self.gate.observe_step(tokens, len(drafts), seconds)
            return
        self.gate.observe_step(tokens, len(drafts) + sum(map(len, drafts)), seconds)
        drafted = 0
        for proposed, n in zip(drafts, accepted):
            if proposed:
                drafted += len(proposed)
                self.num_drafts += 1
                self.num_accepted_tokens += n
        self.num_draft_tokens += drafted
        self.gate.observe_acceptance(sum(map(bool, drafts)), drafted, sum(accepted))
        if self._slowest is not None and self._propose_s is not None:
            by_seq = dict(zip(seqs, accepted))
            gains = [by_seq.get(seq, 0) for seq in self._slowest]
            if len(self._moves) > 2 * len(seqs) + 64:
                self._moves = {seq.seq_id: self._moves.get(seq.seq_id, 1.0) for seq in self._slowest}
            for seq, n in zip(self._slowest, gains):
                self._moves[seq.seq_id] = 0.5 * self._moves.get(seq.seq_id, 1.0) + (0.5 if n else 0.0)
            gained = min(gains) if all(gains) else min(self._moves[seq.seq_id] for seq in self._slowest)
            self.gate.observe_closed_step(gained, drafted - sum(accepted), self._propose_s)

    def counters(self) -> dict[str, int]:
        """The totals, under EngineStats' names."""
        return {"spec_num_drafts": self.num_drafts, "spec_num_draft_tokens": self.num_draft_tokens,
                "spec_num_accepted_tokens": self.num_accepted_tokens}
