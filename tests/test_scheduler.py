"""The scheduler's output record: what each stage needs from a step travels in it."""

from __future__ import annotations

import random

import numpy as np

from engine.block_manager import BlockManager
from engine.block_tables import BlockTables
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Request, Sequence


def _prompt_logprob_seq(num_tokens: int) -> Sequence:
    request = Request("r", None, list(range(num_tokens)), SamplingParams(max_tokens=1, prompt_logprobs=0), stream=False)
    seq = Sequence(0, request, 0, list(range(num_tokens)), seed=0, max_tokens=1, detokenizer=None)
    request.seqs.append(seq)
    return seq


def test_prompt_logprob_positions_travel_in_the_output_and_survive_preemption():
    """Each prompt position 1..P-1 is due exactly once, in chunks, and a preempted sequence that recomputes its
    prompt does not compute them again. The scheduler decides from its own counter: the output processor's list
    of logprobs (`request.prompt_logprobs`, None here) is not read by the scheduler or the runner."""
    scheduler = Scheduler(BlockManager(16, 4, enable_prefix_caching=True), max_num_seqs=4, max_num_batched_tokens=5)
    seq = _prompt_logprob_seq(12)
    scheduler.add(seq)
    due = []
    for _ in range(2):
        out = scheduler.schedule()
        assert out.seqs == [seq]
        due.append(out.prompt_logprob_positions[0])
        scheduler.update(out)
    assert due == [range(1, 6), range(6, 11)]
    scheduler.running.remove(seq)
    scheduler._preempt(seq)
    for expected in (range(0), range(0), range(11, 12)):
        out = scheduler.schedule()
        assert [len(p) for p in out.prompt_logprob_positions] == [len(expected)]
        if expected:
            assert out.prompt_logprob_positions[0] == expected
        scheduler.update(out)
    assert seq.num_computed_tokens == 12 and seq.next_prompt_logprob == 12
    seq.token_ids.append(99)                                              # the token the last chunk drew
    out = scheduler.schedule()
    assert out.num_new_tokens == [1] and not out.prompt_logprob_positions[0]     # a decode: none due


def _padded(seqs: list[Sequence]) -> list[list[int]]:
    width = max(len(seq.block_table) for seq in seqs)
    return [seq.block_table + [0] * (width - len(seq.block_table)) for seq in seqs]


def test_gathered_block_tables_are_the_sequences_lists_through_preemption_and_growth():
    """Each step's `block_tables` (rows of the block manager's persistent array) equal the sequences' own lists
    padded with block 0, while sequences grow, are preempted (their rows freed and zeroed), resume into other rows
    and finish; the array starts at 2 x 2 so that rows and columns grow."""
    rng = random.Random(0)
    manager = BlockManager(20, 4, enable_prefix_caching=True)
    manager.tables = BlockTables(rows=2, width=2)
    scheduler = Scheduler(manager, max_num_seqs=6, max_num_batched_tokens=24)
    shared = [rng.randrange(50) for _ in range(9)]
    for i in range(10):
        tokens = shared + [rng.randrange(50) for _ in range(rng.randint(1, 20))]
        request = Request(f"r{i}", None, tokens, SamplingParams(max_tokens=30), stream=False)
        seq = Sequence(i, request, 0, list(tokens), seed=0, max_tokens=30, detokenizer=None)
        request.seqs.append(seq)
        scheduler.add(seq)
    steps = 0
    while scheduler.has_work:
        out = scheduler.schedule()
        assert out.block_tables.dtype == np.int32
        assert out.block_tables.tolist() == _padded(out.seqs)
        scheduler.update(out)
        for seq in out.seqs:
            if seq.num_computed_tokens == seq.num_tokens:            # sampled: one more token, or done
                if seq.num_tokens - seq.num_prompt_tokens >= rng.randint(5, 30):
                    scheduler.finish(seq)
                else:
                    seq.token_ids.append(rng.randrange(50))
        steps += 1
    assert scheduler.num_preemptions > 0 and manager.tables.array.shape[0] > 2 and manager.tables.array.shape[1] > 2
    assert not manager.tables.array.any()                         # every row zeroed once its blocks went back
    assert sorted(manager.tables._free_rows) == list(range(manager.tables.array.shape[0]))
