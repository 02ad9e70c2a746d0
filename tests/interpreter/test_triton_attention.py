"""The Triton paged attention against the torch reference: decode, prefill/extend and mixed batches.

Caches are NaN everywhere except the written slots, block tables hold out-of-range garbage past each sequence's
last block, and outputs start as NaN, so a read of an unwritten slot or an unwritten output row shows up.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from paged_batches import make_batch

import llm_kernels
from llm_kernels.reference import attention as ref
from llm_kernels.triton_ops import decode_attention as decode_module
from llm_kernels.triton_ops import prefill_attention as prefill_module
from llm_kernels.triton_ops.attention import paged_attention_into
from llm_kernels.triton_ops.decode_attention import decode_attention

TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def check(seq_lens, q_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, q_dtype=None, seed=0, window=0):
    q, k_cache, v_cache, tables, lens, cu = make_batch(seq_lens, q_lens, num_heads, num_kv_heads, head_dim,
                                                       block_size, dtype, seed, q_dtype)
    scale = head_dim ** -0.5
    out = torch.full_like(q, float("nan"))
    paged_attention_into(out, q, k_cache, v_cache, tables, lens, cu, max(q_lens), scale, window)
    expected = ref.paged_attention(q, k_cache, v_cache, tables, lens, cu, max(q_lens), scale, window)
    assert not expected.isnan().any()
    tol = TOLERANCE[dtype if q_dtype is None else torch.float32 if dtype == torch.float32 else dtype]
    torch.testing.assert_close(out.float(), expected.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize(("group", "head_dim", "block_size", "dtype"), [
    (1, 64, 16, torch.float32),
    (2, 80, 32, torch.float16),
    (4, 96, 16, torch.float16),
    (8, 128, 64, torch.bfloat16),
])
def test_decode_batch(group, head_dim, block_size, dtype):
    check([1, 37, 16, 130], [1, 1, 1, 1], 2 * group, 2, head_dim, block_size, dtype, seed=group)


@pytest.mark.parametrize(("group", "head_dim", "block_size", "dtype"), [
    (1, 96, 32, torch.float16),
    (2, 64, 16, torch.float32),
    (4, 80, 128, torch.float16),
    (8, 64, 16, torch.float16),
])
def test_prefill_and_extend_batch(group, head_dim, block_size, dtype):
    """Whole prompts (context 0) and chunks over a cached prefix, lengths off the block and tile sizes."""
    check([45, 70, 2, 33], [45, 19, 2, 33], 2 * group, 2, head_dim, block_size, dtype, seed=10 + group)


@pytest.mark.parametrize(("group", "head_dim", "dtype"), [(1, 64, torch.float16), (4, 96, torch.float32),
                                                          (8, 80, torch.bfloat16)])
def test_mixed_batch(group, head_dim, dtype):
    """Decodes (q length 1, among them a length-1 sequence) and prefill chunks in one call."""
    check([1, 50, 23, 9, 64], [1, 1, 23, 4, 1], 2 * group, 2, head_dim, 16, dtype, seed=20 + group)


def test_head_dim_256_and_odd_group():
    check([40, 17], [7, 1], 6, 2, 256, 16, torch.float16, seed=3)


def test_q_dtype_differs_from_cache():
    check([12, 30], [1, 6], 4, 2, 64, 16, torch.float16, q_dtype=torch.float32, seed=4)


@pytest.mark.parametrize(("window", "dtype"), [(1, torch.float32), (5, torch.float16), (16, torch.float32),
                                               (40, torch.float16), (1000, torch.float32)])
def test_sliding_window(window, dtype):
    """Windows of one token, inside a tile, a block or a tile wide, and past every sequence; decodes, whole
    prompts and chunks over a cached prefix in one batch (rows whose first tiles lie wholly outside their
    window included)."""
    check([45, 70, 2, 33, 130, 1], [45, 19, 2, 1, 1, 1], 4, 2, 64, 16, dtype, seed=window, window=window)


@pytest.mark.parametrize("num_splits", [1, 3, 8])
@pytest.mark.parametrize("window", [0, 40])
def test_decode_split_counts(num_splits, window):
    """Any split count gives the same answer, also when some splits get no keys at all (and with a window, whose
    keys the splits share)."""
    q, k_cache, v_cache, tables, lens, cu = make_batch([1, 100, 64], [1, 1, 1], 8, 2, 64, 16, torch.float32,
                                                       seed=num_splits)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k_cache, v_cache, tables, lens, cu, 0.125, out, num_splits=num_splits, sliding_window=window)
    expected = ref.paged_attention(q, k_cache, v_cache, tables, lens, cu, 1, 0.125, window)
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)


def test_strided_q_through_the_api():
    """q sliced out of a fused qkv tensor, dispatched through `llm_kernels.paged_attention`."""
    q, k_cache, v_cache, tables, lens, cu = make_batch([20, 5], [3, 1], 4, 2, 64, 16, torch.float16, seed=5)
    fused = torch.cat([q, torch.zeros(q.shape[0], 4, 64, dtype=q.dtype)], dim=1)[:, :4]
    assert not fused.is_contiguous()
    strided_lens = torch.stack([lens, lens], dim=1)[:, 0]                  # a strided view, too
    llm_kernels.use("triton")
    out = llm_kernels.paged_attention(fused, k_cache, v_cache, tables, strided_lens, cu, 3, 0.125)
    expected = ref.paged_attention(q, k_cache, v_cache, tables, lens, cu, 3, 0.125)
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)


def test_extend_with_contexts_around_tile_boundaries():
    """Cached prefixes ending just before, on and after a key-tile edge: where the unmasked and masked
    phases of the prefill kernel meet."""
    contexts = [30, 31, 32, 33, 62, 63, 64]
    check([c + 5 for c in contexts], [5] * len(contexts), 2, 1, 64, 16, torch.float32, seed=6)


def test_decode_and_prefill_share_the_online_softmax_loop():
    """Both kernels run the online softmax of `attention_tiles.attend_tiles`; neither writes out a loop of its own."""
    for module in (decode_module, prefill_module):
        source = inspect.getsource(module)
        assert "attend_tiles(" in source and "m_new" not in source and "tl.dot(" not in source, module.__name__
