"""Rotary position embeddings (the rotate-half layout of Llama/Qwen/Mistral), with linear and llama3 scaling."""

from __future__ import annotations

import math

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """The per-pair rotation frequencies (float32, as Hugging Face computes them), rescaled per rope_scaling."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        medium = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(medium, blended, scaled)
    raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")


class RotaryEmbedding:
    """RoPE's cos/sin rows at given absolute positions, from a table built on first use (per device).

    The model looks them up once per forward (`cos_sin`) and every layer rotates its query and key heads with
    them (`llm_kernels.rotary`).
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None) -> None:
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.inv_freq = inverse_frequencies(head_dim, theta, scaling)
        self._table: torch.Tensor | None = None

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and sin rows [T, D/2] of the angles position * inv_freq (as Hugging Face computes them)."""
        if self._table is None or self._table.device != positions.device:
            angles = torch.outer(torch.arange(self.max_positions, dtype=torch.float32, device="cpu"), self.inv_freq)
            self._table = torch.cat([angles.cos(), angles.sin()], dim=-1).to(positions.device)
        cos, sin = self._table[positions].chunk(2, dim=-1)
        return cos, sin
