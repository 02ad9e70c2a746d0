"""Paged self-attention: project, rotate, write the KV cache and attend, with the engine's `llm_kernels.KernelSet`.

Under tensor parallelism each rank holds `num_heads / size` query heads and their KV heads: `num_kv_heads / size`
of them, or, when there are fewer KV heads than ranks, the one its query heads read (replicated, as vLLM does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.models.linear import ColumnParallelLinear, RowParallelLinear, Shard
from engine.models.norm import RMSNorm
from engine.parallel_state import TensorParallel
from llm_kernels import KernelSet


@dataclass(slots=True)
class AttentionMetadata:
    """Where the step's tokens go in the paged cache and what each sequence attends to (see llm_kernels.api)."""

    slot_mapping: torch.Tensor      # [T] int64
    block_tables: torch.Tensor      # [S, max_blocks] int32
    seq_lens: torch.Tensor          # [S] int32, cached tokens after this step
    cu_seqlens_q: torch.Tensor      # [S + 1] int32
    max_seqlen_q: int


class Attention(torch.nn.Module):
    """Grouped-query attention with a fused q/k/v projection (column-parallel) and o_proj (row-parallel);
    optional biases (Qwen2, Llama's attention_bias) and q/k norm (Qwen3, per head: every rank holds it whole)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool,
                 o_bias: bool, qk_norm_eps: float | None, kernels: KernelSet, tp: TensorParallel,
                 sliding_window: int = 0) -> None:
        super().__init__()
        self.kernels = kernels
        self.sliding_window = sliding_window          # > 0: each token attends only its last this-many positions
        self.num_heads = tp.split(num_heads, "num_attention_heads")
        self.num_kv_heads, kv_start = tp.kv_heads(num_kv_heads)
        self.head_dim = head_dim
        q = Shard(self.num_heads * head_dim, tp.rank * self.num_heads * head_dim)
        kv = Shard(self.num_kv_heads * head_dim, kv_start * head_dim)
        self.qkv_proj = ColumnParallelLinear(hidden_size, [q, kv, kv], qkv_bias)
        self.o_proj = RowParallelLinear(num_heads * head_dim, hidden_size, o_bias, tp)
        self.q_norm = RMSNorm(head_dim, qk_norm_eps, kernels) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps, kernels) if qk_norm_eps is not None else None
        self.scale = head_dim ** -0.5
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; rope: the step's (cos, sin) rows from `RotaryEmbedding.cos_sin`."""
        heads = self.num_heads
        qkv = self.qkv_proj(x).view(x.shape[0], heads + 2 * self.num_kv_heads, self.head_dim)
        qk, v = qkv[:, :heads + self.num_kv_heads], qkv[:, heads + self.num_kv_heads:]
        if self.q_norm is not None:
            qk = torch.cat([self.q_norm(qk[:, :heads]), self.k_norm(qk[:, heads:])], dim=1)
        kernels = self.kernels
        qk = kernels.rotary(qk, *rope)               # the query and key heads are rotated together
        q, k = qk[:, :heads], qk[:, heads:]
        kernels.store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        out = kernels.paged_attention(q, self.k_cache, self.v_cache, meta.block_tables, meta.seq_lens,
                                      meta.cu_seqlens_q, meta.max_seqlen_q, self.scale, self.sliding_window)
        return self.o_proj(out.flatten(1))
