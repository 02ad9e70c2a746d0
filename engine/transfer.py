"""Host lists to device tensors without an explicit wait for the GPU.

`torch.tensor(values, device="cuda")` copies synchronously: PyTorch follows the copy with a
`cudaStreamSynchronize`, so it returns only once every kernel already queued on the stream has finished. A
decode step that built its sampling parameters that way stopped the host until the forward was done before it
could launch the sampler (the H100 profile counted about 5 `cudaStreamSynchronize` calls per engine step, one of
them the read-back of the drawn tokens; benchmarks/RESULTS.md).
`.to(device, non_blocking=True)` from pageable host memory is safe without synchronisation (PyTorch's
pin_memory/non_blocking tutorial) and makes no such call, so the host can queue the rest of the step while the
GPU runs; the CUDA driver may still wait while it stages pageable memory. The effect on a GPU is not measured
yet.
"""

from __future__ import annotations

import torch


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor of `dtype` on `device`, copied without synchronising the stream."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)
