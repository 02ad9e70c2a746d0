"""Tensor parallelism over 2 CPU processes (gloo): the same tokens as one process and as transformers, with the
prefix cache, chunked prefill and preemption at work; workers that never outlive the engine; a dead worker that is
reported, not waited for; the external-launcher (env://) path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from processes import children, gone
from test_models_vs_hf import PROMPTS, assert_all_blocks_free, greedy, hf_greedy

from engine import LLM, SamplingParams

REPO = Path(__file__).resolve().parents[1]
# 20 blocks of 8 tokens cannot hold every prompt at once (preemption); a 16-token budget chunks prefills.
SMALL = dict(device="cpu", block_size=8, kv_cache_blocks=20, max_num_batched_tokens=16, max_model_len=128)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "qwen3-moe", "gemma3", "mistral-window"])
def test_two_ranks_generate_what_one_does_and_transformers_does(checkpoint_factory, arch):
    path = checkpoint_factory(arch)
    llm = LLM(path, tensor_parallel_size=2, **SMALL)
    try:
        assert len(children(os.getpid())) >= 1
        outputs = llm.generate(PROMPTS[:6], greedy())
        for prompt, output in zip(PROMPTS[:6], outputs):
            assert output.outputs[0].token_ids == hf_greedy(path, prompt), prompt
        stats = llm.engine.stats()
        assert stats.num_preemptions > 0                                   # preempted and recomputed
        again = llm.generate(PROMPTS[4], greedy())[0]                      # its prompt blocks are cached
        assert again.num_cached_tokens > 0 and again.outputs[0].token_ids == hf_greedy(path, PROMPTS[4])
        assert max(len(llm.get_tokenizer()(p)["input_ids"]) for p in PROMPTS[:6]) > SMALL["max_num_batched_tokens"]
        assert_all_blocks_free(llm)
    finally:
        llm.close()


def test_seeded_sampling_and_logprobs_equal_one_rank(checkpoint_factory):
    path = checkpoint_factory("qwen2", tie=True, vocab_size=403)          # a vocabulary that does not split evenly
    params = SamplingParams(temperature=0.9, top_k=50, seed=7, max_tokens=10, ignore_eos=True, logprobs=3,
                            prompt_logprobs=2)
    one = LLM(path, device="cpu", kv_cache_blocks=64).generate(PROMPTS[:3], params)
    llm = LLM(path, device="cpu", kv_cache_blocks=64, tensor_parallel_size=2)
    try:
        two = llm.generate(PROMPTS[:3], params)
    finally:
        llm.close()
    for a, b in zip(one, two):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for x, y in zip(a.outputs[0].logprobs + a.prompt_logprobs[1:], b.outputs[0].logprobs + b.prompt_logprobs[1:]):
            assert x.keys() == y.keys()
            assert all(abs(x[t].logprob - y[t].logprob) < 1e-4 for t in x)


@pytest.mark.parametrize("size, reason", [(3, "num_attention_heads \\(4\\) must be divisible"),
                                          (0, "tensor_parallel_size must be an integer >= 1")])
def test_sizes_that_cannot_split_are_refused_before_any_process_starts(checkpoint_factory, size, reason):
    before = children(os.getpid())
    with pytest.raises(ValueError, match=reason):
        LLM(checkpoint_factory("llama"), device="cpu", tensor_parallel_size=size)
    assert children(os.getpid()) == before


def test_close_stops_the_workers(checkpoint_factory):
    before = children(os.getpid())
    llm = LLM(checkpoint_factory("llama"), device="cpu", kv_cache_blocks=32, tensor_parallel_size=2)
    workers = children(os.getpid()) - before
    assert len(workers) == 1
    llm.close()
    assert gone(workers)


def test_a_dead_worker_is_reported_not_waited_for(checkpoint_factory):
    llm = LLM(checkpoint_factory("llama"), device="cpu", kv_cache_blocks=32, tensor_parallel_size=2)
    try:
        (worker,) = llm.engine.workers.procs
        worker.kill()
        worker.wait()
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="tensor-parallel worker \\(rank 1, pid \\d+\\) exited with status -9"):
            llm.generate(PROMPTS[:2], greedy())
        assert time.monotonic() - start < 60
    finally:
        llm.close()


_SCRIPT = """
import sys, time
from engine import LLM
llm = LLM(sys.argv[1], device="cpu", kv_cache_blocks=32, tensor_parallel_size=2)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_workers_never_outlive_the_engine_process(checkpoint_factory, tmp_path, how):
    """Killed (no cleanup can run), interrupted (Ctrl-C) or terminated: the engine's process leaves no worker."""
    script = tmp_path / "engine_process.py"
    script.write_text(_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), checkpoint_factory("llama")], cwd=tmp_path,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == b"ready"
        workers = children(proc.pid)
        assert len(workers) == 1
        proc.send_signal(how)
        proc.wait(60)
        assert gone(workers)
    finally:
        proc.kill()
        proc.wait()


_RANK = """
import sys
from engine import LLM, SamplingParams
llm = LLM(sys.argv[1], device="cpu", kv_cache_blocks=32, tensor_parallel_size=2)
out = llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
print("tokens", out[0].outputs[0].token_ids, flush=True)
llm.close()
"""


def test_ranks_started_by_an_external_launcher(checkpoint_factory, tmp_path):
    """As `torchrun --nnodes 2` would: two processes with MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK. Rank 1's
    `LLM(...)` serves rank 0's steps and exits when rank 0's engine closes."""
    path = checkpoint_factory("llama")
    expected = LLM(path, device="cpu", kv_cache_blocks=32).generate(
        [[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0].outputs[0].token_ids
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(_RANK))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script), path], cwd=tmp_path, stdout=subprocess.PIPE,
                              env={**env, "RANK": str(rank)}) for rank in (0, 1)]
    try:
        outs = [proc.communicate(timeout=300)[0].decode() for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outs
        assert f"tokens {expected}" in outs[0] and "tokens" not in outs[1]
    finally:
        for proc in procs:
            proc.kill()


def test_an_engine_that_fails_to_start_leaves_no_worker(checkpoint_factory, monkeypatch):
    """The workers were started and joined the group, then every rank refuses the kernels backend: rank 0's
    ValueError comes out, and no worker is left behind."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    before = children(os.getpid())
    with pytest.raises(ValueError, match="needs TRITON_INTERPRET=1"):
        LLM(checkpoint_factory("llama"), device="cpu", kernels="triton", tensor_parallel_size=2)
    assert gone(children(os.getpid()) - before, timeout=30)
    assert children(os.getpid()) == before


def test_a_worker_that_dies_before_joining_is_reported_at_once(checkpoint_factory, monkeypatch):
    """Not a wait for the process group's 10-minute timeout: rank 0 watches the workers while it joins."""
    import engine.tp_workers

    monkeypatch.setattr(engine.tp_workers, "WORKER_CODE", "import sys; sys.exit(3)")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="tensor-parallel worker \\(rank 1, pid \\d+\\) exited with status 3"):
        LLM(checkpoint_factory("llama"), device="cpu", tensor_parallel_size=2)
    assert time.monotonic() - start < 60


def test_more_ranks_than_gpus_or_no_gloo_are_refused(checkpoint_factory, monkeypatch):
    import torch

    from engine.config import EngineConfig

    path = checkpoint_factory("llama")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="needs GPUs cuda:0..cuda:1; this machine has 1"):
        EngineConfig(model=path, device="cuda", tensor_parallel_size=2)
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    with pytest.raises(ValueError, match="needs torch.distributed with gloo"):
        EngineConfig(model=path, device="cpu", tensor_parallel_size=2)
