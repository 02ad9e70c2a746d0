"""Paged attention on the CPU: decode tokens and short chunks of new tokens (speculative verification, the tail of
a chunked prompt) through the C kernel (`paged_attention.c`), which reads the paged cache in place, and longer
prefill chunks through the torch reference (whose matmuls suit them).

Same contract as `llm_kernels.api.paged_attention`. The C kernel takes float32 q and caches; anything else, or a
machine where the kernel cannot be built, runs the torch reference whole.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from llm_kernels.cpu import native
from llm_kernels.reference import attention as ref

# Chunks of at most this many new tokens go to the C kernel, one task per query row: each row reads its
# sequence's cache once, so a long chunk is better served by the reference's matrix products.
SHORT_CHUNK = 16


@functools.cache
def _rows_fn():
    """The C entry point with its argument types, or None when it cannot be built."""
    lib = native.load("paged_attention")
    if lib is None:
        return None
    fn = lib.paged_rows_f32
    fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 7 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def supported(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the C kernel can take these tensors (float32 CPU tensors, contiguous caches) and is built."""
    return (q.device.type == "cpu" and q.dtype == k_cache.dtype == v_cache.dtype == torch.float32
            and k_cache.is_contiguous() and v_cache.is_contiguous() and _rows_fn() is not None)


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           seq_lens: torch.Tensor, scale: float, out: torch.Tensor | None = None,
           sliding_window: int = 0) -> torch.Tensor:
    """Attention of one new token per sequence (q [S, H, D], the last of its seq_lens[s] positions; over its
    last `sliding_window` tokens when > 0), into `out` (a contiguous tensor like q) when given. Needs
    `supported(q, k_cache, v_cache)`. Shapes that do not fit together raise ValueError, lengths or block ids
    outside the table or the cache IndexError."""
    rows = torch.arange(q.shape[0] if q.dim() else 0, dtype=torch.int32)
    return attend_rows(q, k_cache, v_cache, block_tables, rows, seq_lens, scale, out, sliding_window)


def attend_rows(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                row_seq: torch.Tensor, row_len: torch.Tensor, scale: float, out: torch.Tensor | None = None,
                sliding_window: int = 0) -> torch.Tensor:
    """Attention of query rows q [R, H, D]: row r belongs to sequence row_seq[r] (a row of block_tables) and
    attends its first row_len[r] tokens (the last `sliding_window` of them when > 0), into `out` when given.
    Needs `supported(q, k_cache, v_cache)`; misfitting shapes raise ValueError, lengths or block ids outside the
    table or the cache IndexError."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    num_seqs = block_tables.shape[0] if block_tables.dim() == 2 else -1
    if (q.dim() != 3 or q.shape[2] != head_dim or q.shape[1] % num_kv_heads or v_cache.shape != k_cache.shape
            or block_tables.dim() != 2 or row_seq.shape != q.shape[:1] or row_len.shape != q.shape[:1]
            or (len(row_seq) and not 0 <= int(row_seq.min()) <= int(row_seq.max()) < num_seqs)):
        raise ValueError(f"attention shapes do not fit: q {tuple(q.shape)}, caches {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}, block_tables {tuple(block_tables.shape)}, "
                         f"rows {tuple(row_seq.shape)} and lengths {tuple(row_len.shape)}")
    q = q.contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    seqs = row_seq.to(torch.int32).contiguous()
    lens = row_len.to(torch.int32).contiguous()
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor of q's shape and dtype")
    num_rows, num_heads = q.shape[:2]
    if num_rows == 0:
        return out
    status = _rows_fn()(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(), seqs.data_ptr(),
                        lens.data_ptr(), out.data_ptr(), num_rows, num_heads, num_kv_heads, head_dim, block_size,
                        tables.shape[1], num_blocks, scale, sliding_window, torch.get_num_threads())
    if status == 1:
        raise MemoryError("paged_rows_f32 could not allocate its score buffer")
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
    if max_seqlen_q <= SHORT_CHUNK:
        return _short_rows(q, k_cache, v_cache, block_tables, seq_lens, q_lens, scale, sliding_window)
    short = q_lens <= SHORT_CHUNK
    if not bool(short.any()):
        return ref.paged_attention(*args)
    out = torch.empty_like(q)
    picked = short.nonzero()[:, 0]
    rows = _rows_of(starts[picked], q_lens[picked])
    out[rows] = _short_rows(q[rows], k_cache, v_cache, block_tables[picked], seq_lens[picked], q_lens[picked],
                            scale, sliding_window)
    # The long chunks, packed on their own for the reference.
    picked = (~short).nonzero()[:, 0]
    chunk_lens = q_lens[picked]
    cu_chunks = torch.zeros(len(picked) + 1, dtype=torch.long)
    cu_chunks[1:] = chunk_lens.cumsum(0)
    rows = _rows_of(starts[picked], chunk_lens)
    out[rows] = ref.paged_attention(q[rows], k_cache, v_cache, block_tables[picked], seq_lens[picked],
                                    cu_chunks.to(torch.int32), int(chunk_lens.max()), scale, sliding_window)
    return out


def _rows_of(starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The packed rows [starts[i], starts[i] + lens[i]) of each chunk i, in order."""
    cu = torch.zeros(len(lens) + 1, dtype=torch.long)
    cu[1:] = lens.cumsum(0)
    return torch.repeat_interleave(starts - cu[:-1], lens) + torch.arange(int(cu[-1]))


def _short_rows(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                seq_lens: torch.Tensor, q_lens: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    """Packed chunks of new tokens (q_lens[s] rows of sequence s, in order) through the C kernel: row i of a chunk
    attends the first seq_len - q_len + i + 1 tokens of its sequence."""
    row_seq = torch.repeat_interleave(torch.arange(len(q_lens)), q_lens)
    ends = q_lens.cumsum(0)
    within = torch.arange(int(ends[-1])) - torch.repeat_interleave(ends - q_lens, q_lens)
    row_len = seq_lens.long()[row_seq] - q_lens[row_seq] + within + 1
    return attend_rows(q, k_cache, v_cache, block_tables, row_seq, row_len, scale, sliding_window=window)
