"""Every kernel of a `KernelSet` against the contract of `llm_kernels.api`, checked with the torch references
(`llm_kernels.reference`) on small random inputs: the sets this machine runs, and a kernel of your own.

To check yours before you run the engine with it, name a module attribute that is a KernelSet (say
`dataclasses.replace(llm_kernels.select("cpu"), paged_attention=my_attention)`):

    LLM_KERNELS_CANDIDATE=my_module:my_set python -m pytest tests/test_kernel_contract.py

Inputs live on the candidate's device (CUDA for a Triton set, else the CPU).
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from paged_batches import make_batch

import llm_kernels
from llm_kernels.reference import attention as ref_attention
from llm_kernels.reference import layer_ops as ref_layer_ops
from llm_kernels.reference import moe as ref_moe
from llm_kernels.reference import sampling as ref_sampling
from llm_kernels.reference import token_bitmask as ref_token_bitmask


def _candidates() -> dict[str, llm_kernels.KernelSet]:
    """The named candidate, else the sets this machine runs that are not the references themselves: the CPU's
    (its C attention kernel) and, with a GPU, Triton's."""
    named = os.environ.get("LLM_KERNELS_CANDIDATE")
    if named:
        module, _, attribute = named.partition(":")
        return {named: getattr(importlib.import_module(module), attribute)}
    sets = {"cpu": llm_kernels.select("cpu", "cpu")}
    if torch.cuda.is_available():
        sets["triton"] = llm_kernels.select("cuda", "triton")
    return sets


CANDIDATES = _candidates()


@pytest.fixture(params=list(CANDIDATES))
def kernels(request) -> llm_kernels.KernelSet:
    return CANDIDATES[request.param]


def _device(kernels: llm_kernels.KernelSet) -> torch.device:
    return torch.device("cuda" if kernels.backend == "triton" and torch.cuda.is_available() else "cpu")


def _close(got: torch.Tensor, expected: torch.Tensor, tolerance: float = 2e-5) -> None:
    torch.testing.assert_close(got.float().cpu(), expected.float().cpu(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(("seq_lens", "q_lens", "window"), [
    ([1, 37, 16, 130], [1, 1, 1, 1], 0),                  # decodes
    ([45, 70, 2, 33], [45, 19, 2, 33], 0),                # prompts, and a chunk over a cached prefix
    ([90, 5, 64], [1, 5, 20], 7),                         # mixed, in a sliding window
])
def test_paged_attention_and_store_kv(kernels, seq_lens, q_lens, window):
    device = _device(kernels)
    q, k_cache, v_cache, tables, lens, cu = (t.to(device) for t in make_batch(seq_lens, q_lens, 8, 2, 64, 16,
                                                                              torch.float32, seed=len(seq_lens)))
    got = kernels.paged_attention(q, k_cache, v_cache, tables, lens, cu, max(q_lens), 0.125, window)
    _close(got, ref_attention.paged_attention(q.cpu(), k_cache.cpu(), v_cache.cpu(), tables.cpu(), lens.cpu(),
                                              cu.cpu(), max(q_lens), 0.125, window))
    keys, values = torch.randn(2, 6, 2, 64, device=device)
    slots = torch.tensor([3, -1, 17, 40, 0, 63], device=device)           # -1: a padding token, not written
    ours, theirs = (k_cache.clone(), v_cache.clone()), (k_cache.cpu().clone(), v_cache.cpu().clone())
    kernels.store_kv(keys, values, *ours, slots)
    ref_attention.store_kv(keys.cpu(), values.cpu(), *theirs, slots.cpu())
    for got_cache, expected_cache in zip(ours, theirs):
        assert torch.equal(got_cache.cpu().nan_to_num(7.0), expected_cache.nan_to_num(7.0))


def test_sample_draws_within_the_filters(kernels):
    """Greedy rows (temperature 0) and top_k 1 draw the first argmax; a filtered row draws a token it keeps; a draw
    depends on (seed, position), not on the batch."""
    device, g = _device(kernels), torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=g).to(device)
    logits[1, 10] = logits[1, 20] = logits[1].max() + 1                   # a tie: the first index wins
    temperature = torch.tensor([0.0, 0.0, 1.0, 0.7, 1.0, 1.3], device=device)
    top_k = torch.tensor([0, 0, 1, 5, 0, 0], dtype=torch.int32, device=device)
    top_p = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.3, 1.0], device=device)
    min_p = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.2], device=device)
    seeds, positions = torch.arange(6, device=device) + 11, torch.arange(6, device=device) + 3
    args = (temperature, top_k, top_p, min_p, seeds, positions)
    drawn = kernels.sample(logits.clone(), *args).cpu()
    argmax = logits.cpu().argmax(dim=-1)
    assert drawn[[0, 1, 2]].tolist() == argmax[[0, 1, 2]].tolist() and drawn[1] == 10
    assert drawn[3] in logits[3].cpu().topk(5).indices
    probs = torch.softmax(logits.cpu(), dim=-1)
    ranked = probs[4].sort(descending=True)
    nucleus = ranked.indices[:int((ranked.values.cumsum(0) < 0.3).sum()) + 1]
    assert drawn[4] in nucleus
    assert torch.softmax(logits[5].cpu() / 1.3, -1)[drawn[5]] >= 0.2 * torch.softmax(logits[5].cpu() / 1.3, -1).max()
    alone = kernels.sample(logits[3:4].clone(), *(a[3:4] for a in args)).cpu()
    assert alone.item() == drawn[3].item()


def test_penalties_bitmask_and_layer_ops(kernels):
    device, g = _device(kernels), torch.Generator().manual_seed(1)
    on = {"device": device}
    logits = torch.randn(3, 70, generator=g)
    prompt = torch.tensor([[1, 2, 2, -1], [5, -1, -1, -1], [-1, -1, -1, -1]])
    output = torch.tensor([[2, 9], [5, 5], [-1, -1]])
    penalties = (torch.tensor([0.5, 0.0, 1.0]), torch.tensor([0.2, 1.0, 0.0]), torch.tensor([1.3, 1.0, 0.8]))
    got = kernels.apply_penalties(logits.clone().to(device), prompt.to(device), output.to(device),
                                  *(p.to(device) for p in penalties))
    _close(got, ref_sampling.apply_penalties(logits.clone(), prompt, output, *penalties))
    bitmask = torch.randint(-2 ** 31, 2 ** 31, (2, 2), generator=g, dtype=torch.int64).to(torch.int32)
    rows = torch.tensor([2, 0])
    got = kernels.apply_token_bitmask(logits.clone().to(device), bitmask.to(device), rows.to(device))
    _close(got, ref_token_bitmask.apply_token_bitmask(logits.clone(), bitmask, rows))
    x, residual, weight = torch.randn(5, 48, generator=g), torch.randn(5, 48, generator=g), torch.rand(48, generator=g)
    _close(kernels.rms_norm(x.to(device), weight.to(device), 1e-6), ref_layer_ops.rms_norm(x, weight, 1e-6))
    got = kernels.rms_norm(x.to(device), weight.to(device), 1e-6, residual.to(device))
    for got_part, expected_part in zip(got, ref_layer_ops.rms_norm(x, weight, 1e-6, residual)):
        _close(got_part, expected_part)
    _close(kernels.silu_and_mul(x.to(device)), ref_layer_ops.silu_and_mul(x))
    heads, cos, sin = torch.randn(5, 3, 16, generator=g), torch.rand(5, 8, generator=g), torch.rand(5, 8, generator=g)
    _close(kernels.rotary(heads.to(device), cos.to(device), sin.to(device)), ref_layer_ops.rotary(heads, cos, sin))
    hidden, gate_up, down = torch.randn(4, 32, generator=g), torch.randn(3, 48, 32, generator=g), \
        torch.randn(3, 32, 24, generator=g)
    weights, ids = torch.rand(4, 2, generator=g), torch.tensor([[0, 2], [1, 1], [2, 0], [1, 0]])
    got = kernels.fused_moe(*(t.to(**on) for t in (hidden, gate_up, down, weights, ids)))
    _close(got, ref_moe.fused_moe(hidden, gate_up, down, weights, ids), 1e-4)
