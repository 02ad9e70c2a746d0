"""Rotary position embeddings (the rotate-half layout of Llama/Qwen/Mistral), with linear, llama3, YaRN and dynamic
NTK scaling, computed as transformers computes them at load time.

Dynamic NTK rescales only past `max_position_embeddings`, which the engine's context never exceeds
(`EngineConfig.resolved_max_model_len`): within it, its frequencies are the default ones. YaRN blends interpolated
and extrapolated frequencies and scales cos and sin by its attention factor.
"""

from __future__ import annotations

import math

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> tuple[torch.Tensor, float]:
    """The per-pair rotation frequencies (float32, as Hugging Face computes them), rescaled per rope_scaling, and
    the factor cos and sin are scaled by (YaRN's attention factor; else 1)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type in ("default", "dynamic"):
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / scaling["factor"], 1.0
    if rope_type == "yarn":
        return _yarn(head_dim, theta, scaling)
    if rope_type == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        medium = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(medium, blended, scaled), 1.0
    raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")


def _yarn(dim: int, theta: float, scaling: dict) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv 2309.00071): frequencies interpolated by `factor` below the correction range, kept above it, a
    linear ramp between; cos and sin scaled by the attention factor (0.1 ln(factor) + 1 unless given)."""
    original = scaling.get("original_max_position_embeddings") or scaling["max_position_embeddings"]
    factor = scaling.get("factor") or scaling["max_position_embeddings"] / original
    attention = scaling.get("attention_factor")
    if attention is None:
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = _mscale(factor, mscale) / _mscale(factor, mscale_all) if mscale and mscale_all else _mscale(factor)

    def correction(rotations: float) -> float:      # the dimension that turns `rotations` times over `original`
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction(scaling.get("beta_fast") or 32), correction(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrapolated = 1.0 / (theta ** (torch.arange(0, dim, 2, device="cpu").float() / dim))
    keep = 1 - ramp                                  # 1: the extrapolated (original) frequency, 0: interpolated
    return extrapolated / factor * (1 - keep) + extrapolated * keep, float(attention)


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class RotaryEmbedding:
    """RoPE's cos/sin rows at given absolute positions, from a table built on first use (per device).

    The model looks them up once per forward (`cos_sin`) and every layer rotates its query and key heads with
    them (`llm_kernels.rotary`).
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None) -> None:
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.inv_freq, self.attention_factor = inverse_frequencies(head_dim, theta, scaling)
        self._table: torch.Tensor | None = None

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and sin rows [T, D/2] of the angles position * inv_freq (as Hugging Face computes them)."""
        if self._table is None or self._table.device != positions.device:
            angles = torch.outer(torch.arange(self.max_positions, dtype=torch.float32, device="cpu"), self.inv_freq)
            table = torch.cat([angles.cos(), angles.sin()], dim=-1)
            if self.attention_factor != 1.0:
                table = table * self.attention_factor
            self._table = table.to(positions.device)
        cos, sin = self._table[positions].chunk(2, dim=-1)
        return cos, sin
