"""Token bitmasks (structured outputs): the reference of `llm_kernels.api.apply_token_bitmask`, and the CPU path."""

from __future__ import annotations

import torch


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """In place: row rows[i] of `logits` [B, V] keeps the tokens whose bit is set in bitmask[i] ([N, W] int32, bit
    j of word w stands for token 32 * w + j, as xgrammar fills it) and gets -inf for the others, tokens past the
    bitmask's 32 * W included. Returns `logits`."""
    if rows.numel() == 0:
        return logits
    vocab = logits.shape[1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.to(torch.int32).unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1)[:, :vocab]
    if allowed.shape[1] < vocab:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=0)
    masked = logits.index_select(0, rows).masked_fill_(allowed == 0, float("-inf"))
    return logits.index_copy_(0, rows, masked)
