"""Host lists to device tensors without an explicit wait for the GPU.

`torch.tensor(values, device="cuda")` copies synchronously: PyTorch follows the copy with a
`cudaStreamSynchronize`, so it returns only once every kernel already queued on the stream has finished. A
decode step that built its sampling parameters that way stopped the host until the forward was done before it
could launch the sampler (the H100 profile counted about 5 `cudaStreamSynchronize` calls per engine step, one of
them the read-back of the drawn tokens; benchmarks/RESULTS.md). Here the values go into pinned host memory and
are copied with `non_blocking=True`: no synchronisation, and the CUDA driver has nothing to stage (a copy from
pageable memory may wait for the stream while it stages). PyTorch's pinned-memory allocator keeps the source
alive until the copy has run. The effect on a GPU is not measured yet.

The host tensor itself is built through a typed `array`, not `torch.tensor(list)`, which converts element by element:
on this 2-core CPU, 256 ints took 13 us that way and 4 us through an array, and a 256 x 11 block table 124
against 36 us. A decode step builds about ten such tensors.
"""

from __future__ import annotations

from array import array

import torch

_ARRAY_CODES = {torch.int64: "q", torch.int32: "i", torch.float32: "f", torch.float64: "d"}


def host_tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
    """`values`, a list or a rectangular list of lists, as a new CPU tensor of `dtype`."""
    code = _ARRAY_CODES.get(dtype)
    if code is None or not values:
        return torch.tensor(values, dtype=dtype)
    if not isinstance(values[0], list):
        return torch.frombuffer(array(code, values), dtype=dtype)     # shares (and keeps alive) the array
    if not values[0] or len(set(map(len, values))) > 1:
        return torch.tensor(values, dtype=dtype)     # empty rows, or ragged ones (torch.tensor says why not)
    flat = array(code)
    for row in values:
        flat.fromlist(row)
    return torch.frombuffer(flat, dtype=dtype).view(len(values), -1)


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor of `dtype` on `device`: on a CPU the tensor itself; on a GPU a copy that does not
    synchronise the stream, from pinned memory on CUDA."""
    return tensor_to_device(host_tensor(values, dtype), device)


def tensor_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, copied as `to_device` copies lists (pinned, without a wait); itself on a CPU."""
    if device.type == "cpu":
        return tensor
    return (tensor.pin_memory() if device.type == "cuda" else tensor).to(device, non_blocking=True)
