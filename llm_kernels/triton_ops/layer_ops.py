"""Fused per-token ops of a decoder layer: RMSNorm with the residual add, SiLU-and-mul, rotary embedding.

Each replaces several torch kernels (and their round trips through memory) with one that reads its inputs once and
writes its outputs once. Same results as `llm_kernels.reference.layer_ops` up to float rounding. The engine calls
them through `llm_kernels.rms_norm`, `llm_kernels.silu_and_mul` and `llm_kernels.rotary`, which run them wherever
the attention kernels are Triton (CUDA by default): on an H100 they raised the engine's throughput 1.14x to 1.35x
eagerly and 1.65x to 1.71x with CUDA graphs (benchmarks/RESULTS.md). `python -m benchmarks.kernels` measures each
op alone, `python -m benchmarks.throughput --ablations` the engine with and without them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops._utils import cdiv, next_pow2


def _output(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`out` checked against the result's shape and dtype (any strides but a contiguous last dimension), or a
    new tensor."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != shape or out.dtype != dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {dtype} of shape {shape} with a contiguous last dimension")
    return out


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr, n, eps, stride_x, stride_r, stride_o, stride_s,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:  # rounded to x's dtype, as torch's add is, before the statistics
        x = (x.to(tl.float32) + tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32))
        x = x.to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_s + cols, x, mask=mask)
    xf = x.to(tl.float32)
    normed = (xf * tl.rsqrt(tl.sum(xf * xf, axis=0) / n + eps)).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * stride_o + cols, (w.to(tl.float32) * normed.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`llm_kernels.reference.layer_ops.rms_norm` in one pass: x [T, n] (rows may be strided), weight [n]; the
    result goes into `out` when given."""
    if x.dim() != 2 or x.stride(-1) != 1 or weight.shape != x.shape[1:]:
        raise ValueError("rms_norm needs x [T, n] with a contiguous last dimension and weight [n]")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or residual.stride(-1) != 1):
        raise ValueError("rms_norm's residual must be like x: same shape and dtype, contiguous last dimension")
    weight = weight.contiguous()
    rows, n = x.shape
    out = _output(out, (rows, n), torch.promote_types(weight.dtype, x.dtype), x.device)
    total = torch.empty(rows, n, dtype=x.dtype, device=x.device) if residual is not None else out
    res = residual if residual is not None else x
    block = next_pow2(n)
    _rms_norm_kernel[(rows,)](x, res, weight, out, total, n, eps, x.stride(0), res.stride(0), out.stride(0),
                              total.stride(0), HAS_RESIDUAL=residual is not None, BLOCK=block,
                              num_warps=min(16, max(1, block // 256)))
    return out if residual is None else (out, total)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, half, stride_x, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < half
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + half + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g * tl.sigmoid(g)).to(gate.dtype)  # rounded like torch's silu before the product
    tl.store(out_ptr + row * stride_o + cols, (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`llm_kernels.reference.layer_ops.silu_and_mul` for x [T, 2 * I] (rows may be strided) -> [T, I], into `out`
    when given."""
    if x.dim() != 2 or x.stride(-1) != 1 or x.shape[1] % 2:
        raise ValueError("silu_and_mul needs x [T, 2 * I] with a contiguous last dimension")
    rows, width = x.shape
    half = width // 2
    out = _output(out, (rows, half), x.dtype, x.device)
    block = min(1024, next_pow2(half))
    _silu_and_mul_kernel[(rows, cdiv(half, block))](x, out, half, x.stride(0), out.stride(0), BLOCK=block,
                                                    num_warps=4)
    return out


@triton.jit
def _rotary_kernel(x_ptr, out_ptr, cos_ptr, sin_ptr, heads, half, stride_xt, stride_xh, stride_ot, stride_oh,
                   stride_cos, stride_sin, BLOCK_H: tl.constexpr, HALF_PAD: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, HALF_PAD)
    c = tl.load(cos_ptr + token * stride_cos + cols, mask=cols < half, other=0.0)[None, :]
    s = tl.load(sin_ptr + token * stride_sin + cols, mask=cols < half, other=0.0)[None, :]
    mask = (head < heads)[:, None] & (cols < half)[None, :]
    src = x_ptr + token * stride_xt + head[:, None].to(tl.int64) * stride_xh + cols[None, :]
    x1 = tl.load(src, mask=mask, other=0.0)
    x2 = tl.load(src + half, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    dst = out_ptr + token * stride_ot + head[:, None].to(tl.int64) * stride_oh + cols[None, :]
    tl.store(dst, (a * c - b * s).to(x1.dtype), mask=mask)
    tl.store(dst + half, (b * c + a * s).to(x1.dtype), mask=mask)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`llm_kernels.reference.layer_ops.rotary` for x [T, heads, D] (token and head strides free) with each token's
    float32 rows cos, sin [T, D/2] (row strides free), into `out` when given (x itself works: each element is
    read before it is written)."""
    if x.dim() != 3 or x.stride(-1) != 1 or x.shape[2] % 2:
        raise ValueError("rotary needs x [T, heads, D] (D even, last dimension contiguous)")
    tokens, heads, dim = x.shape
    for rows in (cos, sin):
        if rows.shape != (tokens, dim // 2) or rows.dtype != torch.float32 or rows.stride(-1) != 1:
            raise ValueError("rotary needs float32 cos and sin rows [T, D / 2] with a contiguous last dimension")
    out = _output(out, (tokens, heads, dim), x.dtype, x.device)
    block_h = min(16, next_pow2(heads))
    _rotary_kernel[(tokens, cdiv(heads, block_h))](x, out, cos, sin, heads, dim // 2, x.stride(0), x.stride(1),
                                                   out.stride(0), out.stride(1), cos.stride(0), sin.stride(0),
                                                   BLOCK_H=block_h, HALF_PAD=next_pow2(dim // 2), num_warps=4)
    return out
