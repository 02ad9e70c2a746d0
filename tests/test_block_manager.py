"""The block manager: reference counts, prefix-cache hits, collision safety and eviction order."""

from __future__ import annotations

import pytest

import engine.block_manager as bm
from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import Request, Sequence


def make_seq(tokens: list[int], seq_id: int = 0) -> Sequence:
    request = Request(f"r{seq_id}", None, list(tokens), SamplingParams(), stream=False)
    seq = Sequence(seq_id, request, 0, list(tokens), seed=0, max_tokens=16, detokenizer=None)
    request.seqs.append(seq)
    return seq


def admit(manager: BlockManager, seq: Sequence) -> int:
    """Allocate the whole of `seq` after its cached prefix and compute it in one step, as the scheduler and the
    engine do; return the cached tokens."""
    cached = manager.find_cached_prefix(seq)
    assert manager.can_allocate(seq, seq.num_tokens, cached)
    manager.allocate(seq, seq.num_tokens, cached)
    found = len(cached) * manager.block_size
    seq.num_computed_tokens = seq.num_tokens                     # the step ran
    manager.register_computed([seq])
    return found


def test_blocks_enter_the_cache_only_once_computed():
    manager = BlockManager(16, 4, enable_prefix_caching=True)
    first = make_seq(list(range(13)), 0)
    manager.allocate(first, 13)                                  # scheduled, not yet run
    assert manager.find_cached_prefix(make_seq(list(range(13)), 1)) == []
    first.num_computed_tokens = 8                                # a chunk of 8 tokens ran
    manager.register_computed([first])
    assert manager.find_cached_prefix(make_seq(list(range(13)), 2)) == first.block_table[:2]


def test_allocate_and_free_restore_every_block():
    manager = BlockManager(8, 4, enable_prefix_caching=True)
    a, b = make_seq(list(range(10)), 0), make_seq(list(range(100, 107)), 1)
    admit(manager, a)
    admit(manager, b)
    assert len(a.block_table) == 3 and len(b.block_table) == 2
    assert manager.num_free_blocks == 3
    assert set(a.block_table).isdisjoint(b.block_table)
    manager.free_seq(a)
    manager.free_seq(b)
    assert manager.num_free_blocks == 8
    assert all(block.ref_count == 0 for block in manager.blocks)


def test_shared_prefix_is_reused_and_reference_counted():
    manager = BlockManager(16, 4, enable_prefix_caching=True)
    first = make_seq(list(range(13)), 0)              # 3 full blocks + 1 token
    assert admit(manager, first) == 0
    second = make_seq(list(range(12)) + [99, 98], 1)  # same 3 full blocks, different tail
    assert admit(manager, second) == 12
    assert second.block_table[:3] == first.block_table[:3]
    assert [manager.blocks[b].ref_count for b in first.block_table[:3]] == [2, 2, 2]
    manager.free_seq(first)
    assert [manager.blocks[b].ref_count for b in second.block_table[:3]] == [1, 1, 1]
    manager.free_seq(second)
    assert manager.num_free_blocks == 16


def test_last_token_is_never_taken_from_the_cache():
    manager = BlockManager(16, 4, enable_prefix_caching=True)
    tokens = list(range(8))                            # exactly two full blocks
    admit(manager, make_seq(tokens, 0))
    again = make_seq(tokens, 1)
    assert admit(manager, again) == 4                  # the second block holds the last token: recomputed


def test_freed_blocks_are_revived_until_evicted():
    manager = BlockManager(4, 4, enable_prefix_caching=True)
    first = make_seq(list(range(9)), 0)
    admit(manager, first)
    manager.free_seq(first)
    revived = make_seq(list(range(9)), 1)
    assert admit(manager, revived) == 8
    manager.free_seq(revived)
    # Fill the whole cache with other tokens: the cached blocks are evicted, so nothing can hit any more.
    other = make_seq(list(range(500, 516)), 2)
    admit(manager, other)
    manager.free_seq(other)
    assert admit(manager, make_seq(list(range(9)), 3)) == 0


def test_tail_blocks_are_evicted_before_head_blocks():
    manager = BlockManager(6, 4, enable_prefix_caching=True)
    first = make_seq(list(range(13)), 0)               # blocks for 0-3, 4-7, 8-11 cached, plus a partial one
    admit(manager, first)
    manager.free_seq(first)
    # Two fresh blocks are needed: the free queue hands out the never-used ones, then the partial tail block.
    other = make_seq(list(range(100, 106)), 1)
    admit(manager, other)
    assert admit(manager, make_seq(list(range(13)), 2)) == 12   # every cached full block survived


def test_hash_collisions_never_share_wrong_blocks(monkeypatch):
    monkeypatch.setattr(bm, "chain_hash", lambda parent, tokens: 42)   # every block collides
    manager = BlockManager(16, 4, enable_prefix_caching=True)
    admit(manager, make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9], 0))
    assert admit(manager, make_seq([9, 9, 9, 9, 5, 6, 7, 8, 9], 1)) == 0      # same hash, other tokens
    assert admit(manager, make_seq([1, 2, 3, 4, 9, 9, 9, 9, 9], 2)) == 4      # the real match still hits


def test_equal_blocks_after_different_prefixes_are_not_shared(monkeypatch):
    # A hash that forgets the parent: blocks with equal tokens collide whatever precedes them. The parent
    # check must still refuse a block whose KV was computed after another prefix.
    monkeypatch.setattr(bm, "chain_hash", lambda parent, tokens: hash(tokens))
    manager = BlockManager(16, 4, enable_prefix_caching=True)
    admit(manager, make_seq([1, 2, 3, 4, 5, 6, 7, 8, 0], 0))
    admit(manager, make_seq([9, 9, 9, 9, 5, 6, 7, 8, 0], 1))
    assert admit(manager, make_seq([9, 9, 9, 9, 5, 6, 7, 8, 0], 2)) == 4
    assert admit(manager, make_seq([1, 2, 3, 4, 5, 6, 7, 8, 0], 3)) == 8


def test_prefix_caching_disabled_never_hits():
    manager = BlockManager(16, 4, enable_prefix_caching=False)
    admit(manager, make_seq(list(range(9)), 0))
    assert admit(manager, make_seq(list(range(9)), 1)) == 0


@pytest.mark.parametrize("reserve", [0, 2])
def test_can_allocate_counts_revived_blocks(reserve):
    manager = BlockManager(4, 4, enable_prefix_caching=True)
    first = make_seq(list(range(9)), 0)
    admit(manager, first)
    manager.free_seq(first)                            # 4 free, 2 of them cached
    seq = make_seq(list(range(9)) + list(range(50, 57)), 1)   # 16 tokens: 2 cached + 2 new blocks
    cached = manager.find_cached_prefix(seq)
    assert len(cached) == 2
    assert manager.can_allocate(seq, 16, cached, reserve) == (reserve == 0)


def test_a_failed_step_leaves_nothing_uncomputed_in_the_prefix_cache(llama_path):
    """If the forward raises (Ctrl-C in a notebook, an OOM), a later request with the same prompt must not take
    never-written KV from the cache."""
    from engine import LLM

    prompt = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    expected = LLM(llama_path, block_size=4).generate(prompt, params)[0].outputs[0].token_ids
    llm = LLM(llama_path, block_size=4)
    runner = llm.engine.runner
    execute = runner.execute

    def interrupted(step):
        runner.execute = execute
        raise KeyboardInterrupt

    runner.execute = interrupted
    with pytest.raises(KeyboardInterrupt):
        llm.generate(prompt, params)
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks
    out = llm.generate(prompt, params)[0]
    assert out.num_cached_tokens == 0 and out.outputs[0].token_ids == expected
    again = llm.generate(prompt, params)[0]                  # the step that ran did fill the cache
    assert again.num_cached_tokens > 0 and again.outputs[0].token_ids == expected


@pytest.mark.parametrize("after_forward", [False, True])
def test_stepping_again_after_a_failed_step_computes_the_same_tokens(llama_path, after_forward):
    """Two requests per prompt (sharing its blocks through the prefix cache), chunked prefill, and two steps that
    raise, before their forward or after it (KV written, results lost): stepping on gives every request the
    tokens of an undisturbed run, and frees every block."""
    from engine import LLM

    prompts = ["def fib(n):\n    if n < 2:\n        return n\n" * 3, "import os\nimport sys\n" * 5]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    expected = [o.outputs[0].token_ids for o in
                LLM(llama_path, block_size=4, max_num_batched_tokens=16).generate(prompts, params)]
    llm = LLM(llama_path, block_size=4, max_num_batched_tokens=16)
    engine, tokenizer = llm.engine, llm.get_tokenizer()
    for i, prompt in enumerate(prompts):
        for copy in "ab":
            engine.add_request(f"{i}{copy}", tokenizer(prompt)["input_ids"], params)
    execute, calls = engine.runner.execute, []

    def flaky(step):
        calls.append(1)
        if len(calls) in (2, 5):
            if after_forward:
                execute(step)
            raise RuntimeError("a step that failed")
        return execute(step)

    engine.runner.execute = flaky
    finished, failures = {}, 0
    while engine.has_unfinished_requests():
        try:
            finished |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
        except RuntimeError:
            failures += 1
    assert failures == 2
    assert finished == {f"{i}{copy}": expected[i] for i in range(2) for copy in "ab"}
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_aborting_the_request_that_owned_shared_blocks_after_a_failed_step(llama_path):
    """Two requests with one prompt admitted in the same step, whose forward fails; the first is aborted and the
    engine steps on. The second must not count the first's never-written blocks as its computed prefix (before
    blocks were registered only once computed, it generated 12 of 12 wrong greedy tokens)."""
    from engine import LLM

    prompt = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    expected = LLM(llama_path, block_size=4).generate(prompt, params)[0].outputs[0].token_ids
    llm = LLM(llama_path, block_size=4)
    engine, ids = llm.engine, llm.get_tokenizer()(prompt)["input_ids"]
    engine.add_request("owner", ids, params)
    engine.add_request("sharer", ids, params)
    execute = engine.runner.execute

    def failing(step):
        engine.runner.execute = execute
        raise RuntimeError("a step that failed")

    engine.runner.execute = failing
    with pytest.raises(RuntimeError):
        engine.step()
    engine.abort_request("owner")
    finished = {}
    while engine.has_unfinished_requests():
        finished |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
    assert finished == {"sharer": expected}
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_the_choices_of_a_prompt_share_its_blocks_in_their_first_step(llama_path, prefix_caching):
    """n=3: the later choices take the first choice's full prompt blocks in the step that computes them, with or
    without prefix caching, and generate what three separate requests would; that sharing is no cache hit."""
    from engine import LLM

    prompt = list(range(5, 5 + 4 * 6 + 2))                       # six full blocks of 4 and two tokens
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=6, ignore_eos=True)
    llm = LLM(llama_path, block_size=4, enable_prefix_caching=prefix_caching)
    engine = llm.engine
    engine.add_request("r", prompt, params)
    step = engine.scheduler.schedule()
    first, second, third = step.seqs
    assert step.num_new_tokens == [len(prompt), 2, 2]
    # Shared, not looked up: no cache hits (the API's cached_tokens, the hit rate), with or without the cache
    assert (step.prefix_queries, step.prefix_hits) == (len(prompt), 0)
    assert second.block_table[:6] == third.block_table[:6] == first.block_table[:6]
    assert [engine.blocks.blocks[b].ref_count for b in first.block_table[:6]] == [3] * 6
    result = engine.runner.execute(step)
    engine.scheduler.update(step)
    engine.processor.process(result, 0.0)
    outputs = {}
    while engine.has_unfinished_requests():
        outputs |= {o.request_id: o for o in engine.step() if o.finished}
    separate = LLM(llama_path, block_size=4, enable_prefix_caching=False)
    alone = separate.generate(prompt, params)[0]
    assert [c.token_ids for c in outputs["r"].outputs] == [c.token_ids for c in alone.outputs]
    assert outputs["r"].num_cached_tokens == 0 and engine.stats().prefix_cache_hits == 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
