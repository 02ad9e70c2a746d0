"""The KV cache's default size and memory (engine/kv_cache.py), and the engine options that go with them."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine import LLM, SamplingParams, kv_cache
from engine.config import EngineConfig

SHAPE = kv_cache.KVCacheShape(num_layers=2, block_size=16, num_kv_heads=2, head_dim=8, dtype=torch.float32)
LINUX = Path("/proc/self/status").is_file()


def _rss_bytes() -> int:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024


def test_default_size_is_what_the_sequences_can_use_within_the_budget(caplog):
    assert SHAPE.block_bytes == 2 * 2 * 16 * 2 * 8 * 4
    per_seq = 100 // 16 + 1                                  # 7 blocks hold 100 tokens
    with caplog.at_level(logging.INFO, logger="engine.kv_cache"):
        assert kv_cache.choose_num_blocks(SHAPE, 100, 4, budget_bytes=1 << 30) == 4 * per_seq
    assert "KV cache: 28 blocks of 16 tokens (448 tokens" in caplog.text
    assert "max_num_seqs 4 x max_model_len 100" in caplog.text
    assert kv_cache.choose_num_blocks(SHAPE, 100, 4, budget_bytes=10 * SHAPE.block_bytes + 1) == 10
    assert kv_cache.choose_num_blocks(SHAPE, 100, 4, budget_bytes=0, requested=9) == 9
    with pytest.raises(ValueError, match="room for 6 blocks of 16 tokens, fewer than one sequence"):
        kv_cache.choose_num_blocks(SHAPE, 100, 4, budget_bytes=6 * SHAPE.block_bytes)
    with pytest.raises(ValueError, match="raise kv_cache_blocks"):
        kv_cache.choose_num_blocks(SHAPE, 100, 4, budget_bytes=1 << 30, requested=6)


def test_the_cpu_cache_is_zeroed_and_takes_memory_only_where_written():
    cache = kv_cache.allocate(SHAPE, 64, torch.device("cpu"))
    assert cache.shape == (2, 2, 64, 16, 2, 8) and cache.dtype == torch.float32 and cache.is_contiguous()
    assert not cache.any()
    cache[1, 1, 63] = 2.5                                     # writable in place, as store_kv writes it
    assert cache.sum().item() == 2.5 * 16 * 2 * 8
    if not LINUX:
        return
    big = kv_cache.KVCacheShape(num_layers=8, block_size=16, num_kv_heads=8, head_dim=128, dtype=torch.float16)
    before = _rss_bytes()
    large = kv_cache.allocate(big, 2048, torch.device("cpu"))          # 1 GiB
    assert large.nbytes == 1 << 30
    assert _rss_bytes() - before < 64 << 20
    large[:, :, :8] = 1                                                  # 8 of 2048 blocks written
    assert _rss_bytes() - before < 128 << 20


def test_available_memory_is_positive_and_at_most_the_machines():
    available = kv_cache.available_cpu_memory()
    assert available > 0
    if LINUX:
        meminfo = Path("/proc/meminfo").read_text()
        total = int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1]) * 1024
        assert available <= total


@pytest.mark.skipif(not LINUX, reason="reads the peak resident memory of a subprocess from /proc (Linux)")
def test_readme_snippet_with_the_default_model_stays_under_1_gb(tmp_path):
    """The README's three lines, in a fresh process: the default-sized cache (gigabytes for max_num_seqs 256 x
    max_model_len 2048 where memory allows) must not make the process that large. The peak is the process's own
    (VmHWM): getrusage's ru_maxrss keeps, across exec, the pytest process's size at the fork."""
    script = textwrap.dedent("""
        from engine import LLM, SamplingParams
        llm = LLM()
        print(llm.generate("def say_hello_world():", SamplingParams(temperature=0, max_tokens=48))[0].outputs[0].text)
        peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
        print("CACHE", llm.engine.runner.kv_cache.nbytes, "PEAK", peak)
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    words = run.stdout.split()
    cache_bytes, peak_kib = int(words[words.index("CACHE") + 1]), int(words[words.index("PEAK") + 1])
    assert peak_kib * 1024 < 1 << 30, f"peak RSS {peak_kib / 2**20:.2f} GiB with a {cache_bytes / 2**30:.2f} GiB cache"


def test_engine_sizes_its_cache_and_sets_cpu_threads(llama_path, caplog):
    config = EngineConfig(model=llama_path, max_model_len=64, max_num_seqs=3)
    with caplog.at_level(logging.INFO):
        llm = LLM(llama_path, max_model_len=64, max_num_seqs=3, cpu_threads=2)
    try:
        assert torch.get_num_threads() == 1         # the process's count (tests/conftest.py's) is left alone ...
        assert llm.engine.runner.num_blocks == 3 * (64 // config.block_size)
        assert "torch runs CPU work on 2 threads" in caplog.text
        seen, execute = [], llm.engine.runner.execute
        llm.engine.runner.execute = lambda step: seen.append(torch.get_num_threads()) or execute(step)
        out = llm.generate([1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True))[0]
        assert len(out.outputs[0].token_ids) == 4
        assert set(seen) == {2}                     # ... and the engine's steps run on its own
    finally:
        torch.set_num_threads(1)                              # what tests/conftest.py set for the session


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_cpu_threads_must_be_a_positive_integer(llama_path, threads):
    with pytest.raises(ValueError, match="cpu_threads must be an integer >= 1"):
        EngineConfig(model=llama_path, cpu_threads=threads)


@pytest.mark.parametrize("field, value", [("max_model_len", 2.5), ("max_model_len", "64"), ("max_model_len", 1),
                                          ("kv_cache_blocks", 0), ("kv_cache_blocks", True)])
def test_lengths_and_block_counts_must_be_integers(llama_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be None or an integer"):
        EngineConfig(model=llama_path, **{field: value})


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "meta", "tpu", ""])
def test_a_device_that_is_not_cpu_or_cuda_is_a_value_error(llama_path, device):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        EngineConfig(model=llama_path, device=device)
