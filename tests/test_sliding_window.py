"""Sliding-window attention: the torch reference against attention written out position by position (each new
token attends to the keys at distance < window), and the CPU path (the C decode kernel) against the reference."""

from __future__ import annotations

import pytest
import torch
from paged_batches import make_batch

from llm_kernels.cpu import attention as cpu_attention
from llm_kernels.reference import attention as ref
from llm_kernels.reference.attention import gather_kv


def written_out(q, k_cache, v_cache, tables, lens, cu, scale, window):
    """Each new token's attention over its visible keys, one token and head at a time."""
    out = torch.empty_like(q, dtype=torch.float32)
    group = q.shape[1] // k_cache.shape[2]
    for s in range(len(lens)):
        length, start, end = int(lens[s]), int(cu[s]), int(cu[s + 1])
        keys, values = gather_kv(k_cache, tables[s], length).float(), gather_kv(v_cache, tables[s], length).float()
        for row in range(start, end):
            position = length - (end - start) + (row - start)
            first = max(0, position - window + 1) if window else 0
            for h in range(q.shape[1]):
                k, v = keys[first:position + 1, h // group], values[first:position + 1, h // group]
                weights = torch.softmax(k @ q[row, h].float() * scale, dim=0)
                out[row, h] = weights @ v
    return out


@pytest.mark.parametrize("window", [0, 1, 3, 16, 17, 500])
def test_the_reference_attends_the_window(window):
    seq_lens, q_lens = [45, 70, 2, 33, 130, 9], [45, 19, 2, 1, 1, 1]
    q, k, v, tables, lens, cu = make_batch(seq_lens, q_lens, 4, 2, 32, 16, torch.float32, window, None)
    got = ref.paged_attention(q, k, v, tables, lens, cu, max(q_lens), 0.2, window)
    torch.testing.assert_close(got, written_out(q, k, v, tables, lens, cu, 0.2, window), rtol=1e-5, atol=1e-5)
    decodes = ref.paged_attention(q[45 + 19 + 2:], k, v, tables[3:], lens[3:], torch.arange(4, dtype=torch.int32),
                                  1, 0.2, window)                      # the batched-decode path of the reference
    torch.testing.assert_close(decodes, got[45 + 19 + 2:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 5, 16, 64, 1000])
def test_the_c_decode_kernel_attends_the_window(window):
    seq_lens = [1, 15, 16, 17, 100, 130]
    q, k, v, tables, lens, cu = make_batch(seq_lens, [1] * len(seq_lens), 8, 2, 64, 16, torch.float32, 3, None)
    if not cpu_attention.supported(q, k, v):
        pytest.skip("the C kernel cannot be built here")
    expected = ref.paged_attention(q, k, v, tables, lens, cu, 1, 0.125, window)
    torch.testing.assert_close(cpu_attention.decode(q, k, v, tables, lens, 0.125, sliding_window=window), expected,
                               rtol=2e-5, atol=2e-5)
    mixed = cpu_attention.paged_attention(q, k, v, tables, lens, cu, 1, 0.125, window)
    torch.testing.assert_close(mixed, expected, rtol=2e-5, atol=2e-5)
