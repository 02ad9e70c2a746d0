"""Which implementation the kernel API dispatches to: our Triton kernels, our C kernels for the CPU, or the
plain-torch references.

A backend is one of `auto`, `triton`, `cpu` or `torch`:

- `auto` (default): Triton for CUDA tensors, `cpu` for CPU tensors, torch everywhere else.
- `triton`: always Triton. On a CPU tensor this needs `TRITON_INTERPRET=1` (Triton's numpy interpreter),
  which is how the kernels are tested on machines without a GPU.
- `cpu`: the C kernels of `llm_kernels.cpu` where there is one (decode attention on float32; built on first use,
  the torch reference when no C compiler is found), the torch references for everything else.
- `torch`: always the plain-torch references.

The fused layer ops (`llm_kernels.rms_norm`, `silu_and_mul`, `rotary`) follow `resolve_layer_ops`: Triton where the
attention kernels are Triton, the torch references elsewhere (the `cpu` backend has no C version).

An engine chooses once, when it is built (`llm_kernels.select`, `LLM(kernels=...)`). Direct calls of the API's
functions choose per call, by the tensor's device and what `llm_kernels.use(...)` or, failing that, the
`LLM_KERNELS_BACKEND` environment variable says.

Nothing here imports Triton or touches a GPU driver at import time.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "cpu", "torch")

_forced: str | None = None


def use(backend: str) -> None:
    """Force the direct kernel calls, and the engines built from now on without a backend of their own, to one
    backend ("triton" | "cpu" | "torch"), or "auto" to choose by device. An engine already built keeps its own."""
    global _forced
    _forced = checked(backend)


def checked(backend: str) -> str:
    """`backend` if it names one, else a ValueError listing them."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernels backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def configured() -> str:
    """The backend set with `use()` or, failing that, the LLM_KERNELS_BACKEND environment variable."""
    if _forced is not None:
        return _forced
    backend = (setting("BACKEND") or "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"LLM_KERNELS_BACKEND={backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def setting(name: str) -> str | None:
    """The environment variable LLM_KERNELS_<name>. Its pre-rename spelling KERNELS_<name> (the package was
    called `kernels`) is refused rather than silently ignored."""
    value = os.environ.get(f"LLM_KERNELS_{name}")
    if value is None and os.environ.get(f"KERNELS_{name}"):
        raise ValueError(f"KERNELS_{name} is set, but the variable is now called LLM_KERNELS_{name}")
    return value


def interpreter_on() -> bool:
    """True when TRITON_INTERPRET=1, i.e. Triton kernels run on the CPU through numpy."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_available() -> bool:
    """Whether the `triton` package can be imported (it is optional on CPU-only machines)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(device: torch.device, backend: str | None = None) -> str:
    """The backend ("triton", "cpu" or "torch") that tensors of `device` run under `backend` (None: `configured()`).
    A backend that cannot run there is a RuntimeError."""
    backend = configured() if backend is None else checked(backend)
    if backend == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        return "cpu" if device.type == "cpu" else "torch"
    if backend == "cpu" and device.type != "cpu":
        raise RuntimeError(f"kernels backend 'cpu' was requested for a {device.type} tensor")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("kernels backend 'triton' was requested but the triton package is not installed")
        if device.type != "cuda" and not interpreter_on():
            raise RuntimeError(
                f"kernels backend 'triton' on a {device.type} tensor needs TRITON_INTERPRET=1 "
                "(Triton's CPU interpreter); use the 'torch' backend on this device instead"
            )
    return backend


def resolve_layer_ops(device: torch.device, backend: str | None = None) -> str:
    """The backend ("triton" or "torch") of the fused layer ops on tensors of `device`: Triton wherever the
    attention kernels are Triton (CUDA under `auto`, or forced), the torch references otherwise (there is no C
    version). On an H100 they raised the engine's throughput 1.14x to 1.35x eagerly and 1.65x to
    1.71x with CUDA graphs (two runs, benchmarks/RESULTS.md)."""
    backend = configured() if backend is None else checked(backend)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    return "triton" if backend == "triton" and resolve(device, backend) == "triton" else "torch"
