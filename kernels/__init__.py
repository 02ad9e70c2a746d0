"""Our kernels: paged attention, KV-cache writes, sampling and penalties, and a decoder layer's small fused ops.

Each kernel has a Triton implementation (`kernels.triton_ops`) and a plain-torch reference
(`kernels.reference`) that is both its test oracle and the CPU path; decode attention also has a C kernel for
the CPU (`kernels.cpu`). `kernels.use("triton" | "cpu" | "torch" | "auto")` or the KERNELS_BACKEND environment
variable picks one; by default Triton runs on CUDA tensors and the `cpu` backend (C where there is a C kernel,
torch elsewhere) on CPU tensors; the layer ops (`rms_norm`, `silu_and_mul`, `rotary`) have no C version and run
their torch references there (`kernels.backend.resolve_layer_ops`).
"""

from kernels.api import apply_penalties, paged_attention, rms_norm, rotary, sample, silu_and_mul, store_kv
from kernels.backend import configured as configured_backend
from kernels.backend import use

__all__ = ["apply_penalties", "configured_backend", "paged_attention", "rms_norm", "rotary", "sample", "silu_and_mul",
           "store_kv", "use"]
