"""`paged_attention` on Triton: routes a batch to the decode and prefill kernels (contract: `llm_kernels.api`).

- max_seqlen_q == 1 (a pure decode batch): the flash-decoding kernel alone.
- Otherwise the prefill kernel runs over the sequences with more than one new token and the decode kernel
  over those with exactly one, each program looking up its own sequence's q length on the device, so a mixed
  batch needs no host sync and no host-side split of the batch.
"""

from __future__ import annotations

import torch

from llm_kernels.triton_ops._utils import last_dim_contiguous
from llm_kernels.triton_ops.decode_attention import decode_attention
from llm_kernels.triton_ops.prefill_attention import prefill_attention


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int,
                    scale: float, sliding_window: int = 0) -> torch.Tensor:
    """Causal attention of packed new tokens over their sequences' paged caches (contract in `llm_kernels.api`)."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    paged_attention_into(out, q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, max_seqlen_q, scale,
                         sliding_window)
    return out


def paged_attention_into(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         block_tables: torch.Tensor, seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         max_seqlen_q: int, scale: float, sliding_window: int = 0) -> None:
    """`paged_attention` writing into a given `out` [T, num_heads, head_dim] (every row of it is written)."""
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("paged_attention needs caches and an output whose last dimension is contiguous")
    q = last_dim_contiguous(q)
    if q.shape[0] == 0 or seq_lens.shape[0] == 0:
        return
    # The kernels index these densely (block_tables by row stride): views are made dense here, a no-op usually.
    block_tables, seq_lens, cu_seqlens_q = last_dim_contiguous(block_tables), seq_lens.contiguous(), \
        cu_seqlens_q.contiguous()
    if max_seqlen_q > 1:
        prefill_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, max_seqlen_q, scale, out,
                          skip_decodes=True, sliding_window=sliding_window)
    decode_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out,
                     sliding_window=sliding_window)
