"""`fused_moe` on Triton (contract: `llm_kernels.api.fused_moe`), organised as vLLM's and SGLang's are: the
(token, choice) pairs sorted by expert and padded to whole blocks per expert (`align`, in torch on the device),
then one grouped GEMM kernel launched twice: the gate/up projection of each block's tokens by its expert's
weights, SiLU-and-mul (`silu_and_mul`), then the down projection, each row scaled by its routing weight; the
choices of a token are summed last.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops._utils import cdiv, fp32_dot_precision, upcast_to_fp32
from llm_kernels.triton_ops.layer_ops import silu_and_mul


@triton.jit
def _grouped_gemm_kernel(a_ptr, b_ptr, c_ptr, weights_ptr, sorted_ptr, experts_ptr, num_pairs, n, k,
                         stride_am, stride_be, stride_bn, stride_cm, TOP_K: tl.constexpr, A_PER_TOKEN: tl.constexpr,
                         WEIGHTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, FP32_DOT: tl.constexpr):
    """c[pair] = a[row of pair] @ b[expert]^T (times the pair's routing weight when WEIGHTED) for the BLOCK_M
    sorted pairs of this program's block, all of one expert; pair = token * TOP_K + choice, padding pairs
    (>= num_pairs) skipped. a's row is the pair's token (A_PER_TOKEN) or the pair itself."""
    block = tl.program_id(0)
    tile_n = tl.program_id(1)
    if tl.load(sorted_ptr + block * BLOCK_M) >= num_pairs:
        return                      # a block past the used ones (padding comes last in a block): nothing to do
    expert = tl.load(experts_ptr + block).to(tl.int64)
    pairs = tl.load(sorted_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    pair_ok = pairs < num_pairs
    rows = (pairs // TOP_K if A_PER_TOKEN else pairs).to(tl.int64)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, k, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k
        a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :], mask=pair_ok[:, None] & k_ok[None, :],
                    other=0.0)
        b = tl.load(b_ptr + expert * stride_be + cols[None, :] * stride_bn + ks[:, None],
                    mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        if UPCAST:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=FP32_DOT)
        else:
            acc += tl.dot(a, b)
    if WEIGHTED:
        acc *= tl.load(weights_ptr + pairs, mask=pair_ok, other=0.0)[:, None]
    tl.store(c_ptr + pairs.to(tl.int64)[:, None] * stride_cm + cols[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=pair_ok[:, None] & col_ok[None, :])


def align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted pairs, padded per expert to whole blocks of `block_m` with the out-of-range pair num_pairs; the
    expert of each block). On the device, without a host sync."""
    flat = topk_ids.reshape(-1).long()
    num_pairs = flat.numel()
    # Not bincount: on CUDA it reads its input's range back to the host, which a CUDA-graph capture forbids.
    counts = torch.zeros(num_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    # Worst case of blocks: every expert's last block partial. Fixed size: no sync for the padded total.
    capacity = (cdiv(num_pairs, block_m) + num_experts) * block_m
    starts = torch.cumsum(padded, 0) - padded
    order = torch.argsort(flat, stable=True)
    rank = torch.arange(num_pairs, device=flat.device) - (torch.cumsum(counts, 0) - counts)[flat[order]]
    sorted_pairs = torch.full((capacity,), num_pairs, dtype=torch.int32, device=flat.device)
    sorted_pairs[starts[flat[order]] + rank] = order.to(torch.int32)
    block_starts = torch.arange(0, capacity, block_m, device=flat.device)
    experts = torch.searchsorted(torch.cumsum(padded, 0), block_starts, right=True).clamp(max=num_experts - 1)
    return sorted_pairs, experts.to(torch.int32)


def _gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, weights: torch.Tensor, sorted_pairs: torch.Tensor,
          experts: torch.Tensor, num_pairs: int, top_k: int, per_token: bool, weighted: bool, block_m: int) -> None:
    n, k = b.shape[1], b.shape[2]
    upcast = upcast_to_fp32(a.dtype, b.dtype, a.device)
    block_n, block_k = 32, 32
    _grouped_gemm_kernel[(experts.numel(), cdiv(n, block_n))](
        a, b, c, weights, sorted_pairs, experts, num_pairs, n, k, a.stride(0), b.stride(0), b.stride(1), c.stride(0),
        TOP_K=top_k, A_PER_TOKEN=per_token, WEIGHTED=weighted, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        UPCAST=upcast, FP32_DOT=fp32_dot_precision(a.device), num_warps=4)


def fused_moe(hidden: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """The mixture-of-experts feed-forward (contract: `llm_kernels.api.fused_moe`)."""
    num_tokens, hidden_size = hidden.shape
    top_k = topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    if num_pairs == 0:
        return torch.zeros_like(hidden)
    hidden, w_gate_up, w_down = hidden.contiguous(), w_gate_up.contiguous(), w_down.contiguous()
    block_m = 16
    sorted_pairs, experts = align(topk_ids, w_gate_up.shape[0], block_m)
    weights = topk_weights.reshape(-1).float().contiguous()
    gate_up = torch.empty(num_pairs, w_gate_up.shape[1], dtype=hidden.dtype, device=hidden.device)
    _gemm(hidden, w_gate_up, gate_up, weights, sorted_pairs, experts, num_pairs, top_k, True, False, block_m)
    h = silu_and_mul(gate_up)
    down = torch.empty(num_pairs, hidden_size, dtype=torch.float32, device=hidden.device)
    _gemm(h, w_down, down, weights, sorted_pairs, experts, num_pairs, top_k, False, True, block_m)
    return down.view(num_tokens, top_k, hidden_size).sum(dim=1).to(hidden.dtype)
