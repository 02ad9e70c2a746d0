"""The engine on the Triton backend (in the interpreter, fused layer ops included) produces the torch backend's
greedy tokens."""

from __future__ import annotations

import pytest

import llm_kernels
from engine import LLM, SamplingParams
from llm_kernels import triton_ops

KERNELS = ("store_kv", "paged_attention", "sample", "rms_norm", "silu_and_mul", "rotary")
PROMPTS = ["The quick brown fox", "def add(a, b):\n    return", "x", "import os\nimport sys\nprint('hello')\n"]


@pytest.fixture(scope="module")
def llm(checkpoint_factory) -> LLM:
    # Block size 16 and a 5-token step budget: prompts are chunked, so steps mix prefill chunks and decodes.
    return LLM(checkpoint_factory("llama"), block_size=16, max_num_batched_tokens=5, max_model_len=64)


def run(llm: LLM, backend: str, params: SamplingParams) -> list[list[int]]:
    llm_kernels.use(backend)
    try:
        return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    finally:
        llm_kernels.use("auto")


def test_greedy_tokens_match_the_torch_backend(llm, monkeypatch):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = run(llm, "torch", params)
    calls = []
    for name in KERNELS:
        kernel = getattr(triton_ops, name)
        monkeypatch.setattr(triton_ops, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    assert run(llm, "triton", params) == expected
    assert set(calls) == set(KERNELS)                                   # the Triton kernels really ran
    # Again, now with the prompts' blocks in the prefix cache: extends over cached prefixes.
    assert run(llm, "triton", params) == expected
    blocks = llm.engine.blocks
    assert blocks.num_free_blocks == blocks.num_blocks


def test_penalised_greedy_and_seeded_sampling(llm):
    penalised = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, repetition_penalty=1.5,
                               frequency_penalty=0.5, presence_penalty=0.3)
    assert run(llm, "triton", penalised) == run(llm, "torch", penalised)
    seeded = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_tokens=6, ignore_eos=True, seed=11)
    first = run(llm, "triton", seeded)
    assert run(llm, "triton", seeded) == first
    assert all(len(tokens) == 6 for tokens in first)


def test_qwen3_greedy_tokens_match_the_torch_backend(checkpoint_factory):
    """Qwen3's per-head q/k RMSNorm goes through the Triton rms_norm too (flattened to rows)."""
    llm = LLM(checkpoint_factory("qwen3"), block_size=16, max_model_len=64)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    assert run(llm, "triton", params) == run(llm, "torch", params)
