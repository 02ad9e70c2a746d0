"""Host lists to device tensors without an explicit wait for the GPU.

`torch.tensor(values, device="cuda")` copies synchronously: PyTorch follows the copy with a
`cudaStreamSynchronize`, so it returns only once every kernel already queued on the stream has finished. A
decode step that built its sampling parameters that way stopped the host until the forward was done before it
could launch the sampler (the H100 profile counted about 5 `cudaStreamSynchronize` calls per engine step, one of
them the read-back of the drawn tokens; benchmarks/RESULTS.md). Here the values go into pinned host memory and
are copied with `non_blocking=True`: no synchronisation, and the CUDA driver has nothing to stage (a copy from
pageable memory may wait for the stream while it stages). PyTorch's pinned-memory allocator keeps the source
alive until the copy has run. The effect on a GPU is not measured yet.
"""

from __future__ import annotations

import torch


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor of `dtype` on `device`: on a CPU the tensor itself; on a GPU a copy that does not
    synchronise the stream, from pinned memory on CUDA."""
    if device.type == "cpu":
        return torch.tensor(values, dtype=dtype)
    return torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda").to(device, non_blocking=True)


def tensor_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, copied as `to_device` copies lists (pinned, without a wait); itself on a CPU."""
    if device.type == "cpu":
        return tensor
    return (tensor.pin_memory() if device.type == "cuda" else tensor).to(device, non_blocking=True)
