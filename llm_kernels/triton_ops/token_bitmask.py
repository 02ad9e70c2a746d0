"""Token bitmasks on Triton (contract: `llm_kernels.api.apply_token_bitmask`): one program per (masked row, tile of
the vocabulary) reads the tile's words of the packed bitmask and writes -inf where a token's bit is clear."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops._utils import cdiv

BLOCK = 1024


@triton.jit
def _apply_token_bitmask_kernel(logits_ptr, stride_l, bitmask_ptr, stride_m, words, rows_ptr, vocab,
                                BLOCK: tl.constexpr):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row = tl.load(rows_ptr + i).to(tl.int64)
    in_vocab = cols < vocab
    word = tl.load(bitmask_ptr + i.to(tl.int64) * stride_m + cols // 32, mask=in_vocab & (cols // 32 < words),
                   other=0)
    allowed = ((word >> (cols % 32)) & 1) != 0
    tl.store(logits_ptr + row * stride_l + cols, tl.full([BLOCK], float("-inf"), tl.float32).to(
        logits_ptr.dtype.element_ty), mask=in_vocab & ~allowed)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """See `llm_kernels.api.apply_token_bitmask`."""
    if rows.numel() == 0:
        return logits
    if logits.stride(1) != 1 or bitmask.stride(1) != 1:
        raise ValueError("apply_token_bitmask: logits and bitmask must be contiguous along the vocabulary")
    grid = (rows.numel(), cdiv(logits.shape[1], BLOCK))
    _apply_token_bitmask_kernel[grid](logits, logits.stride(0), bitmask, bitmask.stride(0), bitmask.shape[1], rows,
                                      logits.shape[1], BLOCK=BLOCK)
    return logits
