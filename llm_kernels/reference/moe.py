"""Mixture-of-experts feed-forward: the reference of `llm_kernels.api.fused_moe`, and the CPU path.

Each expert runs on the tokens routed to it (a gather, two matmuls, SiLU-and-mul), and the results are added
back, weighted, into the token rows.
"""

from __future__ import annotations

import torch

from llm_kernels.reference.layer_ops import silu_and_mul


def fused_moe(hidden: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """out[t] = sum_k topk_weights[t, k] * w_down[e] @ (silu(w_gate[e] @ x) * (w_up[e] @ x)), e = topk_ids[t, k];
    hidden [T, H], w_gate_up [E, 2I, H] (gate rows, then up), w_down [E, H, I], topk_weights [T, K] float32,
    topk_ids [T, K] integer. Returns [T, H] in hidden's dtype (accumulated in float32)."""
    out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    flat_ids = topk_ids.reshape(-1)
    for expert in flat_ids.unique().tolist():
        tokens, slots = (topk_ids == expert).nonzero(as_tuple=True)
        x = hidden[tokens]
        h = silu_and_mul(x @ w_gate_up[expert].t())
        y = (h @ w_down[expert].t()).float() * topk_weights[tokens, slots, None].float()
        out.index_add_(0, tokens, y)
    return out.to(hidden.dtype)
