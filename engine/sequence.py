"""Records of the work in flight: a Request (one prompt) and its Sequences (one per choice)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum

from engine.outputs import PositionLogprobs
from engine.sampling_params import SamplingParams
from engine.thinking import ThinkingBudget
from engine.tokenizer import IncrementalDetokenizer

_MASK64 = (1 << 64) - 1


class SequenceStatus(Enum):
    """WAITING: queued or preempted. RUNNING: has KV blocks. FINISHED: done, blocks returned."""

    WAITING = 0
    RUNNING = 1
    FINISHED = 2


def derive_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request seeded with `seed` (choice 0 uses the seed itself), as the signed
    int64 with the same 64 bits, which the sampler's seed tensor holds."""
    if index != 0:
        x = (seed * 0x9E3779B97F4A7C15 + index * 0xD1B54A32D192ED03) & _MASK64
        x = ((x ^ (x >> 29)) * 0xBF58476D1CE4E5B9) & _MASK64
        seed = x ^ (x >> 32)
    seed &= _MASK64
    return seed - (1 << 64) if seed >= 1 << 63 else seed


@dataclass(slots=True, eq=False)
class Sequence:
    """One choice of a request: its tokens, its place in the KV cache and its decoded output so far."""

    seq_id: int
    request: Request
    index: int
    token_ids: list[int]
    seed: int                                     # a signed int64 (derive_seed)
    max_tokens: int                               # new tokens allowed, already capped by the context length
    detokenizer: IncrementalDetokenizer
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0                  # tokens whose KV is in the cache
    block_table: list[int] = field(default_factory=list)
    table_row: int = -1                           # its row in the block manager's BlockTables (-1: no blocks)
    block_hashes: list[int] = field(default_factory=list)   # chained hashes of the full blocks computed
    num_preemptions: int = 0
    matcher: object | None = None                 # its structured output's GrammarState (engine/structured_output)
    thinking: ThinkingBudget | None = None        # its thinking_token_budget's state (engine/thinking.py)
    next_prompt_logprob: int = 1                  # the scheduler's: first prompt position whose logprob is due
    draft_token_ids: list[int] = field(default_factory=list)   # the proposer's guess at the next tokens
    text: str = ""
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    # What the last streamed output already carried (delta outputs start from here).
    sent_text: int = 0
    sent_tokens: int = 0
    finish_sent: bool = False
    # Copied from the request, because every step reads them for every sequence.
    params: SamplingParams = field(init=False)
    num_prompt_tokens: int = field(init=False)
    # Whether its text is needed as it grows (it is streamed, or stop strings are searched in it); if not, the
    # output processor detokenizes its tokens all at once when it finishes.
    text_each_step: bool = field(init=False)

    def __post_init__(self) -> None:
        self.params = self.request.params
        self.num_prompt_tokens = len(self.request.prompt_token_ids)
        self.text_each_step = self.params.detokenize and (self.request.stream or bool(self.params.stop))

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        """The generated tokens."""
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def finished(self) -> bool:
        """Whether the sequence has ended."""
        return self.status is SequenceStatus.FINISHED


@dataclass(slots=True, eq=False)
class Request:
    """One prompt and its `n` choices, as the engine tracks it from add_request to its final output."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    stream: bool
    arrival_time: float = field(default_factory=time.monotonic)
    seqs: list[Sequence] = field(default_factory=list)
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    prompt_logprobs_sent: bool = False
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None     # time.monotonic(), as arrival_time and first_token_time
    first_token_time: float | None = None
    grammar: Future | None = None                 # the compiled structured-output grammar, while it compiles
    bad_words_token_ids: list[list[int]] = field(default_factory=list)   # params.bad_words, tokenized

    @property
    def finished(self) -> bool:
        """Whether every choice has ended."""
        for seq in self.seqs:  # noqa: SIM110 (a loop, 3x faster than all(): asked of every streamed request every step)
            if seq.status is not SequenceStatus.FINISHED:
                return False
        return True
