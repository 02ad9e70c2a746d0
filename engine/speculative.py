"""Speculative decoding: guess a sequence's next few tokens cheaply, then check them all in one forward.

A proposer (`ngram_proposal`: the tokens that followed the last earlier occurrence of the sequence's latest n-gram)
drafts up to k tokens for a decoding sequence. The scheduler appends them to its step (`SchedulerOutput.
draft_token_ids`), so the target model computes k + 1 positions of it at once, like a short prefill chunk, and the
sampler draws a token at each of them, at the position each would have had without speculation. Drafts are
accepted while they equal the token drawn at their position; the first draw that differs (or the one after the
last draft) is kept too. So one step yields 1 to k + 1 tokens.

Why this is exact: the drafts are a deterministic guess, and row j is sampled from the target's distribution
given the tokens before it, which are the real ones as long as every earlier draft was accepted. Accepting the
draft d when the draw equals it, and keeping the draw when it does not, is rejection sampling with a proposal that
puts all its mass on d (accept with probability p(d), else draw from p without d, renormalised), and it draws the
same token as the step without speculation would: the draw depends only on (seed, position). Output is therefore
token-identical with and without speculation, greedy or sampled, whatever the batch, so the gate below may switch
speculation on and off freely.

Not every sequence speculates: structured outputs (the grammar must see each token first), penalties (they
depend on the tokens before each row) and sequences still under `min_tokens` decode one token at a time.

`SpeculationGate` switches speculation off for a step when it would not pay: verifying k drafts costs k more
tokens of compute per sequence, which is nearly free for a small batch and not for a large one. It keeps the mean
acceptance and the measured cost of a step's tokens, and speculates when the expected tokens per second are
higher with it.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from engine.sequence import Sequence

METHODS = ("ngram",)


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    """`LLM(speculative_config={...})`: the method and how many tokens it drafts per step. For "ngram", the
    lengths of the suffix it looks up (vLLM's defaults: 5 and 5, or the one given for both)."""

    method: str
    num_speculative_tokens: int
    prompt_lookup_max: int
    prompt_lookup_min: int

    @classmethod
    def parse(cls, value: dict | SpeculativeConfig | None) -> SpeculativeConfig | None:
        """A config from the user's dict (ValueError for what it cannot honour), or None for no speculation."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a dict, got {type(value).__name__}")
        known = {"method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config: unsupported keys {unknown} (supported: {sorted(known)})")
        method = value.get("method")
        if method not in METHODS:
            raise ValueError(f"speculative_config: method must be one of {list(METHODS)}, got {method!r}")
        k = value.get("num_speculative_tokens")
        high, low = value.get("prompt_lookup_max"), value.get("prompt_lookup_min")
        high, low = high or low or 5, low or high or 5
        for name, number in (("num_speculative_tokens", k), ("prompt_lookup_max", high), ("prompt_lookup_min", low)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError(f"speculative_config: {name} must be an integer >= 1, got {number!r}")
        if low > high:
            raise ValueError(f"speculative_config: prompt_lookup_min {low} must be <= prompt_lookup_max {high}")
        return cls(method, k, high, low)


def ngram_proposal(tokens: list[int], k: int, low: int, high: int) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the longest suffix of `tokens` of `low` to
    `high` tokens (empty if none occurred). The search runs over the tokens' bytes (int32 each), in C."""
    total = len(tokens)
    if total <= low or k < 1:
        return []
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


def accepted_length(drafts: list[int], drawn: list[int]) -> int:
    """How many leading drafts equal the tokens drawn at their positions (`drawn` has one more row)."""
    n = 0
    while n < len(drafts) and drafts[n] == drawn[n]:
        n += 1
    return n


def can_speculate(seq: Sequence) -> bool:
    """Whether `seq` is decoding and its sampling allows drafts (see the module docstring)."""
    params = seq.params
    return (seq.num_computed_tokens == seq.num_tokens - 1 and seq.matcher is None and not params.has_penalties
            and seq.num_output_tokens >= params.min_tokens)


class SpeculationGate:
    """Decides, step by step, how many decoding sequences may draft. Step time is modelled as fixed + per_token *
    tokens, fitted on the recent decoding steps; a draft token costs per_token and is accepted with rate r
    (accepted over drafted, recently). Drafting pays when its extra tokens per extra second beat the step's rate
    without it: r / per_token > batch / (fixed + per_token * batch). A small batch pays at almost any r (the fixed cost
    dominates), a large one only at a high r. While it does not pay, one sequence in every `PROBE_EVERY` steps
    still drafts, to keep r current at a cost of a few tokens."""

    PROBE_EVERY = 8

    def __init__(self) -> None:
        self.fixed_s: float | None = None
        self.per_token_s: float | None = None
        self._samples: list[tuple[int, float]] = []
        self._accepted = 1.0             # decayed counts, a prior of one accepted draft in two
        self._drafted = 2.0
        self._steps = 0

    @property
    def acceptance(self) -> float:
        """Accepted over drafted tokens, recently."""
        return self._accepted / self._drafted

    def allowed(self, batch: int) -> int:
        """How many of `batch` decoding sequences may draft this step."""
        self._steps += 1
        if self.fixed_s is None or self.pays(batch):
            return batch
        return 1 if self._steps % self.PROBE_EVERY == 0 else 0

    def pays(self, batch: int) -> bool:
        """Whether drafting gives a batch of `batch` decoding sequences more tokens per second."""
        return self.acceptance * (self.fixed_s + self.per_token_s * batch) > batch * self.per_token_s

    def observe_step(self, tokens: int, rows: int, seconds: float) -> None:
        """A step that computed `tokens` tokens and drew `rows` of them took `seconds`: refit the time model on the
        recent steps that only decoded or verified (every token drawn, as a draft token is; a prefill chunk's
        tokens cost less, having no logits)."""
        if tokens != rows:
            return
        self._samples.append((tokens, seconds))
        del self._samples[:-64]
        n = len(self._samples)
        mean_t = sum(t for t, _ in self._samples) / n
        var = sum((t - mean_t) ** 2 for t, _ in self._samples)
        if var == 0:
            return
        mean_s = sum(s for _, s in self._samples) / n
        slope = sum((t - mean_t) * (s - mean_s) for t, s in self._samples) / var
        self.per_token_s = max(slope, 1e-9)
        self.fixed_s = max(mean_s - self.per_token_s * mean_t, 1e-9)

    def observe_acceptance(self, drafted: int, accepted: int) -> None:
        """Verification accepted `accepted` of `drafted` draft tokens."""
        if drafted:
            self._accepted = 0.95 * self._accepted + accepted
            self._drafted = 0.95 * self._drafted + drafted


class Speculation:
    """The engine's speculative decoding: drafts for the running sequences before each step (as many as the gate
    allows), and what verification accepted, for the gate and the metrics."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.gate = SpeculationGate()
        self.num_drafts = 0                 # sequences that verified drafts
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_position = [0] * config.num_speculative_tokens

    def propose(self, running: list[Sequence]) -> None:
        """Set the draft tokens of the decoding sequences that may draft this step (the oldest first)."""
        decoding = [seq for seq in running if can_speculate(seq)]
        allowed = self.gate.allowed(len(decoding)) if decoding else 0
        cfg = self.config
        for seq in decoding:
            if not allowed:
                break
            k = min(cfg.num_speculative_tokens, seq.max_tokens - seq.num_output_tokens - 1)
            seq.draft_token_ids = ngram_proposal(seq.token_ids, k, cfg.prompt_lookup_min, cfg.prompt_lookup_max)
            allowed -= bool(seq.draft_token_ids)

    def observe(self, tokens: int, seconds: float, drafts: list[list[int]], accepted: list[int]) -> None:
        """A step of `tokens` tokens took `seconds`; its sampled sequences had `drafts` and accepted as many."""
        self.gate.observe_step(tokens, len(drafts) + sum(map(len, drafts)), seconds)
        drafted = 0
        for proposed, n in zip(drafts, accepted):
            if proposed:
                drafted += len(proposed)
                self.num_drafts += 1
                self.num_accepted_tokens += n
                for position in range(n):
                    self.accepted_per_position[position] += 1
        self.num_draft_tokens += drafted
        self.gate.observe_acceptance(drafted, sum(accepted))

    def counters(self) -> dict[str, int]:
        """The totals, under EngineStats' names."""
        return {"spec_num_drafts": self.num_drafts, "spec_num_draft_tokens": self.num_draft_tokens,
                "spec_num_accepted_tokens": self.num_accepted_tokens}
