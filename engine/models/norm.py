"""RMSNorm, computed in float32 like Hugging Face's Llama so that outputs match it."""

from __future__ import annotations

import torch

from kernels.reference.layer_ops import rms_norm


class RMSNorm(torch.nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps), normalising the last dimension."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x over its last dimension (`kernels.reference.layer_ops.rms_norm`)."""
        return rms_norm(x, self.weight, self.eps)
