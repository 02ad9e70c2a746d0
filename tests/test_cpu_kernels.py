"""The C decode-attention kernel for the CPU (llm_kernels.cpu) against the torch reference, and its build.

Same inputs as the Triton kernels' tests: caches NaN everywhere but the written slots, block tables with
out-of-range garbage past each sequence's last block, outputs NaN beforehand to catch unwritten elements.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from paged_batches import make_batch

import llm_kernels
from engine import LLM, SamplingParams
from llm_kernels import backend
from llm_kernels.cpu import attention as cpu_attention
from llm_kernels.cpu import linear as cpu_linear
from llm_kernels.cpu import native
from llm_kernels.reference import attention as ref

# Without a compiler the kernel cannot exist; with one, a failed build is a failure here, not a skip.
pytestmark = pytest.mark.skipif(not native.compiler(), reason="no C compiler to build the CPU kernel")


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
    ([1, 50, 23, 9, 64], [1, 1, 23, 4, 1]),    # mixed: decodes and short chunks in C, a long chunk in the reference
    ([40, 7, 100, 16, 33], [5, 7, 3, 16, 1]),  # short chunks only (speculative verification): all in C
    ([45, 70, 2, 33], [45, 19, 2, 33]),        # prefills and extends only
    ([300, 1, 17], [1, 1, 1]),                 # decodes only
])
def test_paged_attention_matches_the_reference(seq_lens, q_lens):
    expected, args = expected_and_inputs(seq_lens, q_lens, 8, 2, 64, 16, seed=len(seq_lens))
    torch.testing.assert_close(cpu_attention.paged_attention(*args), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("window", [1, 6, 40])
def test_short_chunks_in_a_sliding_window(window, monkeypatch):
    """Each row of a chunk has its own window (its last `window` positions), computed by the C kernel."""
    seq_lens, q_lens = [40, 7, 100, 16], [5, 7, 3, 16]
    q, k, v, tables, lens, cu = make_batch(seq_lens, q_lens, 4, 2, 64, 16, torch.float32, seed=window)
    expected = ref.paged_attention(q, k, v, tables, lens, cu, 16, 0.125, window)
    calls = []
    rows = cpu_attention.attend_rows
    monkeypatch.setattr(cpu_attention, "attend_rows", lambda *a, **kw: calls.append(len(a[0])) or rows(*a, **kw))
    out = cpu_attention.paged_attention(q, k, v, tables, lens, cu, 16, 0.125, window)
    assert calls == [sum(q_lens)]
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("seq_lens", [[300], list(range(1, 200, 7))])
def test_threads_do_not_change_the_result(seq_lens):
    """One sequence is split over its KV heads when there are more threads than sequences; the numbers are the
    same bit for bit."""
    expected, (q, k, v, tables, lens, _, _, scale) = expected_and_inputs(
        seq_lens, [1] * len(seq_lens), 8, 4, 64, 16, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_attention.decode(q, k, v, tables, lens, scale)
        torch.set_num_threads(2)
        two = cpu_attention.decode(q, k, v, tables, lens, scale)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    torch.testing.assert_close(two, expected, rtol=2e-5, atol=2e-5)


def test_strided_q_and_int64_tables():
    """The engine's q is a view into the fused projection; tables may come as int64 or as a column slice."""
    expected, (q, k, v, tables, lens, _, _, scale) = expected_and_inputs([5, 40, 17], [1, 1, 1], 4, 2, 64, 16)
    wide = torch.full((3, 7, 64), float("nan"))
    wide[:, 1:5] = q
    wide_tables = torch.full((3, tables.shape[1] + 2), -1, dtype=torch.int64)
    wide_tables[:, 2:] = tables
    out = cpu_attention.decode(wide[:, 1:5], k, v, wide_tables[:, 2:], lens.long(), scale)
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)


def test_a_sequence_without_new_tokens():
    """q length 0 for one sequence, 1 for the others (max_seqlen_q 1): the rows still pair with their sequences."""
    expected, args = expected_and_inputs([9, 30, 12], [1, 0, 1], 4, 2, 64, 16, seed=4)
    torch.testing.assert_close(cpu_attention.paged_attention(*args), expected, rtol=2e-5, atol=2e-5)


def test_inputs_that_do_not_fit_are_rejected():
    _, (q, k, v, tables, lens, _, _, scale) = expected_and_inputs([5, 20], [1, 1], 4, 2, 64, 16)
    with pytest.raises(ValueError, match="shapes do not fit"):
        cpu_attention.decode(q[:, :, :32], k, v, tables, lens, scale)          # head sizes differ
    with pytest.raises(ValueError, match="shapes do not fit"):
        cpu_attention.decode(q[:, :1], k, v, tables, lens, scale)              # fewer query than KV heads
    bad = tables.clone()
    bad[1, 0] = k.shape[0]                                                     # a block past the cache
    with pytest.raises(IndexError):
        cpu_attention.decode(q, k, v, bad, lens, scale)
    with pytest.raises(IndexError):
        cpu_attention.decode(q, k, v, tables, lens + 1000, scale)              # longer than the table


@pytest.mark.parametrize("backend_name", ["cpu", "torch"])
def test_strided_caches_are_written_and_read_in_place(backend_name):
    """Caches that are strided views, the halves of one [blocks, 2, block_size, heads, dim] tensor: the CPU
    backends write and read them where they are, as the Triton kernels do (the C kernel leaves them to the
    reference)."""
    expected, (q, k, v, tables, lens, cu, max_q, scale) = expected_and_inputs([1, 50, 23, 9, 64], [1, 1, 23, 4, 1],
                                                                              8, 2, 64, 16, seed=3)
    written = (~k[:, :, 0, 0].isnan()).flatten().nonzero().squeeze(1)
    slots = torch.cat([written, torch.tensor([-1])])                    # a skipped slot too
    keys, values = k.view(-1, 2, 64)[slots], v.view(-1, 2, 64)[slots]
    kv = torch.full((k.shape[0], 2, *k.shape[1:]), float("nan"))
    llm_kernels.use(backend_name)
    try:
        llm_kernels.store_kv(keys, values, kv[:, 0], kv[:, 1], slots)
        torch.testing.assert_close(kv[:, 0], k, equal_nan=True, rtol=0, atol=0)
        torch.testing.assert_close(kv[:, 1], v, equal_nan=True, rtol=0, atol=0)
        out = llm_kernels.paged_attention(q, kv[:, 0], kv[:, 1], tables, lens, cu, max_q, scale)
        decodes = llm_kernels.paged_attention(q[:2], kv[:, 0], kv[:, 1], tables[:2], lens[:2], cu[:3], 1, scale)
    finally:
        llm_kernels.use("auto")
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(decodes, expected[:2], rtol=2e-5, atol=2e-5)


def test_other_dtypes_run_the_reference():
    q, k, v, tables, lens, cu = make_batch([20, 5], [1, 1], 4, 2, 64, 16, torch.bfloat16, seed=5)
    assert not cpu_attention.supported(q, k, v)
    out = cpu_attention.paged_attention(q, k, v, tables, lens, cu, 1, 0.125)
    assert torch.equal(out, ref.paged_attention(q, k, v, tables, lens, cu, 1, 0.125))


def test_backend_choice():
    assert backend.resolve(torch.device("cpu")) == "cpu"               # auto: C on the CPU
    llm_kernels.use("cpu")
    try:
        with pytest.raises(RuntimeError, match="'cpu' was requested for a cuda tensor"):
            backend.resolve(torch.device("cuda"))
    finally:
        llm_kernels.use("auto")


def test_environment_variables_and_their_old_names(monkeypatch, tmp_path):
    monkeypatch.setattr(backend, "_forced", None)                # no use(...) call: the environment decides
    monkeypatch.setenv("LLM_KERNELS_BACKEND", "torch")
    monkeypatch.setenv("LLM_KERNELS_CACHE_DIR", str(tmp_path))
    assert backend.resolve(torch.device("cpu")) == "torch"
    assert native.cache_dir() == tmp_path
    monkeypatch.delenv("LLM_KERNELS_BACKEND")
    monkeypatch.delenv("LLM_KERNELS_CACHE_DIR")
    monkeypatch.setenv("KERNELS_BACKEND", "torch")            # the package's name before it was llm_kernels
    monkeypatch.setenv("KERNELS_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="KERNELS_BACKEND is set, but the variable is now called LLM_KERNELS_BACKEND"):
        backend.resolve(torch.device("cpu"))
    with pytest.raises(ValueError, match="now called LLM_KERNELS_CACHE_DIR"):
        native.cache_dir()


def test_build_into_a_fresh_cache_and_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_KERNELS_CACHE_DIR", str(tmp_path))
    native.load.cache_clear()
    try:
        with ThreadPoolExecutor(4) as pool:                                 # concurrent first builds
            libraries = list(pool.map(lambda _: native._build(native.HERE / "paged_attention.c",
                                                              native.compiler()), range(4)))
        assert len(set(libraries)) == 1
        assert sorted(p.suffix for p in tmp_path.iterdir()) == [".lock", ".so"]    # no partial file left
        assert native.load("paged_attention") is not None
        native.load.cache_clear()
        monkeypatch.setenv("CC", "no-such-compiler")
        with pytest.warns(UserWarning, match="no C compiler"):
            assert native.load("paged_attention") is None
    finally:
        native.load.cache_clear()


def test_engine_greedy_tokens_match_the_torch_backend(checkpoint_factory, monkeypatch):
    """Chunked prompts (a 5-token step budget) so steps mix prefill chunks and decodes, then prefix-cache hits."""
    llm = LLM(checkpoint_factory("llama"), block_size=16, max_num_batched_tokens=5, max_model_len=64)
    prompts = ["The quick brown fox", "def add(a, b):\n    return", "x", "import os\nimport sys\n"]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    def run(name: str) -> list[list[int]]:
        llm_kernels.use(name)
        try:
            return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        finally:
            llm_kernels.use("auto")

    expected = run("torch")
    calls = []
    decode = cpu_attention.decode
    monkeypatch.setattr(cpu_attention, "decode", lambda *a, **kw: calls.append(len(a[0])) or decode(*a, **kw))
    assert run("cpu") == expected
    assert calls                                                       # the C kernel really ran
    assert run("cpu") == expected


@pytest.mark.parametrize(("rows", "k", "n"), [(1, 64, 96), (7, 256, 768), (300, 512, 64)])
def test_packed_linear_matches_f_linear(rows, k, n):
    torch.manual_seed(rows)
    weight, bias = torch.randn(n, k), torch.randn(n)
    packed = cpu_linear.pack(weight)
    assert packed is not None                               # a float32 CPU weight: oneDNN takes it here
    wide = torch.randn(rows, 2 * k)
    x = wide[:, k:]                                         # a strided view, as the engine's slices are
    torch.testing.assert_close(cpu_linear.linear(x, packed), F.linear(x, weight), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cpu_linear.linear(x, packed, bias), F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    assert cpu_linear.pack(weight.to(torch.bfloat16)) is None      # other dtypes keep F.linear


def test_engine_packs_its_linear_layers_and_keeps_tied_embeddings(checkpoint_factory):
    """With the CPU kernels every linear layer and the LM head run through oneDNN; a tied head's weight stays, as
    the embedding's. Tokens as with the torch backend (the unpacked reference)."""
    from engine.models.linear import ParallelLMHead

    prompts, params = ["The quick brown fox", "def add(a, b):"], SamplingParams(temperature=0, max_tokens=12,
                                                                                 ignore_eos=True)
    for tie in (False, True):
        path = checkpoint_factory("qwen3", tie=tie)
        packed = LLM(path, kernels="cpu", max_model_len=64)
        model = packed.engine.runner.model
        layers = [m for m in model.modules() if hasattr(m, "packed")]
        assert layers and all(m.packed is not None for m in layers)
        head = next(m for m in layers if isinstance(m, ParallelLMHead))
        assert (head.weight is not None) == tie and model.model.embed_tokens.weight is not None
        assert all(m.weight is None for m in layers if not isinstance(m, ParallelLMHead))
        reference = LLM(path, kernels="torch", max_model_len=64)
        assert not any(m.packed is not None for m in reference.engine.runner.model.modules() if hasattr(m, "packed"))
        assert ([o.outputs[0].token_ids for o in packed.generate(prompts, params)]
                == [o.outputs[0].token_ids for o in reference.generate(prompts, params)])
