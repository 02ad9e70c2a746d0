"""The fused layer ops (RMSNorm + residual, SiLU-and-mul, rotary) against their torch references, in the
interpreter. Outputs start as NaN to catch unwritten elements; inputs are strided views where the engine's are."""

from __future__ import annotations

import pytest
import torch

import llm_kernels
from llm_kernels.reference import layer_ops as ref
from llm_kernels.triton_ops import layer_ops

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def nan_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [64, 100, 256])
def test_rms_norm(dtype, width):
    g = torch.Generator().manual_seed(width)
    wide = torch.randn(5, width + 7, generator=g).to(dtype)
    x = wide[:, 3:3 + width]                                   # rows strided, like a slice of a fused output
    weight = (torch.rand(width, generator=g) + 0.5).to(dtype)
    expected = ref.rms_norm(x, weight, 1e-6)
    out = layer_ops.rms_norm(x, weight, 1e-6, out=nan_like(expected))
    torch.testing.assert_close(out, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_with_residual(dtype):
    g = torch.Generator().manual_seed(1)
    x, residual = (torch.randn(7, 96, generator=g).to(dtype) for _ in range(2))
    weight = torch.randn(96, generator=g).to(dtype)
    expected, expected_sum = ref.rms_norm(x, weight, 1e-5, residual)
    out, total = layer_ops.rms_norm(x, weight, 1e-5, residual, out=nan_like(expected))
    # The same rounding of the same sum; but the interpreter's float32 -> bfloat16 conversion is off by one unit
    # in the last place in about a third of elements here (measured), so bfloat16 gets that much room.
    exact = 0 if dtype != torch.bfloat16 else 2 ** -7
    torch.testing.assert_close(total, expected_sum, rtol=exact, atol=exact)
    torch.testing.assert_close(out, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_rms_norm_float32_weight_on_half_input():
    """torch promotes weight * x to float32; so does the kernel."""
    x, weight = torch.randn(3, 64).half(), torch.randn(64)
    out = layer_ops.rms_norm(x, weight, 1e-6)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.rms_norm(x, weight, 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("half", [100, 1500])                   # 1500: two column programs per row
def test_silu_and_mul(dtype, half):
    g = torch.Generator().manual_seed(half)
    x = (torch.randn(3, 2 * half + 4, generator=g) * 3).to(dtype)[:, 2:2 + 2 * half]
    expected = ref.silu_and_mul(x)
    out = layer_ops.silu_and_mul(x, out=nan_like(expected))
    torch.testing.assert_close(out, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def rope_rows(tokens: int, half: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin rows [tokens, half] as the engine's model passes them: views of one [tokens, 2 * half] lookup."""
    angles = torch.rand(tokens, half, generator=g) * 100
    return torch.cat([angles.cos(), angles.sin()], dim=-1).chunk(2, dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "head_dim"), [(6, 64), (3, 80), (20, 96), (5, 128), (2, 256)])
def test_rotary_on_query_and_key_heads_of_a_fused_projection(dtype, heads, head_dim):
    g = torch.Generator().manual_seed(head_dim)
    tokens, extra = 4, 2                                        # the value heads that follow q and k
    qkv = torch.randn(tokens, heads + extra, head_dim, generator=g).to(dtype)
    x = qkv[:, :heads]
    cos, sin = rope_rows(tokens, head_dim // 2, g)
    expected = ref.rotary(x, cos, sin)
    out = layer_ops.rotary(x, cos, sin, out=nan_like(expected))
    torch.testing.assert_close(out, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    layer_ops.rotary(x, cos, sin, out=x)                        # in place
    torch.testing.assert_close(x, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def test_references_match_transformers():
    """RMSNorm and rotary (with the engine's cos/sin rows) as transformers' Llama computes them. The engine's
    model calls these through `llm_kernels`, which runs the references on the CPU (and the fused kernels wherever
    attention runs Triton)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    from engine.models.rotary import RotaryEmbedding

    x = torch.randn(4, 64)
    norm = LlamaRMSNorm(64, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    with torch.no_grad():
        torch.testing.assert_close(ref.rms_norm(x, norm.weight, 1e-6), norm(x), rtol=0, atol=0)
    rope = RotaryEmbedding(32, 128, 10000.0, None)
    positions = torch.tensor([0, 7, 100, 127])
    q, k = torch.randn(4, 3, 32), torch.randn(4, 1, 32)
    freqs = torch.outer(positions.float(), rope.inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    # transformers' layout: [batch, heads, tokens, D], cos/sin [batch, tokens, D]
    want_q, want_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], emb.cos()[None],
                                          emb.sin()[None])
    cos, sin = rope.cos_sin(positions)
    torch.testing.assert_close(ref.rotary(q, cos, sin), want_q[0].transpose(0, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ref.rotary(k, cos, sin), want_k[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


def test_strided_weight_and_rows():
    x, wide_weight = torch.randn(3, 64), torch.randn(128)
    torch.testing.assert_close(layer_ops.rms_norm(x, wide_weight[::2], 1e-6), ref.rms_norm(x, wide_weight[::2], 1e-6),
                               rtol=1e-5, atol=1e-5)
    heads = torch.randn(3, 2, 16)
    wide = torch.randn(3, 20)
    cos, sin = wide[:, 1:9], wide[:, 11:19]                     # rows with a stride of their own
    torch.testing.assert_close(layer_ops.rotary(heads, cos, sin), ref.rotary(heads, cos, sin), rtol=1e-5, atol=1e-5)


def test_the_kernel_api_runs_them_where_attention_runs_triton(monkeypatch):
    """`llm_kernels.rms_norm` / `silu_and_mul` / `rotary`: Triton wherever the attention kernels are Triton (CUDA
    under "auto", anywhere when "triton" is forced), the references on the CPU otherwise, with the same results;
    the API's rms_norm takes [..., n] (Qwen3's per-head q/k norm) by flattening it for the kernel."""
    from llm_kernels import backend, triton_ops

    calls = []
    for name in ("rms_norm", "silu_and_mul", "rotary"):
        kernel = getattr(triton_ops, name)
        monkeypatch.setattr(triton_ops, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    g = torch.Generator().manual_seed(5)
    heads = torch.randn(3, 6, 32, generator=g)[:, :4]           # q and k heads of a fused projection: strided
    x, residual, weight = torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g), torch.randn(32)
    gate_up = torch.randn(3, 64, generator=g)
    cos, sin = rope_rows(3, 16, g)
    cases = [(llm_kernels.rms_norm, (heads, weight, 1e-6)), (llm_kernels.rms_norm, (x, weight, 1e-6, residual)),
             (llm_kernels.silu_and_mul, (gate_up,)), (llm_kernels.rotary, (heads, cos, sin))]
    assert backend.resolve_layer_ops(torch.device("cpu")) == "torch"
    assert backend.resolve_layer_ops(torch.device("cuda")) == "triton"
    expected = [op(*args) for op, args in cases]
    assert calls == []
    llm_kernels.use("cpu")                                          # the C backend has no layer ops: the references
    assert backend.resolve_layer_ops(torch.device("cpu")) == "torch"
    llm_kernels.use("triton")
    assert backend.resolve_layer_ops(torch.device("cpu")) == "triton"
    got = [op(*args) for op, args in cases]
    assert calls == ["rms_norm", "rms_norm", "silu_and_mul", "rotary"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got[0].shape == heads.shape


def test_inputs_that_do_not_fit_are_rejected():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="out must be"):
        layer_ops.silu_and_mul(x, out=torch.empty(2, 8))
    with pytest.raises(ValueError, match="silu_and_mul needs"):
        layer_ops.silu_and_mul(torch.randn(2, 7))
    with pytest.raises(ValueError, match="residual must be like x"):
        layer_ops.rms_norm(x, torch.ones(8), 1e-6, torch.randn(8))              # torch would broadcast it
    with pytest.raises(ValueError, match="residual must be like x"):
        layer_ops.rms_norm(x, torch.ones(8), 1e-6, x.half())
    with pytest.raises(ValueError, match="D even"):
        layer_ops.rotary(torch.randn(2, 1, 7), torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="rows"):
        layer_ops.rotary(torch.randn(2, 1, 8), torch.ones(4, 4), torch.ones(4, 4))              # not one per token
    with pytest.raises(ValueError, match="rows"):
        layer_ops.rotary(torch.randn(2, 1, 8), torch.ones(2, 4).half(), torch.ones(2, 4).half())
