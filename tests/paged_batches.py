"""Random paged-attention batches for the kernel tests, built without Triton (the C kernel's tests use them too)."""

from __future__ import annotations

import torch

from llm_kernels.reference import attention as ref


def make_batch(seq_lens: list[int], q_lens: list[int], num_heads: int, num_kv_heads: int, head_dim: int,
               block_size: int, dtype: torch.dtype, seed: int = 0, q_dtype: torch.dtype | None = None):
    """A paged batch: shuffled blocks, NaN in every unwritten slot, garbage table entries past the end."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    order = torch.randperm(num_blocks, generator=g).int()
    tables = torch.full((len(seq_lens), max(blocks_per_seq) + 1), 1 << 30, dtype=torch.int32)
    used = 0
    for s, count in enumerate(blocks_per_seq):
        tables[s, :count] = order[used:used + count]
        used += count
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    slots = torch.cat([tables[s, torch.arange(n) // block_size].long() * block_size + torch.arange(n) % block_size
                       for s, n in enumerate(seq_lens)])
    keys = torch.randn(len(slots), num_kv_heads, head_dim, generator=g).to(dtype)
    values = torch.randn(len(slots), num_kv_heads, head_dim, generator=g).to(dtype)
    ref.store_kv(keys, values, k_cache, v_cache, slots)
    q = torch.randn(sum(q_lens), num_heads, head_dim, generator=g).to(q_dtype or dtype)
    cu_seqlens_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k_cache, v_cache, tables, torch.tensor(seq_lens, dtype=torch.int32), cu_seqlens_q
