"""Paged attention on the CPU: decode tokens through the C kernel (`decode_attention.c`), which reads the paged
cache in place, and prefill chunks through the torch reference (whose matmuls suit them).

Same contract as `llm_kernels.api.paged_attention`. The C kernel takes float32 q and caches; anything else, or a
machine where the kernel cannot be built, runs the torch reference whole.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from llm_kernels.cpu import native
from llm_kernels.reference import attention as ref


@functools.cache
def _decode_fn():
    """The C entry point with its argument types, or None when it cannot be built."""
    lib = native.load("decode_attention")
    if lib is None:
        return None
    fn = lib.paged_decode_f32
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int] * 7 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def supported(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the C kernel can take these tensors (float32 CPU tensors, contiguous caches) and is built."""
    return (q.device.type == "cpu" and q.dtype == k_cache.dtype == v_cache.dtype == torch.float32
            and k_cache.is_contiguous() and v_cache.is_contiguous() and _decode_fn() is not None)


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           seq_lens: torch.Tensor, scale: float, out: torch.Tensor | None = None,
           sliding_window: int = 0) -> torch.Tensor:
    """Attention of one new token per sequence (q [S, H, D], the last of its seq_lens[s] positions; over its
    last `sliding_window` tokens when > 0), into `out` (a contiguous tensor like q) when given. Needs
    `supported(q, k_cache, v_cache)`. Shapes that do not fit together raise ValueError, lengths or block ids
    outside the table or the cache IndexError."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    if (q.dim() != 3 or q.shape[2] != head_dim or q.shape[1] % num_kv_heads or v_cache.shape != k_cache.shape
            or block_tables.dim() != 2 or block_tables.shape[0] != q.shape[0] or seq_lens.shape != q.shape[:1]):
        raise ValueError(f"decode shapes do not fit: q {tuple(q.shape)}, caches {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}, block_tables {tuple(block_tables.shape)}, "
                         f"seq_lens {tuple(seq_lens.shape)}")
    q = q.contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor of q's shape and dtype")
    num_seqs, num_heads = q.shape[:2]
    if num_seqs == 0:
        return out
    status = _decode_fn()(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
                          lens.data_ptr(), out.data_ptr(), num_seqs, num_heads, num_kv_heads, head_dim, block_size,
                          tables.shape[1], num_blocks, scale, sliding_window, torch.get_num_threads())
    if status == 1:
        raise MemoryError("paged_decode_f32 could not allocate its score buffer")
    if status == 2:
        raise IndexError("a sequence length or block id is outside the block table or the cache")
    return out


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int,
                    scale: float, sliding_window: int = 0) -> torch.Tensor:
    """Causal attention of packed new tokens over their sequences' paged caches (contract in `llm_kernels.api`)."""
    args = (q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, max_seqlen_q, scale, sliding_window)
    if not supported(q, k_cache, v_cache):
        return ref.paged_attention(*args)
    if max_seqlen_q == 1 and q.shape[0] == seq_lens.shape[0]:       # one token for every sequence
        return decode(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window=sliding_window)
    starts = cu_seqlens_q[:-1].long()
    q_lens = cu_seqlens_q[1:].long() - starts
    decoding = q_lens == 1
    if not bool(decoding.any()):
        return ref.paged_attention(*args)
    out = torch.empty_like(q)
    picked = decoding.nonzero()[:, 0]
    out[starts[picked]] = decode(q[starts[picked]], k_cache, v_cache, block_tables[picked], seq_lens[picked], scale,
                                 sliding_window=sliding_window)
    # The prefill chunks, packed on their own for the reference: row i of the pack is row rows[i] of q.
    picked = (~decoding).nonzero()[:, 0]
    chunk_lens = q_lens[picked]
    cu_chunks = torch.zeros(len(picked) + 1, dtype=torch.long)
    cu_chunks[1:] = chunk_lens.cumsum(0)
    rows = torch.repeat_interleave(starts[picked] - cu_chunks[:-1], chunk_lens) + torch.arange(int(cu_chunks[-1]))
    out[rows] = ref.paged_attention(q[rows], k_cache, v_cache, block_tables[picked], seq_lens[picked],
                                    cu_chunks.to(torch.int32), max_seqlen_q, scale, sliding_window)
    return out
