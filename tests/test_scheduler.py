"""The scheduler's output record: what each stage needs from a step travels in it."""

from __future__ import annotations

from engine.block_manager import BlockManager
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
