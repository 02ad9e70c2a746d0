"""Presence, frequency and repetition penalties on Triton (contract: `llm_kernels.api.apply_penalties`).

Two kernels, no host sync: one scatters the token lists into per-row tables (atomic counts of the output
tokens, a seen flag for the prompt tokens), one applies the penalties to every logit of its tile from those
tables, in the reference's order of operations (repetition, then frequency * count + presence).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops._utils import cdiv, last_dim_contiguous

SCATTER_BLOCK = 256
APPLY_BLOCK = 1024


@triton.jit
def _scatter_tokens_kernel(tokens_ptr, stride_tb, length, table_ptr, vocab, COUNT: tl.constexpr,
                           BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    tokens = tl.load(tokens_ptr + row.to(tl.int64) * stride_tb + offs, mask=offs < length, other=-1)
    ok = (offs < length) & (tokens >= 0) & (tokens < vocab)
    dst = table_ptr + row.to(tl.int64) * vocab + tokens
    if COUNT:
        tl.atomic_add(dst, tl.full([BLOCK], 1, tl.int32), mask=ok)
    else:
        tl.store(dst, tl.full([BLOCK], 1, tl.int8), mask=ok)


@triton.jit
def _apply_penalties_kernel(logits_ptr, stride_lb, counts_ptr, seen_ptr, presence_ptr, frequency_ptr,
                            repetition_ptr, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    presence = tl.load(presence_ptr + row)
    frequency = tl.load(frequency_ptr + row)
    repetition = tl.load(repetition_ptr + row)
    if (presence == 0) & (frequency == 0) & (repetition == 1):
        return
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < vocab
    ptrs = logits_ptr + row.to(tl.int64) * stride_lb + offs
    logits = tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
    counts = tl.load(counts_ptr + row.to(tl.int64) * vocab + offs, mask=ok, other=0)
    in_output = counts > 0
    seen = (tl.load(seen_ptr + row.to(tl.int64) * vocab + offs, mask=ok, other=0) != 0) | in_output
    penalised = tl.where(logits > 0, logits / repetition, logits * repetition)
    logits = tl.where(seen, penalised, logits)
    logits = logits - (frequency * counts.to(tl.float32) + presence * in_output.to(tl.float32))
    tl.store(ptrs, logits.to(logits_ptr.dtype.element_ty), mask=ok)


def apply_penalties(logits: torch.Tensor, prompt_tokens: torch.Tensor, output_tokens: torch.Tensor,
                    presence: torch.Tensor, frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """Penalise repeated tokens in `logits` [B, V] in place and return it (semantics: `llm_kernels.reference`)."""
    batch, vocab = logits.shape
    if batch == 0:
        return logits
    work = last_dim_contiguous(logits)
    counts = torch.zeros(batch, vocab, dtype=torch.int32, device=logits.device)
    seen = torch.zeros(batch, vocab, dtype=torch.int8, device=logits.device)
    for tokens, table, count in ((output_tokens, counts, True), (prompt_tokens, seen, False)):
        if tokens.shape[1] > 0:
            tokens = last_dim_contiguous(tokens)
            _scatter_tokens_kernel[(batch, cdiv(tokens.shape[1], SCATTER_BLOCK))](
                tokens, tokens.stride(0), tokens.shape[1], table, vocab, COUNT=count, BLOCK=SCATTER_BLOCK,
            )
    _apply_penalties_kernel[(batch, cdiv(vocab, APPLY_BLOCK))](
        work, work.stride(0), counts, seen, presence.float().contiguous(), frequency.float().contiguous(),
        repetition.float().contiguous(), vocab, BLOCK=APPLY_BLOCK,
    )
    if work is not logits:
        logits.copy_(work)
    return logits
