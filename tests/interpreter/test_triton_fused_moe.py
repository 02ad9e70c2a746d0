"""The fused MoE kernel against the torch reference (Triton's interpreter, fp32 and fp16), and the reference
against each expert's MLP written out token by token."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import llm_kernels
from llm_kernels.reference.moe import fused_moe as reference
from llm_kernels.triton_ops.fused_moe import align, fused_moe


def _case(tokens: int, experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) / hidden ** 0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=g) / inter ** 0.5).to(dtype)
    logits = torch.randn(tokens, experts, generator=g)
    weights, ids = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
    return x, w13, w2, weights, ids


def test_the_reference_is_each_experts_mlp():
    x, w13, w2, weights, ids = _case(7, 5, 2, 32, 48, torch.float32)
    expected = torch.zeros_like(x)
    for t in range(7):
        for k in range(2):
            gate, up = (w13[ids[t, k]] @ x[t]).chunk(2)
            expected[t] += weights[t, k] * (w2[ids[t, k]] @ (F.silu(gate) * up))
    torch.testing.assert_close(reference(x, w13, w2, weights, ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("tokens", "experts", "top_k", "hidden", "inter", "dtype"), [
    (5, 4, 2, 32, 64, torch.float32),
    (37, 8, 2, 64, 48, torch.float16),            # widths off the tiles, several blocks for some experts
    (1, 6, 3, 32, 32, torch.float32),             # a decode: one token
    (20, 3, 1, 48, 40, torch.float32),
])
def test_triton_matches_the_reference(tokens, experts, top_k, hidden, inter, dtype):
    x, w13, w2, weights, ids = _case(tokens, experts, top_k, hidden, inter, dtype, seed=tokens)
    tol = 2e-5 if dtype == torch.float32 else 3e-3
    torch.testing.assert_close(fused_moe(x, w13, w2, weights, ids).float(),
                               reference(x, w13, w2, weights, ids).float(), rtol=tol, atol=tol)


def test_alignment_groups_pairs_by_expert_in_whole_blocks():
    ids = torch.tensor([[2, 0], [2, 1], [0, 2]])
    pairs, experts = align(ids, 4, 4)
    blocks = pairs.view(-1, 4)
    for block, expert in zip(blocks.tolist(), experts.tolist()):
        real = [p for p in block if p < 6]
        assert all(ids.view(-1)[p] == expert for p in real)
    assert sorted(p for p in pairs.tolist() if p < 6) == list(range(6))


def test_through_the_api_and_the_kernel_set():
    x, w13, w2, weights, ids = _case(4, 3, 2, 32, 32, torch.float32, seed=9)
    llm_kernels.use("triton")
    torch.testing.assert_close(llm_kernels.fused_moe(x, w13, w2, weights, ids), reference(x, w13, w2, weights, ids),
                               rtol=2e-5, atol=2e-5)
    assert llm_kernels.select("cpu", "triton").fused_moe is fused_moe
    assert llm_kernels.select("cpu", "cpu").fused_moe is reference
