"""Token bitmasks (structured outputs): the reference of `llm_kernels.api.apply_token_bitmask`, and the CPU path.

Branchless: each bit becomes 0.0 (allowed) or -inf (not) by integer arithmetic on the float's bits, and the rows
add it (a logit of +inf, which no model produces, would become NaN). A boolean `masked_fill_` did the same about
five times slower on this CPU (a branch per element).
"""

from __future__ import annotations

import torch

_NEG_INF_BITS = -8388608          # 0xFF800000 as int32: the bits of float32 -inf


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """In place: row rows[i] of `logits` [B, V] keeps the tokens whose bit is set in bitmask[i] ([N, W] int32, bit
    j of word w stands for token 32 * w + j, as xgrammar fills it) and gets -inf for the others, tokens past the
    bitmask's 32 * W included. Returns `logits`."""
    if rows.numel() == 0:
        return logits
    vocab = logits.shape[1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    # In place after the one allocation: on the CPU each fresh [N, V] temporary costs more than the arithmetic.
    penalty = bitmask.to(torch.int32).unsqueeze(-1) >> shifts          # [N, W, 32]; bit 0 set = allowed
    penalty &= 1
    penalty -= 1                                                         # 0 allowed, all ones banned
    penalty &= _NEG_INF_BITS
    penalty = penalty.view(torch.float32).view(bitmask.shape[0], -1)
    if penalty.shape[1] >= vocab:
        penalty = penalty[:, :vocab]
    else:
        penalty = torch.nn.functional.pad(penalty, (0, vocab - penalty.shape[1]), value=float("-inf"))
    penalty = penalty.to(logits.dtype)
    if rows.numel() == logits.shape[0] and bool((rows == torch.arange(rows.numel(), device=rows.device)).all()):
        return logits.add_(penalty)          # every row, in order: no gather and scatter
    return logits.index_copy_(0, rows, logits.index_select(0, rows).add_(penalty))
