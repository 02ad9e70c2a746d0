"""Triton implementations of the kernel API (`llm_kernels.api`): same semantics (the layer ops also take `out=`).

`sample` is the split sampler (`sampling_split`, several programs per row): in the H100 sweep (vocab 128256) it
beat the one-program-per-row sampler in every row but batch 256 with top-k; at small vocabularies its six
launches make an eager call slower (benchmarks/RESULTS.md). The one-program sampler, which production never
runs, is benchmarks/one_program_sampler.py, tested against the same reference.

Importing this package only defines kernels; nothing touches a GPU driver until a kernel is launched, and on
CPU tensors that needs TRITON_INTERPRET=1 set before the import.
"""

from llm_kernels.triton_ops.attention import paged_attention
from llm_kernels.triton_ops.fused_moe import fused_moe
from llm_kernels.triton_ops.kv_store import store_kv
from llm_kernels.triton_ops.layer_ops import rms_norm, rotary, silu_and_mul
from llm_kernels.triton_ops.penalties import apply_penalties
from llm_kernels.triton_ops.sampling_split import sample
from llm_kernels.triton_ops.token_bitmask import apply_token_bitmask

__all__ = ["apply_penalties", "apply_token_bitmask", "fused_moe", "paged_attention", "rms_norm", "rotary", "sample",
           "silu_and_mul", "store_kv"]
