"""RMSNorm, computed in float32 like Hugging Face's Llama so that outputs match it."""

from __future__ import annotations

import torch

from llm_kernels import KernelSet


class RMSNorm(torch.nn.Module):
    """y = weight * x / sqrt(mean(x^2) + eps), normalising the last dimension."""

    def __init__(self, size: int, eps: float, kernels: KernelSet) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size))
        self.eps = eps
        self.kernels = kernels

    def forward(self, x: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalise x over its last dimension; with `residual`, normalise x + residual and return
        (normalised, x + residual) (`llm_kernels.api.rms_norm`)."""
        return self.kernels.rms_norm(x, self.weight, self.eps, residual)
