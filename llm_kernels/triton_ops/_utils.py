"""Small host-side helpers shared by the Triton kernels' wrappers (no GPU is touched at import time)."""

from __future__ import annotations

import functools

import torch

# The interpreter runs one program after another, so on a CPU tensor the "GPU" is assumed to be tiny.
INTERPRETER_SM_GUESS = 4


def compiled_for_gpu(device: torch.device) -> bool:
    """Whether kernels launched on `device` are compiled for a GPU (else they run in the interpreter); the one
    place launch configurations branch on it, so a GPU build can be checked on a CPU machine."""
    return device.type == "cuda"


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (and >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division of two host ints."""
    return -(-a // b)


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (cached per device); a fixed guess for CPU tensors (interpreter)."""
    if not compiled_for_gpu(device):
        return INTERPRETER_SM_GUESS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_sm_count(index)


def upcast_to_fp32(q_dtype: torch.dtype, cache_dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the attention kernels should load q/k/v as fp32 and use exact fp32 dots.

    That is the case for fp32 caches, for a q dtype that differs from the cache's (no precision is lost on
    either side), and for bf16 under the interpreter, whose bf16 `tl.dot` is wrong.
    """
    if cache_dtype == torch.float32 or q_dtype != cache_dtype:
        return True
    return cache_dtype == torch.bfloat16 and not compiled_for_gpu(device)


def fp32_dot_precision(device: torch.device) -> str:
    """`tl.dot` precision of the fp32 path: 3xTF32 (about fp32 accuracy on tensor cores; the exact "ieee" dot
    spills registers heavily) on a GPU, plain fp32 in the interpreter."""
    return "tf32x3" if compiled_for_gpu(device) else "ieee"


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its last dimension is contiguous, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()
