"""The online-softmax loop the attention kernels share: a program's query rows over a range of paged keys, with
the loads of those rows and the loop's starting state.

Decode (`decode_attention`: the query heads of one KV head over a split of a sequence's keys) and prefill
(`prefill_attention`: a block of new tokens times those heads, in two phases) run the same flash-attention-2
update per tile of BLOCK_N keys: the tile's block ids from the block table, its K and V, base-2 scores, then the
running max, normaliser and accumulator rescaled. They differ only in what they mask, chosen at compile time:
- MASK_NONE: every key of the range is visible to every row (prefill's keys below the block's first position);
- MASK_BOUNDS: keys at or past kv_end are masked (decode: a split's last tile may overrun the sequence);
- MASK_CAUSAL: a key is visible to a row when it is at or before the row's position (prefill's last tiles);
- MASK_WINDOW: causal, and within the row's sliding window (its last `window` positions): prefill with a window,
  where a tile may hide every key from some rows (their running max stays -inf and is read as 0).
Triton inlines the helper, so each kernel compiles as it did with the loop written out in it.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634      # the kernels scale scores by scale * LOG2E and exponentiate in base 2
MASK_NONE = tl.constexpr(0)
MASK_BOUNDS = tl.constexpr(1)
MASK_CAUSAL = tl.constexpr(2)
MASK_WINDOW = tl.constexpr(3)


@triton.jit
def load_queries(q_ptr, row_offsets, heads, row_ok, dims, dim_ok, stride_qh, k_cache_ptr, UPCAST: tl.constexpr):
    """The program's query rows [rows, HEAD_PAD]: token offsets `row_offsets` (a scalar or [rows, 1]) plus the
    rows' heads; zero where masked; float32 with UPCAST, else the cache's dtype (the dots' operand type)."""
    q = tl.load(q_ptr + row_offsets + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    return q.to(tl.float32) if UPCAST else q.to(k_cache_ptr.dtype.element_ty)


@triton.jit
def initial_state(ROWS: tl.constexpr, HEAD_PAD: tl.constexpr):
    """(acc, m_i, l_i) before any key: a zero accumulator, running max -inf, normaliser 0."""
    return (tl.zeros([ROWS, HEAD_PAD], tl.float32), tl.full([ROWS], float("-inf"), tl.float32),
            tl.zeros([ROWS], tl.float32))


@triton.jit
def attend_tiles(acc, m_i, l_i, q, k_base, v_base, table, lo, hi, kv_end, positions, window, qk_scale,
                 dims, dim_ok, stride_kb, stride_ks, stride_vb, stride_vs,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, UPCAST: tl.constexpr,
                 FP32_DOT: tl.constexpr):
    """Online-softmax update of (acc, m_i, l_i) with the keys [lo, hi): q [rows, HEAD_PAD] against the keys of
    `table` (one sequence's block ids) below kv_end; `positions` [rows] is read by MASK_CAUSAL and MASK_WINDOW,
    `window` by MASK_WINDOW only. UPCAST: the dots in float32 at FP32_DOT precision, else in the cache's dtype."""
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < kv_end
        blocks = tl.load(table + offs_n // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)
        in_block = offs_n % BLOCK_SIZE
        k = tl.load(k_base + (blocks * stride_kb + in_block * stride_ks)[None, :] + dims[:, None],
                    mask=n_ok[None, :] & dim_ok[:, None], other=0.0)
        v = tl.load(v_base + (blocks * stride_vb + in_block * stride_vs)[:, None] + dims[None, :],
                    mask=n_ok[:, None] & dim_ok[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            s = tl.dot(q, k, input_precision=FP32_DOT) * qk_scale
        else:
            s = tl.dot(q, k) * qk_scale
        if MASK == MASK_BOUNDS:
            s = tl.where(n_ok[None, :], s, float("-inf"))
        elif MASK == MASK_CAUSAL:
            s = tl.where(offs_n[None, :] <= positions[:, None], s, float("-inf"))
        elif MASK == MASK_WINDOW:
            visible = (offs_n[None, :] <= positions[:, None]) & (offs_n[None, :] > positions[:, None] - window)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # With a window, a row no key has reached yet keeps max -inf: read as 0, exp2(-inf - 0) = 0, not NaN.
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new) if MASK == MASK_WINDOW else m_new
        alpha = tl.exp2(m_i - m_new_safe)
        p = tl.exp2(s - m_new_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if UPCAST:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=FP32_DOT)
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, m_i, l_i
