"""Flash-attention-2 style prefill / extend over a paged prefix plus the new tokens, causal on absolute positions.

Grid (query blocks, kv heads). A program takes BLOCK_Q consecutive new tokens of one sequence times the GROUP
query heads that share its KV head, i.e. BLOCK_M = BLOCK_Q * GROUP rows, so K/V tiles are loaded once per
group. Query blocks are numbered without a host sync the way vLLM's unified kernel does: sequence s owns ids
from `cu_seqlens_q[s] // BLOCK_Q + s`, a binary search over cu_seqlens_q finds a program's sequence, and ids
left over exit. New token i of sequence s sits at `seq_lens[s] - q_len + i`; keys below the block's first
position are all visible (phase 1, no mask), the keys up to its last position get the causal mask (phase 2),
and keys beyond it are never loaded. Both phases are the online-softmax loop of `attention_tiles`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops import _utils
from llm_kernels.triton_ops._utils import fp32_dot_precision, next_pow2, upcast_to_fp32
from llm_kernels.triton_ops.attention_tiles import (
    LOG2E,
    MASK_CAUSAL,
    MASK_NONE,
    MASK_WINDOW,
    attend_tiles,
    initial_state,
    load_queries,
)


@triton.jit
def _find_sequence(cu_q_ptr, block_id, num_seqs, BLOCK_Q: tl.constexpr):
    """The last sequence s whose first query-block id (cu_q[s] // BLOCK_Q + s) is <= block_id."""
    lo = tl.zeros((), tl.int32)
    hi = tl.zeros((), tl.int32) + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(cu_q_ptr + mid) // BLOCK_Q + mid <= block_id:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_tables_ptr, seq_lens_ptr, cu_q_ptr,
                    num_seqs, qk_scale, window,
                    stride_qt, stride_qh, stride_ot, stride_oh,
                    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_N: tl.constexpr, SKIP_DECODES: tl.constexpr, UPCAST: tl.constexpr,
                    FP32_DOT: tl.constexpr, WINDOWED: tl.constexpr):
    block_id = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_sequence(cu_q_ptr, block_id, num_seqs, BLOCK_Q)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    q0 = (block_id - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if q0 >= q_len:
        return
    if SKIP_DECODES and q_len == 1:
        return
    context = tl.load(seq_lens_ptr + seq) - q_len

    rows = tl.arange(0, BLOCK_M)
    tokens = q0 + rows // GROUP
    heads = kv_head * GROUP + rows % GROUP
    row_ok = (rows < BLOCK_Q * GROUP) & (tokens < q_len)
    positions = context + tokens
    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < HEAD_DIM
    q_rows = (q_start + tokens).to(tl.int64)
    q = load_queries(q_ptr, q_rows[:, None] * stride_qt, heads, row_ok, dims, dim_ok, stride_qh, k_cache_ptr, UPCAST)

    acc, m_i, l_i = initial_state(BLOCK_M, HEAD_PAD)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_base = k_cache_ptr + kv_head * stride_kh
    v_base = v_cache_ptr + kv_head * stride_vh
    # Keys 0..context+q0 are visible to every row of the block; the block's last row sees up to kv_end - 1.
    kv_end = context + tl.minimum(q0 + BLOCK_Q, q_len)
    if WINDOWED:        # from the first row's window on, every tile masked per row (causal and window)
        lo = tl.maximum(context + q0 - window + 1, 0) // BLOCK_N * BLOCK_N
        acc, m_i, l_i = attend_tiles(acc, m_i, l_i, q, k_base, v_base, table, lo, kv_end, kv_end, positions,
                                     window, qk_scale, dims, dim_ok, stride_kb, stride_ks, stride_vb, stride_vs,
                                     BLOCK_SIZE, BLOCK_N, MASK_WINDOW, UPCAST, FP32_DOT)
    else:
        full_end = (context + q0 + 1) // BLOCK_N * BLOCK_N
        acc, m_i, l_i = attend_tiles(acc, m_i, l_i, q, k_base, v_base, table, 0, full_end, kv_end, positions, 0,
                                     qk_scale, dims, dim_ok, stride_kb, stride_ks, stride_vb, stride_vs,
                                     BLOCK_SIZE, BLOCK_N, MASK_NONE, UPCAST, FP32_DOT)
        acc, m_i, l_i = attend_tiles(acc, m_i, l_i, q, k_base, v_base, table, full_end, kv_end, kv_end, positions,
                                     0, qk_scale, dims, dim_ok, stride_kb, stride_ks, stride_vb, stride_vs,
                                     BLOCK_SIZE, BLOCK_N, MASK_CAUSAL, UPCAST, FP32_DOT)
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]       # padding rows (and, windowed, rows of no key): 0
    tl.store(out_ptr + q_rows[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :],
             o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def prefill_config(group: int, head_pad: int, max_seqlen_q: int, upcast: bool,
                   interpreter: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a launch.

    16-bit caches: BLOCK_M 128 x BLOCK_N 64, 8 warps, 3 stages for heads up to 128 and 64 x 32 for head 256
    (wgmma, pipelined loads and no register spills on sm_90 according to ptxas). The fp32 path (3xTF32 dots)
    needs much smaller tiles to fit registers and shared memory. BLOCK_M shrinks for short chunks so rows are
    not wasted, but never below the group (one token per block).
    """
    if upcast:
        block_m, block_n, num_warps, num_stages = (32, 16, 4, 2) if head_pad <= 128 else (16, 32, 4, 2)
    elif head_pad <= 128:
        block_m, block_n, num_warps, num_stages = 128, 64, 8, 3
    else:
        block_m, block_n, num_warps, num_stages = 64, 32, 8, 2
    block_m = max(16, next_pow2(group), min(block_m, next_pow2(max_seqlen_q * group)))
    if block_m < 64:
        num_warps = 4
    return block_m, 32 if interpreter else block_n, num_warps, num_stages


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int, scale: float,
                      out: torch.Tensor, skip_decodes: bool, sliding_window: int = 0) -> None:
    """Attention for the sequences of the batch (those with more than one new token when `skip_decodes`)."""
    num_tokens, num_heads, head_dim = q.shape
    num_seqs = seq_lens.shape[0]
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    head_pad = next_pow2(head_dim)
    upcast = upcast_to_fp32(q.dtype, k_cache.dtype, q.device)
    block_m, block_n, num_warps, num_stages = prefill_config(group, head_pad, max_seqlen_q, upcast,
                                                             not _utils.compiled_for_gpu(q.device))
    block_q = block_m // group
    num_blocks = num_tokens // block_q + num_seqs
    _prefill_kernel[(num_blocks, num_kv_heads)](
        q, k_cache, v_cache, out, block_tables, seq_lens, cu_seqlens_q, num_seqs, scale * LOG2E, sliding_window,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=group, HEAD_DIM=head_dim, HEAD_PAD=head_pad, BLOCK_SIZE=block_size, BLOCK_M=block_m,
        BLOCK_Q=block_q, BLOCK_N=block_n, SKIP_DECODES=skip_decodes,
        UPCAST=upcast, FP32_DOT=fp32_dot_precision(q.device), WINDOWED=sliding_window > 0,
        num_warps=num_warps, num_stages=num_stages,
    )
