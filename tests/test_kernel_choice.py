"""An engine chooses its kernels once, when it is built (`llm_kernels.select`), and keeps them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import llm_kernels
from engine import LLM, SamplingParams
from llm_kernels import backend
from llm_kernels.reference import attention as ref_attention

PROMPTS = [[1, 2, 3, 4, 5], [9, 8, 7]]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def _tokens(llm: LLM) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]


def test_an_engine_never_resolves_the_backend_in_a_step(llama_path, monkeypatch):
    """Built with the torch kernels, the engine asks nothing of the backend module afterwards: a later
    `llm_kernels.use(...)` (or any lookup) cannot change, or cost, its steps."""
    llm = LLM(llama_path, device="cpu", kernels="torch", kv_cache_blocks=64)
    assert (llm.engine.runner.kernels.backend, llm.engine.runner.kernels.layer_ops) == ("torch", "torch")
    expected = _tokens(llm)

    def refuse(*args, **kwargs):
        raise AssertionError("the backend was resolved during a step")

    for name in ("resolve", "resolve_layer_ops", "configured"):
        monkeypatch.setattr(backend, name, refuse)
    llm_kernels.use("triton")             # would need TRITON_INTERPRET=1 on this CPU, were it read
    try:
        assert _tokens(llm) == expected
    finally:
        llm_kernels.use("auto")


def test_a_swapped_kernel_runs_in_every_step(llama_path):
    """A KernelSet with one kernel replaced is what the engine calls, and gives the same tokens."""
    base = llm_kernels.select("cpu", "torch")
    calls = []

    def counted(*args):
        calls.append(args[0].shape[0])
        return ref_attention.paged_attention(*args)

    mine = dataclasses.replace(base, paged_attention=counted)
    expected = _tokens(LLM(llama_path, device="cpu", kernels=base, kv_cache_blocks=64))
    llm = LLM(llama_path, device="cpu", kernels=mine, kv_cache_blocks=64)
    assert llm.engine.runner.kernels is mine
    assert _tokens(llm) == expected
    layers = llm.engine.model_config.num_layers
    assert len(calls) % layers == 0 and len(calls) // layers >= GREEDY.max_tokens   # prefill + 5 decodes, per layer


def test_select_names_the_backends():
    cpu = torch.device("cpu")
    assert llm_kernels.select(cpu).backend == "cpu"                   # auto on the CPU: the C kernels
    assert llm_kernels.select(cpu, "torch").paged_attention is ref_attention.paged_attention
    with pytest.raises(ValueError, match="unknown kernels backend 'gpu'"):
        llm_kernels.select(cpu, "gpu")


def test_a_backend_that_cannot_run_is_refused_before_the_weights_load(llama_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs TRITON_INTERPRET=1"):
        LLM(llama_path, device="cpu", kernels="triton")
    with pytest.raises(ValueError, match="kernels must be one of auto, triton, cpu, torch"):
        LLM(llama_path, device="cpu", kernels="fast")
    cuda_set = dataclasses.replace(llm_kernels.select("cuda"), paged_attention=ref_attention.paged_attention)
    with pytest.raises(ValueError, match="needs TRITON_INTERPRET=1"):       # a set for another device: refused too
        LLM(llama_path, device="cpu", kernels=cuda_set)
