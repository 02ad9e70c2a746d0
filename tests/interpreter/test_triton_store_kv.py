"""The Triton `store_kv` against the torch reference: every written slot, nothing else, skipped slots untouched."""

from __future__ import annotations

import pytest
import torch

import llm_kernels
from llm_kernels.reference import attention as ref
from llm_kernels.triton_ops import store_kv


def _poisoned_cache(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype):
    return torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)


@pytest.mark.parametrize(("src_dtype", "cache_dtype", "block_size", "num_kv_heads", "head_dim"), [
    (torch.float32, torch.float32, 16, 2, 64),
    (torch.float32, torch.float16, 32, 1, 80),
    (torch.float16, torch.float16, 16, 4, 96),
    (torch.bfloat16, torch.bfloat16, 64, 2, 128),
])
def test_store_kv_matches_reference(src_dtype, cache_dtype, block_size, num_kv_heads, head_dim):
    g = torch.Generator().manual_seed(block_size + head_dim)
    num_blocks, num_tokens = 5, 23
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[[3, 11, 17]] = -1                                     # padding tokens: skipped
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g).to(src_dtype)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g).to(src_dtype)
    caches = [_poisoned_cache(num_blocks, block_size, num_kv_heads, head_dim, cache_dtype) for _ in range(4)]
    store_kv(key, value, caches[0], caches[1], slots)
    ref.store_kv(key, value, caches[2], caches[3], slots)
    torch.testing.assert_close(caches[0], caches[2], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(caches[1], caches[3], rtol=0, atol=0, equal_nan=True)
    written = caches[0].view(-1, num_kv_heads, head_dim)[slots[slots >= 0]]
    assert not written.isnan().any()
    assert caches[0].isnan().any()                              # the skipped slots stayed untouched


def test_store_kv_strided_sources_and_caches_through_the_api():
    """Keys/values sliced out of a fused qkv tensor, caches that are views of one [2, ...] tensor, a strided
    slot mapping."""
    g = torch.Generator().manual_seed(1)
    num_tokens, num_kv_heads, head_dim, block_size = 9, 2, 64, 16
    qkv = torch.randn(num_tokens, (4 + 2 * num_kv_heads) * head_dim, generator=g, dtype=torch.float16)
    key = qkv[:, 4 * head_dim:(4 + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads, head_dim)
    value = qkv[:, (4 + num_kv_heads) * head_dim:].view(num_tokens, num_kv_heads, head_dim)
    both = torch.full((2, 3, block_size, num_kv_heads, head_dim), float("nan"), dtype=torch.float16)
    expected = both.clone()
    slots = torch.tensor([[0, 5, 17, 18, 40, -1, 33, 2, 47], [1] * 9]).T[:, 0]   # a strided view
    llm_kernels.use("triton")
    llm_kernels.store_kv(key, value, both[0], both[1], slots)
    ref.store_kv(key, value, expected[0], expected[1], slots)
    torch.testing.assert_close(both, expected, rtol=0, atol=0, equal_nan=True)
