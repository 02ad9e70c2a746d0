"""The GPU benchmark's pieces that a lent GPU should not be the first to run: the real-vocabulary random checkpoint
and transformers' continuous batching as a peer (benchmarks/throughput.py, benchmarks/peers/transformers_cb.py)."""

from __future__ import annotations

import torch
from transformers.generation import ContinuousBatchingConfig

from benchmarks.peers import transformers_cb
from benchmarks.throughput import Workload, random_checkpoint, word_tokenizer
from engine import LLM, SamplingParams


def test_word_tokenizer_ids_are_word_numbers():
    tokenizer = word_tokenizer(1000)
    assert len(tokenizer) == 1000
    assert tokenizer("w7 w999 w0", add_special_tokens=False)["input_ids"] == [7, 999, 0]
    assert tokenizer.decode([3, 998]) == "w3 w998"
    assert tokenizer.eos_token_id == 999


def test_real_vocabulary_checkpoint_runs_in_the_engine(tmp_path):
    model = random_checkpoint("qwen3-tiny", None, tmp_path, vocab=151936)
    llm = LLM(model, max_model_len=64)
    try:
        out = llm.generate([[151935, 100000, 5]], SamplingParams(max_tokens=6, ignore_eos=True, temperature=0.6,
                                                                  seed=3))[0].outputs[0]
    finally:
        llm.close()
    assert len(out.token_ids) == 6
    assert out.text.split() == [f"w{t}" for t in out.token_ids]
    assert any(t >= 4096 for t in out.token_ids)        # the whole vocabulary, not the default model's 4k


def test_transformers_continuous_batching_makes_each_requests_length(llama_path):
    work = Workload(prompts=[[5, 6, 7], [8] * 20, [9, 10]], output_lens=[3, 9, 1])
    small = ContinuousBatchingConfig(num_blocks=8, max_batch_tokens=64)      # transformers' CPU default: seconds
    rates, attention = transformers_cb.run(llama_path, [work], torch.device("cpu"), torch.float32, cb_config=small)
    assert len(rates) == 1 and rates[0] > 0
    assert attention


def test_transformers_continuous_batching_without_flash_attention(llama_path):
    """The fallback the GPU benchmark takes when transformers' switch to flash attention fails: paged SDPA."""
    work = Workload(prompts=[[5, 6, 7], [8] * 20], output_lens=[4, 2])
    rates, attention = transformers_cb.run_without_flash(llama_path, [work], torch.device("cpu"), torch.float32,
                                                         num_blocks=8, max_batch_tokens=64)
    assert len(rates) == 1 and "sdpa" in attention
