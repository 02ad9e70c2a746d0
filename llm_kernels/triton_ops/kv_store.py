"""Write new keys and values into the paged KV caches (contract: `llm_kernels.api.store_kv`).

One program copies BLOCK_T tokens; each token's heads and dims are flattened into one row of HEAD_PAD
elements, so any (strided) key/value view and any cache view with a contiguous last dimension work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops._utils import cdiv, last_dim_contiguous, next_pow2


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, num_tokens,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
                     NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, ROW_PAD: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    in_range = tokens < num_tokens
    slots = tl.load(slot_ptr + tokens, mask=in_range, other=-1).to(tl.int64)
    keep = in_range & (slots >= 0)
    blocks = slots // BLOCK_SIZE
    offsets = slots % BLOCK_SIZE

    cols = tl.arange(0, ROW_PAD)
    heads = cols // HEAD_DIM
    dims = cols % HEAD_DIM
    mask = keep[:, None] & (cols < NUM_KV_HEADS * HEAD_DIM)[None, :]
    rows = tokens.to(tl.int64)[:, None]

    k = tl.load(key_ptr + rows * stride_kt + heads[None, :] * stride_kh + dims[None, :], mask=mask)
    v = tl.load(value_ptr + rows * stride_vt + heads[None, :] * stride_vh + dims[None, :], mask=mask)
    k_dst = blocks[:, None] * stride_kcb + offsets[:, None] * stride_kcs + heads[None, :] * stride_kch + dims[None, :]
    v_dst = blocks[:, None] * stride_vcb + offsets[:, None] * stride_vcs + heads[None, :] * stride_vch + dims[None, :]
    tl.store(k_cache_ptr + k_dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write `key`/`value` [T, num_kv_heads, head_dim] into the caches at `slot_mapping` [T] (negative: skip)."""
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("store_kv needs caches whose last dimension is contiguous")
    key, value = last_dim_contiguous(key), last_dim_contiguous(value)
    slot_mapping = slot_mapping.contiguous()
    row_pad = next_pow2(num_kv_heads * head_dim)
    block_t = max(1, min(16, 4096 // row_pad))
    _store_kv_kernel[(cdiv(num_tokens, block_t),)](
        key, value, k_cache, v_cache, slot_mapping, num_tokens,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, ROW_PAD=row_pad, BLOCK_SIZE=block_size, BLOCK_T=block_t,
        num_warps=4,
    )
