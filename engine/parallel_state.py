"""Tensor parallelism's process group: which rank this process is, and the two collectives the model uses.

One model runs over `size` processes (ranks), one device each; rank 0 also runs the scheduler and the sampler
(engine/tp_workers.py starts and stops the others). The group is torch.distributed's default one (NCCL on CUDA,
gloo on the CPU), so a process takes part in one tensor-parallel engine at a time. With size 1 nothing here
touches torch.distributed, and the layers skip their collectives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class TensorParallel:
    """This process's place in the model: rank `rank` of `size` (size 1: the whole model here)."""

    rank: int = 0
    size: int = 1

    def split(self, total: int, what: str) -> int:
        """This rank's share of `total` (heads, features), which must divide evenly."""
        if total % self.size:
            raise ValueError(f"{what} ({total}) must be divisible by tensor_parallel_size ({self.size})")
        return total // self.size

    def kv_heads(self, total: int) -> tuple[int, int]:
        """(KV heads this rank holds, the first one's index): `total / size` of them, or, when there are fewer KV
        heads than ranks, the one its query heads read, replicated (as vLLM does)."""
        if total >= self.size:
            local = self.split(total, "num_key_value_heads")
            return local, self.rank * local
        if self.size % total:
            raise ValueError(f"tensor_parallel_size ({self.size}) must be a multiple of num_key_value_heads "
                             f"({total}) when it is larger")
        return 1, self.rank * total // self.size

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the ranks, in place (row-parallel layers, the vocabulary-parallel embedding)."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def gather_last_dim(self, x: torch.Tensor) -> torch.Tensor | None:
        """Rank 0: the ranks' `x` concatenated along the last dimension (the LM head's logits); others: None."""
        if self.size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(x, parts, dst=0)
        return torch.cat(parts, dim=-1) if self.rank == 0 else None


SINGLE = TensorParallel()


def backend_for(device: torch.device) -> str:
    """The collective library for `device`'s tensors: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_group(tp: TensorParallel, device: torch.device, init_method: str, timeout_s: float) -> None:
    """Join the default process group as `tp.rank` of `tp.size` (`init_method`: tcp://host:port or env://)."""
    import datetime

    if dist.is_initialized():
        raise ValueError("this process already belongs to a torch.distributed group: one tensor-parallel engine "
                         "per process")
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend_for(device), init_method=init_method, rank=tp.rank, world_size=tp.size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


def destroy_group() -> None:
    """Leave the process group (harmless when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()
