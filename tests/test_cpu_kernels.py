"""The C decode-attention kernel for the CPU (kernels.cpu) against the torch reference, and its build.

Same inputs as the Triton kernels' tests: caches NaN everywhere but the written slots, block tables with
out-of-range garbage past each sequence's last block, outputs NaN beforehand to catch unwritten elements.
"""

from __future__ import annotations

import pytest
import torch
from paged_batches import make_batch

import kernels
from engine import LLM, SamplingParams
from kernels import backend
from kernels.cpu import attention as cpu_attention
from kernels.cpu import native
from kernels.reference import attention as ref

pytestmark = pytest.mark.skipif(cpu_attention._decode_fn() is None, reason="no C compiler to build the CPU kernel")


def expected_and_inputs(seq_lens, q_lens, num_heads, num_kv_heads, head_dim, block_size, seed=0):
    q, k, v, tables, lens, cu = make_batch(seq_lens, q_lens, num_heads, num_kv_heads, head_dim, block_size,
                                           torch.float32, seed)
    scale = head_dim ** -0.5
    expected = ref.paged_attention(q, k, v, tables, lens, cu, max(q_lens), scale)
    assert not expected.isnan().any()
    return expected, (q, k, v, tables, lens, cu, max(q_lens), scale)


@pytest.mark.parametrize(("group", "head_dim", "block_size"), [
    (1, 64, 16), (2, 80, 32), (4, 96, 16), (8, 128, 64), (2, 256, 128), (4, 48, 16),   # 48: the generic loop
])
def test_decode_matches_the_reference(group, head_dim, block_size):
    """GQA 1 to 8, the issue's head sizes and one more, lengths 1, on and off the block size."""
    seq_lens = [1, 37, block_size, 130, 2 * block_size + 1]
    expected, (q, k, v, tables, lens, _, _, scale) = expected_and_inputs(
        seq_lens, [1] * len(seq_lens), 2 * group, 2, head_dim, block_size, seed=group)
    out = torch.full_like(q, float("nan"))
    cpu_attention.decode(q, k, v, tables, lens, scale, out=out)
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(("seq_lens", "q_lens"), [
    ([1, 50, 23, 9, 64], [1, 1, 23, 4, 1]),    # mixed: decodes in C, prefill chunks through the reference
    ([45, 70, 2, 33], [45, 19, 2, 33]),        # prefills and extends only
    ([300, 1, 17], [1, 1, 1]),                 # decodes only
])
def test_paged_attention_matches_the_reference(seq_lens, q_lens):
    expected, args = expected_and_inputs(seq_lens, q_lens, 8, 2, 64, 16, seed=len(seq_lens))
    torch.testing.assert_close(cpu_attention.paged_attention(*args), expected, rtol=2e-5, atol=2e-5)


def test_two_threads_give_the_same_result():
    expected, (q, k, v, tables, lens, _, _, scale) = expected_and_inputs(
        list(range(1, 200, 7)), [1] * 29, 4, 4, 64, 16, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = cpu_attention.decode(q, k, v, tables, lens, scale)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)


def test_other_dtypes_run_the_reference():
    q, k, v, tables, lens, cu = make_batch([20, 5], [1, 1], 4, 2, 64, 16, torch.bfloat16, seed=5)
    assert not cpu_attention.supported(q, k, v)
    out = cpu_attention.paged_attention(q, k, v, tables, lens, cu, 1, 0.125)
    assert torch.equal(out, ref.paged_attention(q, k, v, tables, lens, cu, 1, 0.125))


def test_backend_choice():
    assert backend.resolve(torch.device("cpu")) == "cpu"               # auto: C on the CPU
    kernels.use("cpu")
    try:
        with pytest.raises(RuntimeError, match="'cpu' was requested for a cuda tensor"):
            backend.resolve(torch.device("cuda"))
    finally:
        kernels.use("auto")


def test_build_into_a_fresh_cache_and_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELS_CACHE_DIR", str(tmp_path))
    native.load.cache_clear()
    try:
        assert native.load("decode_attention") is not None
        assert [p.suffix for p in tmp_path.iterdir()] == [".so"]        # built there, no partial file left
        native.load.cache_clear()
        monkeypatch.setenv("CC", "no-such-compiler")
        with pytest.warns(UserWarning, match="no C compiler"):
            assert native.load("decode_attention") is None
    finally:
        native.load.cache_clear()


def test_engine_greedy_tokens_match_the_torch_backend(checkpoint_factory, monkeypatch):
    """Chunked prompts (a 5-token step budget) so steps mix prefill chunks and decodes, then prefix-cache hits."""
    llm = LLM(checkpoint_factory("llama"), block_size=16, max_num_batched_tokens=5, max_model_len=64)
    prompts = ["The quick brown fox", "def add(a, b):\n    return", "x", "import os\nimport sys\n"]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    def run(name: str) -> list[list[int]]:
        kernels.use(name)
        try:
            return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        finally:
            kernels.use("auto")

    expected = run("torch")
    calls = []
    decode = cpu_attention.decode
    monkeypatch.setattr(cpu_attention, "decode", lambda *a, **kw: calls.append(len(a[0])) or decode(*a, **kw))
    assert run("cpu") == expected
    assert calls                                                       # the C kernel really ran
    assert run("cpu") == expected
