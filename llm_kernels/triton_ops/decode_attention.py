"""Flash-decoding over a paged KV cache: the sequences of a batch whose q length is 1.

Stage 1, grid (sequences, kv heads, splits): a program loads all the query heads that share its KV head as one
[GROUP_PAD >= 16, D] tile (so `tl.dot` gets a tensor-core tile), runs the online softmax of `attention_tiles`
over its share of the sequence's keys, and writes a normalised partial output and its log-sum-exp (base 2).
Stage 2, grid (sequences, query heads), merges the splits. With one split stage 1 writes the output directly.
The split count is a runtime argument, so a serving engine compiles two variants (direct, split), not one per
count.

The split count is a host decision from shapes only (no device sync): enough programs to fill the GPU
(`SPLIT_WAVES` times its SM count) when the batch alone does not, capped so a split keeps at least
MIN_SPLIT_TOKENS keys of the longest possible sequence (block_tables' width times the block size). Each
sequence then cuts its own length into that many BLOCK_N-aligned pieces; empty pieces write lse = -inf.
Sequences whose q length is not 1 (prefill chunks of a mixed batch) exit at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops import _utils
from llm_kernels.triton_ops._utils import cdiv, fp32_dot_precision, next_pow2, upcast_to_fp32
from llm_kernels.triton_ops.attention_tiles import LOG2E, MASK_BOUNDS, attend_tiles, initial_state, load_queries

SPLIT_WAVES = 4
MIN_SPLIT_TOKENS = 128
MAX_SPLITS = 64


@triton.jit
def _decode_split_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_o_ptr, part_lse_ptr,
                         block_tables_ptr, seq_lens_ptr, cu_q_ptr, qk_scale, window,
                         stride_qt, stride_qh, stride_ot, stride_oh,
                         stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
                         num_heads, num_splits,
                         GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                         HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                         DIRECT: tl.constexpr, UPCAST: tl.constexpr, FP32_DOT: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    if q_len != 1:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    kv_start = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)      # a sliding window's first key
    chunk = tl.cdiv(tl.cdiv(seq_len - kv_start, num_splits), BLOCK_N) * BLOCK_N
    kv_lo = kv_start + split * chunk
    kv_hi = tl.minimum(kv_lo + chunk, seq_len)

    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows
    row_ok = rows < GROUP
    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < HEAD_DIM
    q = load_queries(q_ptr, q_start.to(tl.int64) * stride_qt, heads, row_ok, dims, dim_ok, stride_qh, k_cache_ptr,
                     UPCAST)

    acc, m_i, l_i = initial_state(GROUP_PAD, HEAD_PAD)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_base = k_cache_ptr + kv_head * stride_kh
    v_base = v_cache_ptr + kv_head * stride_vh
    acc, m_i, l_i = attend_tiles(acc, m_i, l_i, q, k_base, v_base, table, kv_lo, kv_hi, kv_hi, kv_hi, 0, qk_scale,
                                 dims, dim_ok, stride_kb, stride_ks, stride_vb, stride_vs,
                                 BLOCK_SIZE, BLOCK_N, MASK_BOUNDS, UPCAST, FP32_DOT)

    has_keys = l_i > 0
    o = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    if DIRECT:
        tl.store(out_ptr + q_start.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + dims[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    else:
        part = (seq.to(tl.int64) * num_heads + heads) * num_splits + split
        tl.store(part_o_ptr + part[:, None] * HEAD_DIM + dims[None, :], o, mask=row_ok[:, None] & dim_ok[None, :])
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + part, lse, mask=row_ok)


@triton.jit
def _decode_merge_kernel(out_ptr, part_o_ptr, part_lse_ptr, cu_q_ptr, stride_ot, stride_oh, num_heads, num_splits,
                         HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(cu_q_ptr + seq)
    if tl.load(cu_q_ptr + seq + 1) - q_start != 1:
        return
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_PAD)
    base = (seq.to(tl.int64) * num_heads + head) * num_splits
    lse = tl.load(part_lse_ptr + base + splits, mask=splits < num_splits, other=float("-inf"))
    weights = tl.exp2(lse - tl.max(lse, axis=0))
    o = tl.load(part_o_ptr + (base + splits)[:, None] * HEAD_DIM + dims[None, :],
                mask=(splits < num_splits)[:, None] & (dims < HEAD_DIM)[None, :], other=0.0)
    merged = tl.sum(o * weights[:, None], axis=0) / tl.sum(weights, axis=0)
    tl.store(out_ptr + q_start.to(tl.int64) * stride_ot + head * stride_oh + dims,
             merged.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_len_bound: int, device: torch.device) -> int:
    """KV splits per sequence so that the batch (of any size) and a single long sequence both fill the GPU."""
    programs = max(1, num_seqs * num_kv_heads)
    wanted = cdiv(SPLIT_WAVES * _utils.sm_count(device), programs)
    return max(1, min(wanted, cdiv(max_len_bound, MIN_SPLIT_TOKENS), MAX_SPLITS))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, scale: float, out: torch.Tensor,
                     num_splits: int | None = None, sliding_window: int = 0) -> None:
    """Attention for the sequences with exactly one new token, written into `out` (other rows untouched)."""
    num_seqs = seq_lens.shape[0]
    num_heads, head_dim = q.shape[1], q.shape[2]
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    if num_splits is None:
        keys = block_tables.shape[1] * block_size       # at most this many keys per sequence, or the window's
        num_splits = choose_num_splits(num_seqs, num_kv_heads, min(keys, sliding_window) if sliding_window else keys,
                                       q.device)
    head_pad = next_pow2(head_dim)
    upcast = upcast_to_fp32(q.dtype, k_cache.dtype, q.device)
    # 16-bit: 64 keys per tile (32 for head 256); the fp32 path halves that to stay clear of register spills.
    block_n = (64 if head_pad <= 128 else 32) // (2 if upcast else 1)
    if num_splits > 1:
        part_o = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, part_o, part_lse, block_tables, seq_lens, cu_seqlens_q, scale * LOG2E,
        sliding_window,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0), num_heads, num_splits,
        GROUP=group, GROUP_PAD=max(16, next_pow2(group)), HEAD_DIM=head_dim, HEAD_PAD=head_pad,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, DIRECT=num_splits == 1,
        UPCAST=upcast, FP32_DOT=fp32_dot_precision(q.device),
        num_warps=4, num_stages=2,
    )
    if num_splits > 1:
        _decode_merge_kernel[(num_seqs, num_heads)](
            out, part_o, part_lse, cu_seqlens_q, out.stride(0), out.stride(1), num_heads, num_splits,
            HEAD_DIM=head_dim, HEAD_PAD=head_pad, SPLITS_PAD=next_pow2(num_splits),
            num_warps=4,
        )
