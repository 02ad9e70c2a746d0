"""The kernel API the engine calls. Each function dispatches to Triton, to a C kernel for the CPU (paged
attention's decodes) or to the torch reference.

The contract is the same for both backends, so a researcher can swap in a kernel of their own by replacing
one function of `llm_kernels.triton_ops` and checking it against `llm_kernels.reference` with the tests.
"""

from __future__ import annotations

import importlib

import torch

from llm_kernels import backend
from llm_kernels.cpu import attention as cpu_attention
from llm_kernels.reference import attention as ref_attention
from llm_kernels.reference import layer_ops as ref_layer_ops
from llm_kernels.reference import sampling as ref_sampling


def _triton(name: str):
    return getattr(importlib.import_module("llm_kernels.triton_ops"), name)


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write new keys and values into the paged caches.

    key, value: [T, num_kv_heads, head_dim]. k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim].
    slot_mapping: [T] integer, `block * block_size + offset` for each token; a negative slot is skipped.
    """
    if backend.resolve(key.device) == "triton":
        return _triton("store_kv")(key, value, k_cache, v_cache, slot_mapping)
    return ref_attention.store_kv(key, value, k_cache, v_cache, slot_mapping)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int,
                    scale: float) -> torch.Tensor:
    """Causal attention of the new tokens of a batch of sequences over their paged KV caches.

    q: [T, num_heads, head_dim], the new tokens of all S sequences packed one after another (a decode has 1,
    a prefill chunk many). cu_seqlens_q: [S+1] int32 offsets of each sequence's tokens in q.
    seq_lens: [S] int32, the tokens in the cache for each sequence, the new ones included (they must have
    been written with `store_kv` first). block_tables: [S, max_blocks] int32 block ids; entries past a
    sequence's last block are ignored. max_seqlen_q: the largest q length. New token i of sequence s sits at
    position seq_lens[s] - q_len[s] + i and attends to keys 0..that position. GQA when
    num_heads > num_kv_heads (query head h reads kv head h // (num_heads // num_kv_heads)).
    Returns [T, num_heads, head_dim] in q's dtype.
    """
    chosen = backend.resolve(q.device)
    if chosen == "triton":
        return _triton("paged_attention")(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                                          max_seqlen_q, scale)
    if chosen == "cpu":
        return cpu_attention.paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                                             max_seqlen_q, scale)
    return ref_attention.paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                                         max_seqlen_q, scale)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Draw one token id per row of `logits` [B, V] (float32, penalties already applied).

    Per row: temperature [B] float32 (below 1e-5, 0 included: greedy argmax), top_k [B] int32 (<= 0 = off),
    top_p [B] float32 (1 = off), min_p [B] float32 (0 = off), seeds [B] int64 and positions [B] int64 (the index
    of the token being drawn in its sequence). The draw depends only on the row's logits, its parameters and
    (seed, position), never on the other rows. Exact semantics: `llm_kernels.reference.sampling`.
    Returns [B] int64. Other shapes are a ValueError (the Triton kernels would read past a short parameter).
    """
    params = (temperature, top_k, top_p, min_p, seeds, positions)
    if logits.dim() != 2 or any(t.shape != logits.shape[:1] for t in params):
        raise ValueError(f"sample: logits must be [B, V] and each parameter [B]; got logits {tuple(logits.shape)}, "
                         f"parameters {[tuple(t.shape) for t in params]}")
    if backend.resolve(logits.device) == "triton":
        return _triton("sample")(logits, temperature, top_k, top_p, min_p, seeds, positions)
    return ref_sampling.sample(logits, temperature, top_k, top_p, min_p, seeds, positions)


def apply_penalties(logits: torch.Tensor, prompt_tokens: torch.Tensor, output_tokens: torch.Tensor,
                    presence: torch.Tensor, frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """Apply presence, frequency and repetition penalties to `logits` [B, V] in place and return it.

    prompt_tokens [B, Lp] and output_tokens [B, Lo] int64, padded with -1. presence, frequency,
    repetition: [B] float32 (0, 0 and 1 are neutral). Exact semantics: `llm_kernels.reference.sampling`.
    """
    if backend.resolve(logits.device) == "triton":
        return _triton("apply_penalties")(logits, prompt_tokens, output_tokens, presence, frequency, repetition)
    return ref_sampling.apply_penalties(logits, prompt_tokens, output_tokens, presence, frequency, repetition)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x [..., n] over its last dimension: weight * x / sqrt(mean(x^2) + eps), the statistics in
    float32. With `residual` (like x), normalises x + residual and returns (normalised, x + residual), so a
    decoder layer adds its residual and normalises in one pass. Exact semantics:
    `llm_kernels.reference.layer_ops.rms_norm`."""
    if backend.resolve_layer_ops(x.device) == "triton":
        flat = x.reshape(-1, x.shape[-1])
        got = _triton("rms_norm")(flat, weight, eps, None if residual is None else residual.reshape(flat.shape))
        if residual is None:
            return got.view(x.shape)
        return got[0].view(x.shape), got[1].view(x.shape)
    return ref_layer_ops.rms_norm(x, weight, eps, residual)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU's activation: silu(gate) * up for x [T, 2 * I] = [gate | up] -> [T, I], in x's dtype."""
    if backend.resolve_layer_ops(x.device) == "triton":
        return _triton("silu_and_mul")(x)
    return ref_layer_ops.silu_and_mul(x)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [T, heads, D] with each token's float32 rows cos, sin [T, D/2]:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), computed in float32. Returns a new tensor like x."""
    if backend.resolve_layer_ops(x.device) == "triton":
        return _triton("rotary")(x, cos, sin)
    return ref_layer_ops.rotary(x, cos, sin)
