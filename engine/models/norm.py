"""RMSNorm, computed in float32 like Hugging Face's Llama so that outputs match it."""

from __future__ import annotations

import torch


class RMSNorm(torch.nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps), normalising the last dimension."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x over its last dimension."""
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)
