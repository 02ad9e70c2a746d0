"""Compile every Triton kernel for an NVIDIA GPU on a machine without one (run by test_triton_gpu_compile.py): the
kernel package's and the one-program sampler kept in benchmarks/ for comparison.

The interpreter runs the kernels' logic but not the GPU compiler, which rejects things the interpreter accepts
(loop-carried type changes, dot shapes, shared-memory use, ...). Here the wrappers are called on CPU tensors
with the GPU launch configurations (`_utils.compiled_for_gpu` patched), each launch is captured and compiled
with Triton's own compiler and ptxas for the target, pointers and strides specialised as 16-aligned as at a
real launch. The cubin is not run. Usage: python gpu_compile_check.py [capability, e.g. 90].
"""

from __future__ import annotations

import importlib
import re
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32",
                 torch.int64: "*i64", torch.int8: "*i8"}
MAX_SHARED_MEMORY = {80: 163 * 1024, 90: 227 * 1024}
EXACT_DIVISION_MODULES = (".sampling_split", ".one_program_sampler")   # the samplers: production's, benchmarks'
KERNEL_MODULES = ("llm_kernels.triton_ops.kv_store", "llm_kernels.triton_ops.decode_attention",
                  "llm_kernels.triton_ops.prefill_attention", "llm_kernels.triton_ops.sampling_split",
                  "llm_kernels.triton_ops.penalties", "llm_kernels.triton_ops.layer_ops",
                  "llm_kernels.triton_ops.token_bitmask", "llm_kernels.triton_ops.fused_moe",
                  "benchmarks.one_program_sampler")


def _signature(fn, bound: dict) -> tuple[dict, dict, dict]:
    signature, constants, attrs = {}, {}, {}
    for index, param in enumerate(fn.params):
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constants[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = POINTER_TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if param.name.startswith("stride") and value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constants, attrs


class CompileInsteadOfLaunch:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` compiles it for the target instead."""

    def __init__(self, fn, capability: int, compiled: list, exact: set) -> None:
        self.fn, self.capability, self.compiled, self.exact, self.seen = fn, capability, compiled, exact, set()

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            bound = dict(zip(self.fn.arg_names, args))
            bound.update({k: v for k, v in kwargs.items() if k in self.fn.arg_names})
            options = {k: v for k, v in kwargs.items() if k not in self.fn.arg_names}
            signature, constants, attrs = _signature(self.fn, bound)
            key = repr((self.fn.__name__, signature, constants, options))
            if key in self.seen:
                return
            self.seen.add(key)
            kernel = triton.compile(ASTSource(self.fn, signature, constants, attrs),
                                    target=GPUTarget("cuda", self.capability, 32), options=options)
            shared = kernel.metadata.shared
            # The samplers' passes must agree bit for bit on each probability (topk_topp.scaled): no approximate
            # division, which ptxas rewrites as a reciprocal multiply and fuses differently from pass to pass.
            if self.fn.__module__.endswith(EXACT_DIVISION_MODULES):
                assert not re.search(r"div\.(full|approx)", kernel.asm["ptx"]), (self.fn.__name__, constants)
                self.exact.add(self.fn.__name__)
            assert shared <= MAX_SHARED_MEMORY.get(self.capability, 99 * 1024), (self.fn.__name__, constants, shared)
            self.compiled.append((self.fn.__name__, constants, options, shared))
        return launch


def main(capability: int) -> None:
    utils = importlib.import_module("llm_kernels.triton_ops._utils")
    utils.compiled_for_gpu = lambda device: True
    utils._cuda_sm_count = lambda index: 132
    torch.cuda.current_device = lambda: 0
    compiled: list = []
    exact: set = set()
    modules = {name.rpartition(".")[2]: importlib.import_module(name) for name in KERNEL_MODULES}
    for module in modules.values():
        for name, value in list(vars(module).items()):
            if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                setattr(module, name, CompileInsteadOfLaunch(value, capability, compiled, exact))

    attention = importlib.import_module("llm_kernels.triton_ops.attention")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for heads, kv_heads, head_dim, block_size in ((32, 8, 128, 16), (16, 16, 80, 32), (8, 2, 256, 16)):
            q = torch.zeros(5, heads, head_dim, dtype=dtype)
            cache = torch.zeros(8, block_size, kv_heads, head_dim, dtype=dtype)
            tables = torch.zeros(2, 4096 // block_size, dtype=torch.int32)           # room for split decodes
            lens = torch.tensor([3, 40], dtype=torch.int32)
            mixed, decodes = torch.tensor([0, 1, 5], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32)
            for window in (0, 64):                   # the windowed prefill is its own compile (WINDOWED)
                attention.paged_attention(q, cache, cache, tables, lens, mixed, 4, 0.1, window)
                attention.paged_attention(q[:2], cache, cache, tables, lens, decodes, 1, 0.1, window)
            modules["kv_store"].store_kv(q[:, :kv_heads].float(), q[:, :kv_heads].float(), cache, cache,
                                         torch.arange(5))
    logits = torch.zeros(3, 1000)
    params = (torch.ones(3), torch.ones(3, dtype=torch.int32), torch.ones(3), torch.zeros(3),
              torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    modules["one_program_sampler"].sample(logits, *params)
    for lane_sums, compact in ((True, False), (False, True), (True, True)):
        modules["one_program_sampler"].sample_with_thresholds(logits, *params, lane_sums=lane_sums, compact=compact)
    modules["sampling_split"].sample(logits, *params)
    modules["sampling_split"].sample(torch.zeros(1, 128256), *(p[:1] for p in params))    # 126 spans per row
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        layer_ops, x = modules["layer_ops"], torch.zeros(4, 4096, dtype=dtype)
        layer_ops.rms_norm(x, x[0], 1e-5)
        layer_ops.rms_norm(x, x[0], 1e-5, x)
        layer_ops.rms_norm(x.view(128, 128), x[0, :128], 1e-6)         # Qwen3's q/k norm: rows of one head
        layer_ops.silu_and_mul(x)
        layer_ops.rotary(x.view(4, 32, 128), torch.zeros(4, 64), torch.zeros(4, 64))
    tokens = torch.zeros(3, 4, dtype=torch.int64)
    modules["penalties"].apply_penalties(logits, tokens, tokens, torch.zeros(3), torch.zeros(3), torch.ones(3))
    for dtype in (torch.float32, torch.float16):
        modules["token_bitmask"].apply_token_bitmask(torch.zeros(3, 151936, dtype=dtype),
                                                     torch.zeros(2, 4748, dtype=torch.int32), torch.tensor([0, 2]))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):          # Qwen3-30B-A3B's expert shapes
        modules["fused_moe"].fused_moe(torch.zeros(5, 2048, dtype=dtype), torch.zeros(8, 1536, 2048, dtype=dtype),
                                       torch.zeros(8, 2048, 768, dtype=dtype), torch.ones(5, 2),
                                       torch.zeros(5, 2, dtype=torch.int64))
    names = sorted({name for name, *_ in compiled})
    print(f"compiled {len(compiled)} launches for sm_{capability}: {', '.join(names)}")
    print(f"no approximate division in: {', '.join(sorted(exact))}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
