"""The kernels of one backend, chosen once: what an engine holds instead of asking the backend on every call.

`select(device, backend)` resolves the backend for a device (`llm_kernels.backend.resolve`) and returns a
`KernelSet`, a record of the functions to call. An engine selects once when it is built, so its eager steps and
its CUDA graphs run the same kernels whatever `llm_kernels.use(...)` says later, and a step pays no lookup.
Swapping one kernel for an experiment is `dataclasses.replace(select(device), paged_attention=mine)`, handed to
the engine as `LLM(..., kernels=that)`; the functions must keep the contracts of `llm_kernels.api`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from llm_kernels import backend as backends
from llm_kernels.cpu import attention as cpu_attention
from llm_kernels.reference import attention as ref_attention
from llm_kernels.reference import layer_ops as ref_layer_ops
from llm_kernels.reference import moe as ref_moe
from llm_kernels.reference import sampling as ref_sampling
from llm_kernels.reference import token_bitmask as ref_token_bitmask


@dataclass(frozen=True, slots=True)
class KernelSet:
    """One implementation of each kernel of `llm_kernels.api`, with the names of the backends they come from."""

    backend: str                    # attention, KV writes, sampling, penalties: "triton" | "cpu" | "torch"
    layer_ops: str                  # rms_norm, silu_and_mul, rotary: "triton" | "torch"
    store_kv: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    sample: Callable[..., torch.Tensor]
    apply_penalties: Callable[..., torch.Tensor]
    apply_token_bitmask: Callable[..., torch.Tensor]
    rms_norm: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[..., torch.Tensor]
    rotary: Callable[..., torch.Tensor]
    fused_moe: Callable[..., torch.Tensor]

    def with_torch_layer_ops(self) -> KernelSet:
        """This set with the torch references for the layer ops (the ablation of the fused Triton ones)."""
        return replace(self, layer_ops="torch", rms_norm=ref_layer_ops.rms_norm,
                       silu_and_mul=ref_layer_ops.silu_and_mul, rotary=ref_layer_ops.rotary)


def select(device: torch.device | str, backend: str | None = None) -> KernelSet:
    """The kernels that tensors on `device` run under `backend` ("auto", "triton", "cpu" or "torch"; None: what
    `llm_kernels.use` or LLM_KERNELS_BACKEND says now). A backend that cannot run on the device is a
    RuntimeError, an unknown name a ValueError."""
    device = torch.device(device)
    name = backends.resolve(device, backend)
    layer_ops = backends.resolve_layer_ops(device, backend)
    triton_ops = importlib.import_module("llm_kernels.triton_ops") if "triton" in (name, layer_ops) else None
    if name == "triton":
        attention = (triton_ops.store_kv, triton_ops.paged_attention, triton_ops.apply_penalties)
        draw, mask, moe = triton_ops.sample, triton_ops.apply_token_bitmask, triton_ops.fused_moe
    else:
        paged = cpu_attention.paged_attention if name == "cpu" else ref_attention.paged_attention
        attention = (ref_attention.store_kv, paged, ref_sampling.apply_penalties)
        draw, mask, moe = ref_sampling.sample, ref_token_bitmask.apply_token_bitmask, ref_moe.fused_moe
    if layer_ops == "triton":
        norm, act, rope = _flat_rms_norm(triton_ops.rms_norm), triton_ops.silu_and_mul, triton_ops.rotary
    else:
        norm, act, rope = ref_layer_ops.rms_norm, ref_layer_ops.silu_and_mul, ref_layer_ops.rotary
    store, paged, penalties = attention
    return KernelSet(name, layer_ops, store, paged, _checked_sample(draw), penalties, mask, norm, act, rope, moe)


def _checked_sample(draw: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`draw` behind the shape check of `llm_kernels.api.sample` (a short parameter would be read past its end)."""

    def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
               min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        params = (temperature, top_k, top_p, min_p, seeds, positions)
        if logits.dim() != 2 or any(t.shape != logits.shape[:1] for t in params):
            raise ValueError(f"sample: logits must be [B, V] and each parameter [B]; got logits "
                             f"{tuple(logits.shape)}, parameters {[tuple(t.shape) for t in params]}")
        return draw(logits, *params)

    return sample


def _flat_rms_norm(kernel: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
                   ) -> Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The Triton RMSNorm (rows of a 2-D tensor) on x of any rank, as the API's contract has it."""

    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(-1, x.shape[-1])
        got = kernel(flat, weight, eps, None if residual is None else residual.reshape(flat.shape))
        if residual is None:
            return got.view(x.shape)
        return got[0].view(x.shape), got[1].view(x.shape)

    return rms_norm
