"""The engine's warm-up (LLMEngine._warm_up): dummy steps at build time, of which nothing is left behind."""

from __future__ import annotations

import torch

from engine import LLM, SamplingParams
from engine.cpu_threads import ThreadTuner
from engine.llm_engine import WARM_UP_DECODES
from engine.model_runner import ModelRunner


def test_warm_up_runs_a_full_step_then_decodes(checkpoint_factory, monkeypatch):
    steps = []
    execute = ModelRunner.execute
    monkeypatch.setattr(ModelRunner, "execute",
                        lambda self, step: steps.append((step.num_tokens, len(step.seqs))) or execute(self, step))
    llm = LLM(checkpoint_factory("llama"), max_num_batched_tokens=512, max_model_len=256)
    # Three prompts of 256 - 17 tokens fill the budget; each then decodes, WARM_UP_DECODES + 1 new tokens in all.
    assert steps[0] == (512, 3)
    assert sum(tokens for tokens, _ in steps) == 3 * 239 + 3 * WARM_UP_DECODES
    assert len(steps) >= 1 + WARM_UP_DECODES
    steps.clear()
    llm.generate([[5, 6, 7]], SamplingParams(max_tokens=2), use_tqdm=False)
    assert steps == [(3, 1), (1, 1)]


def test_warm_up_leaves_an_empty_engine(checkpoint_factory):
    llm = LLM(checkpoint_factory("llama"))
    engine = llm.engine
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.kv_blocks_used, stats.num_preemptions,
            stats.prefix_cache_queries, stats.prefix_cache_hits) == (0, 0, 0, 0, 0, 0)
    assert not engine.has_unfinished_requests()
    # No block is cached: the first warm-up prompt's first 48 tokens (three blocks) find nothing.
    assert all(block.hash is None for block in engine.blocks.blocks)
    prompt = [(3 * j + 1) % engine.model_config.vocab_size for j in range(48)]
    out = llm.generate([prompt], SamplingParams(max_tokens=1), use_tqdm=False)
    assert out[0].num_cached_tokens == 0


def test_a_tiny_cache_and_context_still_build(checkpoint_factory):
    """The warm-up fits itself to the cache and the context: a context of 8 tokens, 2 blocks of 4."""
    llm = LLM(checkpoint_factory("llama"), max_model_len=8, block_size=4, kv_cache_blocks=2)
    out = llm.generate([[3, 4, 5]], SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_the_thread_tuner_probes_during_the_warm_up(checkpoint_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        llm = LLM(checkpoint_factory("llama"))
    finally:
        torch.set_num_threads(threads)
    tuner = llm.engine.threads
    assert isinstance(tuner, ThreadTuner)
    assert not tuner.probing and tuner.current in (1, 2)
