"""Linear layers on the CPU through oneDNN, with each weight packed once into oneDNN's blocked layout.

torch's `F.linear` on float32 CPU tensors re-lays the weight out on every call; oneDNN's matmul over a weight
packed once at load time was 2.2x faster on this project's 2-core machine for the shapes of a decode or prefill
step (M from 7 to 2048, K and N 512 to 3072; benchmarks/RESULTS.md), and within 1e-4 of it. torch ships the two
operators (`mkldnn._reorder_linear_weight`, `mkldnn._linear_pointwise`, what its compiler uses for frozen CPU
models); `pack` checks them on a small product first and returns None where they are missing or disagree, and the
caller keeps `F.linear`.

oneDNN compiles one primitive per distinct product shape, and a step's row count M changes with every batch, so
its two caches of them (oneDNN's own and torch's ideep one) fill with one entry per M seen, about 285 KiB each
whatever the layer's size: 1024 entries each by default, over 500 MiB of a serving process's memory. `bound_caches`
makes them small; a miss costs about 0.5 ms (a fresh compilation), and one step needs only a handful of entries
(one per distinct weight shape), which stay hot across its layers.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

CACHE_CAPACITY = 64
_CACHE_SETTINGS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_caches(capacity: int = CACHE_CAPACITY) -> dict[str, str]:
    """Set the capacity of oneDNN's primitive cache and ideep's to `capacity` entries, where the user has not set
    them; the settings now in force. Process-wide, and read once by each cache when it is first used: call it
    before the process's first oneDNN product (torch's own import does not make one)."""
    for name in _CACHE_SETTINGS:
        os.environ.setdefault(name, str(capacity))
    return {name: os.environ[name] for name in _CACHE_SETTINGS}


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` [out, in] (float32, CPU) packed for `linear`, or None where oneDNN cannot take it."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        probe = torch.linspace(-1, 1, 3 * weight.shape[1]).view(3, -1)
        if not torch.allclose(linear(probe, packed), F.linear(probe, weight.detach()), rtol=1e-3, atol=1e-3):
            return None
    except (AttributeError, RuntimeError):
        return None
    return packed


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, in] @ W^T (+ bias) with a weight from `pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
