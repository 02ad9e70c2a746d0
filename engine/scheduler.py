"""Continuous batching with chunked prefill and preemption by recompute.

Every step has a token budget (`max_num_batched_tokens`). A sequence is just "tokens known" versus "tokens
whose KV is computed"; a step gives each sequence a number of new tokens to compute, so decodes (1 token),
prefill chunks and resumed sequences mix freely in one batch:

1. Running sequences first, oldest first: each gets all its uncomputed tokens, up to the budget. When its
   blocks cannot grow, the newest running sequence is preempted (its blocks freed, its tokens kept) until
   they can; it may be the sequence itself.
2. Then, if nothing was preempted, waiting sequences in arrival order (preempted ones at the front), while
   the budget, `max_num_seqs` and the free blocks allow. A new sequence starts after its longest cached
   prefix. A preempted one recomputes its prompt and output as a prefill and goes on exactly where it
   stopped: sampling depends only on (seed, position), so nothing it produces changes.

With speculative decoding (engine/speculative.py), a decoding sequence may carry draft tokens: once every
running sequence has its tokens, those left in the budget go to drafts, as far as free blocks allow without
preempting anything. Drafts are computed like known tokens; `update()` learns how many were rejected and counts
only the rest as computed (their KV slots are overwritten later).

`schedule()` returns plain data (a SchedulerOutput, the step's block tables gathered into one array); the engine
runs it and reports back with `update()`, which is when the computed blocks enter the prefix cache.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.block_manager import BlockManager
from engine.sequence import Sequence, SequenceStatus

_NO_POSITIONS = range(0)


@dataclass(slots=True)
class SchedulerOutput:
    """The sequences of one step and how many new tokens each computes (its draft tokens included), in batch
    order, the draft tokens each verifies after its known ones, and for each the prompt positions whose logprobs the
    step computes (empty unless it wants prompt logprobs; row t predicts token t + 1), and their block tables, rows
    of int32 padded with block 0 to the widest (None until `schedule` returns)."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    draft_token_ids: list[list[int]] = field(default_factory=list)
    prompt_logprob_positions: list[range] = field(default_factory=list)
    block_tables: np.ndarray | None = None
    num_preempted: int = 0
    prefix_queries: int = 0      # prompt tokens of the sequences first admitted this step
    prefix_hits: int = 0         # ... whose KV they took from the prefix cache (or a sibling)

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step."""
        return sum(self.num_new_tokens)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        """Schedule `num_new_tokens` of `seq`."""
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.draft_token_ids.append([])
        positions = _NO_POSITIONS
        if seq.params.prompt_logprobs is not None and needs_prompt_logprobs(seq):
            end = seq.num_computed_tokens + num_new_tokens
            positions = range(max(seq.num_computed_tokens + 1, seq.next_prompt_logprob),
                              min(end, seq.num_prompt_tokens - 1) + 1)
        self.prompt_logprob_positions.append(positions)


class Scheduler:
    """Decides, step by step, which sequences run and how many of their tokens each computes."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # Blocks kept free when admitting new work, so that running sequences can grow a little.
        self.admission_reserve = block_manager.num_blocks // 100
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        """Whether any sequence is waiting or running."""
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's sequences and token counts, allocating the blocks they need."""
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            count = min(len(seq.token_ids) - seq.num_computed_tokens, budget)
            end = seq.num_computed_tokens + count
            if not self.blocks.fits(seq, end):          # most decode steps fit in the blocks a sequence holds
                if not self._make_room(seq, end, out):
                    break
                self.blocks.allocate(seq, end)
            out.add(seq, count)
            budget -= count
            i += 1
        budget -= self._add_drafts(out, budget)
        while (not out.num_preempted and self.waiting and budget > 0
               and len(self.running) < self.max_num_seqs):
            seq = self.waiting[0]
            if seq.index > 0 and needs_prompt_logprobs(seq.request.seqs[0]):
                break       # the prompt logprobs come first, so a streamed request sends them whole
            cached, shared = ([], False) if needs_prompt_logprobs(seq) else self._prefix(seq, out)
            start = len(cached) * self.blocks.block_size
            count = min(seq.num_tokens - start, budget)
            reserve = self.admission_reserve if self.running else 0
            if not self.blocks.can_allocate(seq, start + count, cached, reserve):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq, start + count, cached)
            if seq.request.first_scheduled_time is None:
                seq.request.first_scheduled_time = time.monotonic()
            if seq.num_preemptions == 0 and not shared:     # a sibling's shared blocks are no cache lookup
                # A later choice may find in the cache the blocks its first choice computed: no hit of the request
                # beyond what the first choice found there.
                hits = start if seq.index == 0 else min(start, seq.request.num_cached_tokens)
                seq.request.num_cached_tokens = max(seq.request.num_cached_tokens, hits)
                out.prefix_queries += seq.num_tokens
                out.prefix_hits += hits
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.add(seq, count)
            budget -= count
        if out.seqs:
            out.block_tables = self.blocks.tables.gather(out.seqs)
        return out

    def _add_drafts(self, out: SchedulerOutput, budget: int) -> int:
        """Extend the step's decoding sequences by their draft tokens, within `budget` and the blocks free beyond
        the admission reserve; return the tokens added. Each sequence's drafts are consumed either way."""
        added = 0
        for i, seq in enumerate(out.seqs):
            if not seq.draft_token_ids:
                continue
            drafts, seq.draft_token_ids = seq.draft_token_ids, []
            if out.num_new_tokens[i] != seq.num_tokens - seq.num_computed_tokens:
                continue
            drafts = drafts[:budget - added]
            end = seq.num_computed_tokens + out.num_new_tokens[i] + len(drafts)
            if not drafts or not self.reserve(seq, end):
                continue
            out.num_new_tokens[i] += len(drafts)
            out.draft_token_ids[i] = drafts
            added += len(drafts)
        return added

    def reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for `num_tokens` tokens of running `seq`, if the free blocks beyond the admission reserve allow:
        the KV of draft tokens, written ahead of the sequence by the step that verifies them or by a draft model.
        Whether it has them now."""
        if self.blocks.fits(seq, num_tokens):
            return True
        if not self.blocks.can_allocate(seq, num_tokens, reserve=self.admission_reserve):
            return False
        self.blocks.allocate(seq, num_tokens)
        return True

    def _prefix(self, seq: Sequence, out: SchedulerOutput) -> tuple[list[int], bool]:
        """The blocks `seq` starts from: the longer of its cached prefix and, for a later choice of a prompt,
        the prompt blocks its first choice has computed or computes in this step (`out`); and whether they are
        the latter (shared, not found in the cache)."""
        cached = self.blocks.find_cached_prefix(seq)
        first = seq.request.seqs[0]
        if seq.index == 0 or first.finished or not first.block_table:
            return cached, False
        covered = first.num_computed_tokens + sum(n for s, n in zip(out.seqs, out.num_new_tokens) if s is first)
        shared = self.blocks.sibling_prefix(seq, first, covered)
        return (shared, True) if len(shared) > len(cached) else (cached, False)

    def _make_room(self, seq: Sequence, num_tokens: int, out: SchedulerOutput) -> bool:
        """Preempt the newest running sequences until `seq` can hold `num_tokens`; False if `seq` itself was."""
        while not self.blocks.can_allocate(seq, num_tokens):
            victim = self.running.pop()
            self._preempt(victim)
            out.num_preempted += 1
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free_seq(seq)
        seq.num_computed_tokens = 0
        seq.draft_token_ids = []
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def update(self, out: SchedulerOutput, rejected: list[int] | None = None) -> None:
        """Record that the step's tokens were computed, but for the `rejected` draft tokens of each sequence."""
        rejected = rejected or [0] * len(out.seqs)
        for seq, count, positions, wrong in zip(out.seqs, out.num_new_tokens, out.prompt_logprob_positions, rejected):
            seq.num_computed_tokens += count - wrong
            if positions.stop > seq.next_prompt_logprob:
                seq.next_prompt_logprob = positions.stop
        self.blocks.register_computed(out.seqs)

    def finish(self, seq: Sequence) -> None:
        """Take `seq` out of the queues and return its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.blocks.free_seq(seq)
        seq.status = SequenceStatus.FINISHED


def needs_prompt_logprobs(seq: Sequence) -> bool:
    """Whether `seq` must still compute logits over prompt positions (so it cannot start from the cache). The first
    choice of a request computes them; a preempted one does not compute them twice."""
    return (seq.index == 0 and seq.params.prompt_logprobs is not None
            and seq.next_prompt_logprob < seq.num_prompt_tokens)
