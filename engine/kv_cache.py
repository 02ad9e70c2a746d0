"""The paged KV cache's size and memory: how many blocks an engine gets, and where they live.

By default the cache holds what the engine could ever use, `max_num_seqs` sequences of `max_model_len` tokens,
but no more than the device's memory allows: on a GPU what `gpu_memory_utilization` leaves after the weights
and the step's activations, on the CPU a quarter of the memory available when the engine starts (the machine's,
or the container's where a cgroup limits it). On the CPU the cache is an anonymous memory map, which the
operating system fills with zero pages as blocks are first written: the process's resident memory follows the
KV that requests really use, so a small model on a large machine does not take gigabytes it never touches.
"""

from __future__ import annotations

import logging
import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class KVCacheShape:
    """What one block costs: every layer's keys and values for `block_size` tokens."""

    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def block_bytes(self) -> int:
        """Bytes of one block across all layers, keys and values."""
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    def dims(self, num_blocks: int) -> tuple[int, ...]:
        """The cache tensor's shape: [keys/values, layer, block, slot, kv head, head dim]."""
        return (2, self.num_layers, num_blocks, self.block_size, self.num_kv_heads, self.head_dim)


def choose_num_blocks(shape: KVCacheShape, max_model_len: int, max_num_seqs: int, budget_bytes: int,
                      requested: int | None = None) -> int:
    """`requested` if given; else room for `max_num_seqs` full-length sequences, within `budget_bytes`. Either
    way at least one sequence of `max_model_len` tokens must fit (ValueError otherwise)."""
    per_seq = -(-max_model_len // shape.block_size)
    fitting = min(budget_bytes // shape.block_bytes, max_num_seqs * per_seq)
    num_blocks = requested if requested is not None else fitting
    if num_blocks < per_seq:
        raise ValueError(f"the KV cache has room for {num_blocks} blocks of {shape.block_size} tokens, fewer "
                         f"than one sequence of max_model_len={max_model_len} needs ({per_seq}); "
                         "raise kv_cache_blocks or lower max_model_len")
    source = "kv_cache_blocks" if requested is not None else (
        f"room for max_num_seqs {max_num_seqs} x max_model_len {max_model_len}, within {budget_bytes / 2**30:.2f}"
        " GiB of memory")
    logger.info("KV cache: %d blocks of %d tokens (%d tokens, %.1f MiB) from %s", num_blocks, shape.block_size,
                num_blocks * shape.block_size, num_blocks * shape.block_bytes / 2**20, source)
    return num_blocks


def allocate(shape: KVCacheShape, num_blocks: int, device: torch.device) -> torch.Tensor:
    """The zeroed cache tensor. On the CPU, backed by an anonymous memory map (pages become resident when
    first written); elsewhere an ordinary allocation."""
    dims = shape.dims(num_blocks)
    if device.type != "cpu":
        return torch.zeros(dims, dtype=shape.dtype, device=device)
    count = math.prod(dims)
    buffer = mmap.mmap(-1, count * shape.dtype.itemsize)     # the tensor keeps the map alive
    return torch.frombuffer(buffer, dtype=shape.dtype, count=count).view(dims)


def cpu_budget() -> int:
    """Bytes the CPU cache may take by default: a quarter of the memory available now."""
    return available_cpu_memory() // 4


def available_cpu_memory() -> int:
    """MemAvailable from /proc/meminfo, lowered to what a cgroup (v2 or v1) memory limit leaves; a
    conservative 8 GiB where /proc/meminfo does not exist."""
    try:
        with open("/proc/meminfo") as f:
            available = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")),
                             8 << 30)
    except OSError:
        available = 8 << 30
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(Path("/sys/fs/cgroup", limit_file)), _read_int(Path("/sys/fs/cgroup", usage_file))
        if limit is not None and usage is not None and limit < (1 << 60):
            available = min(available, max(limit - usage, 0))
            break
    return available


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
