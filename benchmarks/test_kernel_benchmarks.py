"""Kernel timings under pytest-benchmark: `pytest benchmarks/ --benchmark-only`.

On the CPU this times the torch references and, for decode attention, the `cpu` backend's C kernel; on a GPU
it times Triton and torch, side by side in one table. Correctness is the business of tests/; these only time.
"""

from __future__ import annotations

import pytest
import torch

import llm_kernels
from benchmarks.kernels import paged_batch

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
BACKENDS = ["torch", "triton"] if GPU else ["torch"]
DECODE_BACKENDS = BACKENDS if GPU else ["torch", "cpu"]
DTYPE = torch.bfloat16 if GPU else torch.float32


def _sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def _paged_batch(num_seqs: int, context: int, q_len: int):
    """`paged_batch` at Llama-3-8B's attention shape (32 / 8 heads of 128, blocks of 16), plus q_len and scale."""
    return (*paged_batch(num_seqs, context, q_len, 32, 8, 128, 16, DTYPE, DEVICE), q_len, 128 ** -0.5)


def _timed(benchmark, backend: str, fn, *args) -> None:
    llm_kernels.use(backend)
    try:
        fn(*args)
        _sync()
        benchmark(lambda: (fn(*args), _sync()))
    finally:
        llm_kernels.use("auto")


@pytest.mark.parametrize("backend", DECODE_BACKENDS)
@pytest.mark.parametrize("num_seqs, context", [(1, 4096), (32, 1024)] if not GPU else [(1, 32768), (64, 4096)])
def test_decode_attention(benchmark, backend, num_seqs, context):
    _timed(benchmark, backend, llm_kernels.paged_attention, *_paged_batch(num_seqs, context, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_seqs, q_len", [(1, 512), (4, 256)] if not GPU else [(1, 4096), (8, 2048)])
def test_prefill_attention(benchmark, backend, num_seqs, q_len):
    _timed(benchmark, backend, llm_kernels.paged_attention, *_paged_batch(num_seqs, q_len, q_len))


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_kv(benchmark, backend):
    q, k_cache, v_cache, *_ = _paged_batch(16, 512, 1)
    tokens = 2048
    key = torch.randn(tokens, k_cache.shape[2], k_cache.shape[3], device=DEVICE, dtype=DTYPE)
    slots = torch.randperm(k_cache.shape[0] * k_cache.shape[1], device=DEVICE)[:tokens]
    _timed(benchmark, backend, llm_kernels.store_kv, key, key, k_cache, v_cache, slots)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch, vocab", [(1, 32000), (64, 32000), (64, 128256)])
def test_sample_top_k_top_p(benchmark, backend, batch, vocab):
    logits = torch.randn(batch, vocab, device=DEVICE) * 3
    args = (torch.full((batch,), 0.8, device=DEVICE), torch.full((batch,), 50, dtype=torch.int32, device=DEVICE),
            torch.full((batch,), 0.9, device=DEVICE), torch.zeros(batch, device=DEVICE),
            torch.arange(batch, device=DEVICE), torch.full((batch,), 100, device=DEVICE))
    _timed(benchmark, backend, llm_kernels.sample, logits, *args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_penalties(benchmark, backend):
    batch, vocab = 64, 32000
    logits = torch.randn(batch, vocab, device=DEVICE)
    prompt = torch.randint(0, vocab, (batch, 512), device=DEVICE)
    output = torch.randint(0, vocab, (batch, 256), device=DEVICE)
    ones = torch.ones(batch, device=DEVICE)
    _timed(benchmark, backend, llm_kernels.apply_penalties, logits, prompt, output, 0.5 * ones, 0.5 * ones, 1.2 * ones)
