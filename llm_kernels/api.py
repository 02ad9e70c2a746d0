"""The kernel API: the contract of every kernel, and direct calls that choose a backend per call.

Each function runs Triton, a C kernel for the CPU (paged attention's decodes) or the torch reference, as
`llm_kernels.select` picks for the tensor's device and the configured backend. The engine does not come through
here: it holds the `KernelSet` it selected once. The contract is the same for every backend, so a researcher can
swap in a kernel of their own (a `KernelSet` field) and check it against `llm_kernels.reference` with
`LLM_KERNELS_CANDIDATE=module:their_set python -m pytest tests/test_kernel_contract.py`.
"""

from __future__ import annotations

import torch

from llm_kernels.kernel_set import select


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write new keys and values into the paged caches.

    key, value: [T, num_kv_heads, head_dim]. k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim].
    slot_mapping: [T] integer, `block * block_size + offset` for each token; a negative slot is skipped.
    """
    return select(key.device).store_kv(key, value, k_cache, v_cache, slot_mapping)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int,
                    scale: float, sliding_window: int = 0) -> torch.Tensor:
    """Causal attention of the new tokens of a batch of sequences over their paged KV caches.

    q: [T, num_heads, head_dim], the new tokens of all S sequences packed one after another (a decode has 1,
    a prefill chunk many). cu_seqlens_q: [S+1] int32 offsets of each sequence's tokens in q.
    seq_lens: [S] int32, the tokens in the cache for each sequence, the new ones included (they must have
    been written with `store_kv` first). block_tables: [S, max_blocks] int32 block ids; entries past a
    sequence's last block are ignored. max_seqlen_q: the largest q length. New token i of sequence s sits at
    position seq_lens[s] - q_len[s] + i and attends to keys 0..that position, or with sliding_window W > 0 only
    to the keys at distance < W (position - W + 1..position; 0 = no window). GQA when
    num_heads > num_kv_heads (query head h reads kv head h // (num_heads // num_kv_heads)).
    Returns [T, num_heads, head_dim] in q's dtype.
    """
    return select(q.device).paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                                            max_seqlen_q, scale, sliding_window)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Draw one token id per row of `logits` [B, V] (float32, penalties already applied).

    Per row: temperature [B] float32 (below 1e-5, 0 included: greedy argmax), top_k [B] int32 (<= 0 = off),
    top_p [B] float32 (1 = off), min_p [B] float32 (0 = off), seeds [B] int64 and positions [B] int64 (the index
    of the token being drawn in its sequence). The draw depends only on the row's logits, its parameters and
    (seed, position), never on the other rows. Exact semantics: `llm_kernels.reference.sampling`.
    Returns [B] int64. Other shapes are a ValueError (the Triton kernels would read past a short parameter).
    """
    return select(logits.device).sample(logits, temperature, top_k, top_p, min_p, seeds, positions)


def apply_penalties(logits: torch.Tensor, prompt_tokens: torch.Tensor, output_tokens: torch.Tensor,
                    presence: torch.Tensor, frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """Apply presence, frequency and repetition penalties to `logits` [B, V] in place and return it.

    prompt_tokens [B, Lp] and output_tokens [B, Lo] int64, padded with -1. presence, frequency,
    repetition: [B] float32 (0, 0 and 1 are neutral). Exact semantics: `llm_kernels.reference.sampling`.
    """
    return select(logits.device).apply_penalties(logits, prompt_tokens, output_tokens, presence, frequency,
                                                  repetition)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Structured outputs: in place, row rows[i] of `logits` [B, V] keeps the tokens whose bit is set in
    bitmask[i] and gets -inf for the others. bitmask: [N, W] int32, packed as xgrammar fills it (bit j of word w is
    token 32 * w + j; tokens past 32 * W are masked). rows: [N] int64. Exact semantics:
    `llm_kernels.reference.token_bitmask`."""
    return select(logits.device).apply_token_bitmask(logits, bitmask, rows)


def fused_moe(hidden: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """Mixture-of-experts feed-forward: out[t] = sum over k of topk_weights[t, k] times expert e = topk_ids[t, k]'s
    SwiGLU MLP of hidden[t], w_down[e] @ (silu(w_gate[e] @ x) * (w_up[e] @ x)).

    hidden [T, H]; w_gate_up [E, 2I, H] (each expert's gate rows, then its up rows); w_down [E, H, I];
    topk_weights [T, K] float32 (the routing weights, already normalised as the model wants); topk_ids [T, K]
    integer expert ids in [0, E). Returns [T, H] in hidden's dtype. Exact semantics: `llm_kernels.reference.moe`.
    """
    return select(hidden.device).fused_moe(hidden, w_gate_up, w_down, topk_weights, topk_ids)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x [..., n] over its last dimension: weight * x / sqrt(mean(x^2) + eps), the statistics in
    float32. With `residual` (like x), normalises x + residual and returns (normalised, x + residual), so a
    decoder layer adds its residual and normalises in one pass. Exact semantics:
    `llm_kernels.reference.layer_ops.rms_norm`."""
    return select(x.device).rms_norm(x, weight, eps, residual)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU's activation: silu(gate) * up for x [T, 2 * I] = [gate | up] -> [T, I], in x's dtype."""
    return select(x.device).silu_and_mul(x)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [T, heads, D] with each token's float32 rows cos, sin [T, D/2]:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), computed in float32. Returns a new tensor like x."""
    return select(x.device).rotary(x, cos, sin)
