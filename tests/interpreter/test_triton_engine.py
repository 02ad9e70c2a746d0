"""The engine on the Triton backend (in the interpreter, fused layer ops included) produces the torch backend's
greedy tokens."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from llm_kernels import triton_ops

KERNELS = ("store_kv", "paged_attention", "sample", "rms_norm", "silu_and_mul", "rotary")
PROMPTS = ["The quick brown fox", "def add(a, b):\n    return", "x", "import os\nimport sys\nprint('hello')\n"]


def engine(path: str, backend: str) -> LLM:
    """An engine on `backend`'s kernels (chosen once, when it is built). Block size 16 and a 5-token step budget:
    prompts are chunked, so steps mix prefill chunks and decodes."""
    return LLM(path, block_size=16, max_num_batched_tokens=5, max_model_len=64, kernels=backend)


@pytest.fixture(scope="module")
def torch_llm(checkpoint_factory) -> LLM:
    return engine(checkpoint_factory("llama"), "torch")


@pytest.fixture
def triton_llm(checkpoint_factory) -> LLM:
    """Function-scoped: the check that Triton can run here needs this directory's TRITON_INTERPRET=1."""
    return engine(checkpoint_factory("llama"), "triton")


def run(llm: LLM, params: SamplingParams) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]


def test_greedy_tokens_match_the_torch_backend(checkpoint_factory, torch_llm, monkeypatch):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = run(torch_llm, params)
    calls = []
    for name in KERNELS:
        kernel = getattr(triton_ops, name)
        monkeypatch.setattr(triton_ops, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    llm = engine(checkpoint_factory("llama"), "triton")                 # selects the counting kernels
    assert run(llm, params) == expected
    assert set(calls) == set(KERNELS)                                   # the Triton kernels really ran
    # Again, now with the prompts' blocks in the prefix cache: extends over cached prefixes.
    assert run(llm, params) == expected
    blocks = llm.engine.blocks
    assert blocks.num_free_blocks == blocks.num_blocks


def test_penalised_greedy_and_seeded_sampling(torch_llm, triton_llm):
    penalised = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, repetition_penalty=1.5,
                               frequency_penalty=0.5, presence_penalty=0.3)
    assert run(triton_llm, penalised) == run(torch_llm, penalised)
    seeded = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_tokens=6, ignore_eos=True, seed=11)
    first = run(triton_llm, seeded)
    assert run(triton_llm, seeded) == first
    assert all(len(tokens) == 6 for tokens in first)


def test_qwen3_greedy_tokens_match_the_torch_backend(checkpoint_factory):
    """Qwen3's per-head q/k RMSNorm goes through the Triton rms_norm too (flattened to rows)."""
    path = checkpoint_factory("qwen3")
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    assert run(engine(path, "triton"), params) == run(engine(path, "torch"), params)
