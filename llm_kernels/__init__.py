"""Our kernels: paged attention, KV-cache writes, sampling and penalties, and a decoder layer's small fused ops.

The package is not called `kernels` because that is the top-level module of Hugging Face's kernel-download
library, which transformers requires: both must import in one process.

Each kernel has a Triton implementation (`llm_kernels.triton_ops`) and a plain-torch reference
(`llm_kernels.reference`) that is both its test oracle and the CPU path; decode attention also has a C kernel for
the CPU (`llm_kernels.cpu`). By default Triton runs on CUDA tensors and the `cpu` backend (C where there is a C
kernel, torch elsewhere) on CPU tensors; the layer ops (`rms_norm`, `silu_and_mul`, `rotary`) have no C version and
run their torch references there (`llm_kernels.backend.resolve_layer_ops`).

`llm_kernels.select(device, backend)` chooses once and returns a `KernelSet` of functions: that is what an engine
holds. The functions here choose per call; `llm_kernels.use("triton" | "cpu" | "torch" | "auto")` or the
LLM_KERNELS_BACKEND environment variable sets their backend (and that of engines built without one).
"""

from llm_kernels.api import (
                             apply_penalties,
                             apply_token_bitmask,
                             fused_moe,
                             paged_attention,
                             rms_norm,
                             rotary,
                             sample,
                             silu_and_mul,
                             store_kv,
)
from llm_kernels.backend import configured as configured_backend
from llm_kernels.backend import use
from llm_kernels.kernel_set import KernelSet, select

__all__ = ["KernelSet", "apply_penalties", "apply_token_bitmask", "configured_backend", "fused_moe", "paged_attention",
           "rms_norm", "rotary", "sample", "select", "silu_and_mul", "store_kv", "use"]
