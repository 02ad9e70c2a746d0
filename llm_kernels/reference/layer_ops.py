"""Plain-torch definitions of the small per-token ops of a decoder layer: RMSNorm (with the residual add),
SiLU-and-mul, rotary embedding. The oracles of `llm_kernels.triton_ops.layer_ops`, with the engine's semantics
(`engine/models/norm.py`, `rotary.py`, `llama.py`, which match Hugging Face's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension, the statistics in float32 and x cast back
    to its dtype before the weight. With `residual`, x + residual (in x's dtype) is normalised and returned too,
    as (normalised, sum)."""
    if residual is not None:
        x = x + residual
    xf = x.float()
    out = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return out if residual is None else (out, x)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x = [..., gate | up] (SwiGLU's activation), in x's dtype."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [T, heads, D] with each token's float32 rows cos, sin [T, D/2] (the model looks
    them up once per step for all its layers): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), in float32, cast
    back to x's dtype."""
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
