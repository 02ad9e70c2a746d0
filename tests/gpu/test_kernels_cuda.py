"""The Triton kernels compiled for a GPU against the torch references, at sizes the interpreter cannot reach:
long contexts (many decode splits), batches of hundreds, every supported head size, block sizes up to 128,
bf16 on real tensor cores, full vocabularies. References run on the CPU in float32 (float64 for sampling)."""

from __future__ import annotations

import functools
import os

import pytest
import torch

# Importing Triton here, before tests/interpreter imports it under the interpreter, would break those tests
# (Triton decides at its own import whether its jit'd helpers are interpreted): skip first.
if not (torch.cuda.is_available() or os.environ.get("GPU_TESTS_DRY_RUN") == "1"):
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import triton  # noqa: E402
from kernel_checks import PHILOX_KAT, chi_square, params, philox_probe, random_rows  # noqa: E402
from paged_batches import make_batch  # noqa: E402
from sampling_oracle import kept_set_problems  # noqa: E402

from benchmarks import one_program_sampler  # noqa: E402
from benchmarks.one_program_sampler import sample_with_thresholds  # noqa: E402
from llm_kernels.reference import attention as ref  # noqa: E402
from llm_kernels.reference import layer_ops as ref_layer_ops  # noqa: E402
from llm_kernels.reference import sampling as ref_sampling  # noqa: E402
from llm_kernels.triton_ops import apply_penalties, layer_ops, sampling_split, store_kv  # noqa: E402
from llm_kernels.triton_ops.attention import paged_attention_into  # noqa: E402

# The samplers under test: one program per row (benchmarks/one_program_sampler.py, a comparison: plain, with lane
# sums, with a compacting search), and several programs per row ("split", what llm_kernels.sample runs).
SAMPLERS = {"one_program": sample_with_thresholds,
            "lane_sums": functools.partial(sample_with_thresholds, lane_sums=True),
            "compact": functools.partial(sample_with_thresholds, compact=True),
            "lane_sums+compact": functools.partial(sample_with_thresholds, lane_sums=True, compact=True),
            "split": sampling_split.sample_with_thresholds}

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
# Inputs are exact in every dtype; the kernels round P (and bf16/fp16 products) once: a few units of the
# dtype's last place on outputs of size ~1.
TOLERANCE = {F32: 1e-4, F16: 4e-3, BF16: 3e-2}


def check_attention(device, seq_lens, q_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, seed=0,
                    window=0):
    q, k, v, tables, lens, cu = make_batch(seq_lens, q_lens, num_heads, num_kv_heads, head_dim, block_size,
                                           dtype, seed)
    scale = head_dim ** -0.5
    expected = ref.paged_attention(q.float(), k.float(), v.float(), tables, lens, cu, max(q_lens), scale, window)
    on = lambda t: t.to(device)
    out = torch.full(q.shape, float("nan"), dtype=dtype, device=device)
    paged_attention_into(out, on(q), on(k), on(v), on(tables), on(lens), on(cu), max(q_lens), scale, window)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.cpu().float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize(("group", "head_dim", "block_size", "dtype"), [
    (1, 64, 16, F16), (2, 80, 32, BF16), (4, 96, 16, F16), (8, 128, 16, BF16), (8, 128, 16, F16),
    (4, 128, 128, BF16), (2, 256, 16, F16), (8, 64, 64, F32),
])
def test_decode(device, group, head_dim, block_size, dtype):
    lens = [1, 37, 16, 130, 4097, 1000, 2500]
    check_attention(device, lens, [1] * len(lens), 2 * group, 2, head_dim, block_size, dtype, seed=group)


def test_decode_one_long_sequence(device):
    """One sequence of 32k tokens: the split count must spread it over the GPU and merge exactly."""
    check_attention(device, [32768], [1], 16, 2, 128, 16, BF16, seed=1)


def test_decode_batch_of_256(device):
    lens = torch.randint(1, 700, (256,), generator=torch.Generator().manual_seed(2)).tolist()
    check_attention(device, lens, [1] * 256, 16, 2, 128, 16, BF16, seed=2)


@pytest.mark.parametrize(("group", "head_dim", "block_size", "dtype"), [
    (1, 64, 16, F16), (2, 80, 32, BF16), (4, 96, 16, F16), (8, 128, 16, BF16), (4, 128, 64, F16),
    (2, 256, 16, BF16), (4, 64, 128, F32),
])
def test_prefill_extend_and_decode_mixed(device, group, head_dim, block_size, dtype):
    """Whole prompts, chunks over cached prefixes and decodes in one call, lengths off every tile size."""
    check_attention(device, [700, 1500, 3, 260, 129, 1], [700, 300, 3, 1, 64, 1], 2 * group, 2, head_dim,
                    block_size, dtype, seed=10 + group)


@pytest.mark.parametrize(("window", "dtype"), [(64, BF16), (4096, F16), (100, F32)])
def test_sliding_window(device, window, dtype):
    """Windows narrower than a tile, than the sequences, and than none: prompts, chunks and decodes together."""
    check_attention(device, [700, 1500, 3, 260, 129, 1, 5000], [700, 300, 3, 1, 64, 1, 1], 8, 2, 128, 16, dtype,
                    seed=window, window=window)


def test_prefill_long_prompt(device):
    check_attention(device, [4096], [4096], 8, 2, 128, 16, BF16, seed=3)


@pytest.mark.parametrize(("src_dtype", "cache_dtype", "block_size", "head_dim"), [
    (F32, F32, 16, 64), (F32, F16, 32, 80), (F16, F16, 16, 128), (BF16, BF16, 128, 256), (BF16, BF16, 16, 96),
])
def test_store_kv(device, src_dtype, cache_dtype, block_size, head_dim):
    g = torch.Generator().manual_seed(block_size + head_dim)
    num_blocks, num_tokens, kv_heads = 400, 3000, 8
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[::7] = -1                                                    # padding: skipped
    key = torch.randn(num_tokens, kv_heads, head_dim, generator=g).to(src_dtype)
    value = torch.randn(num_tokens, kv_heads, head_dim, generator=g).to(src_dtype)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    expected = [torch.full(shape, float("nan"), dtype=cache_dtype) for _ in range(2)]
    ref.store_kv(key, value, *expected, slots)
    caches = [torch.full(shape, float("nan"), dtype=cache_dtype, device=device) for _ in range(2)]
    store_kv(key.to(device), value.to(device), *caches, slots.to(device))
    for got, want in zip(caches, expected):
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("vocab", "tied"), [(32000, False), (32000, True), (128256, False), (151936, False)])
def test_filters_keep_the_reference_tokens_on_full_vocabularies(device, vocab, tied, sampler):
    """The kernel keeps the reference's tokens up to float rounding (the rule of tests/sampling_oracle.py), and
    draws one of the tokens it keeps."""
    batch = 32
    logits, temperature, top_k, top_p, min_p = random_rows(batch, vocab, seed=vocab % 97 + tied, tied=tied)
    args = [logits, temperature, top_k, top_p, min_p, torch.full((batch,), 5), torch.arange(batch)]
    drawn, thresholds, counts = (t.cpu() for t in SAMPLERS[sampler](*(a.to(device) for a in args)))
    assert kept_set_problems(logits, temperature, top_k, top_p, min_p, thresholds, counts) == []
    probs = torch.softmax(logits.double() / temperature[:, None].double(), dim=-1)
    kept = (probs >= thresholds.double()[:, None] * (1 - 1e-5)) & (probs > 0)
    assert bool(kept.gather(1, drawn[:, None]).all()), "a token below the cut was drawn"


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize(("temperature", "top_k", "top_p", "min_p"), [
    (0.5, 0, 1.0, 0.0), (1.0, 6, 1.0, 0.0), (1.0, 0, 0.7, 0.0), (1.0, 0, 1.0, 0.15), (2.0, 10, 0.85, 0.03),
])
def test_draws_follow_the_filtered_distribution(device, temperature, top_k, top_p, min_p, split):
    draws, vocab = 20000, 30
    row = torch.randn(1, vocab, generator=torch.Generator().manual_seed(3)) * 1.5
    row[0, [4, 9]] = float("-inf")
    args = params(draws, temperature, top_k, top_p, min_p, seed=2**40 + 17)
    sample = (sampling_split if split else one_program_sampler).sample
    drawn = sample(row.repeat(draws, 1).to(device), *(a.to(device) for a in args)).cpu()
    probs = torch.softmax(row / temperature, dim=-1)
    filtered = ref_sampling.filter_probs(probs, torch.tensor([top_k]), torch.tensor([top_p]),
                                         torch.tensor([min_p]))[0]
    assert bool((filtered[drawn] > 0).all()), "a filtered-out token was drawn"
    assert chi_square(drawn, filtered / filtered.sum()) > 1e-3


@pytest.mark.parametrize("split", [False, True])
def test_greedy_is_the_first_argmax_on_a_full_vocabulary(device, split):
    logits = torch.randn(64, 151936, generator=torch.Generator().manual_seed(11))
    logits[1, [10, 150000]] = 9.0
    logits[3, :] = 1.0
    drawn = (sampling_split if split else one_program_sampler).sample(
        logits.to(device), *(a.to(device) for a in params(64, temperature=0.0, top_k=3))).cpu()
    assert torch.equal(drawn, logits.argmax(dim=-1))
    assert drawn[1] == 10 and drawn[3] == 0


@pytest.mark.parametrize("split", [False, True])
def test_draws_depend_only_on_seed_and_position(device, split):
    logits, temperature, top_k, top_p, min_p = random_rows(16, 128256, seed=21, tied=False)
    seeds = torch.randint(0, 2**62, (16,), generator=torch.Generator().manual_seed(4))
    args = [a.to(device) for a in (logits, temperature, top_k, top_p, min_p, seeds, torch.arange(16) * 1000)]
    draw = (sampling_split if split else one_program_sampler).sample
    together = draw(*args)
    assert torch.equal(draw(*args), together)
    alone = torch.cat([draw(*(a[i:i + 1] for a in args)) for i in range(16)])    # 1 row: many spans per row
    assert torch.equal(alone, together)
    assert torch.equal(draw(*(a.flip(0) for a in args)).flip(0), together)


def test_split_sampler_draws_what_the_one_program_sampler_draws(device):
    """Where both samplers keep as many tokens (then the same set: both keep upper sets of the probabilities),
    they draw the same token; the counts may differ only where float summation order moves a top-p cut."""
    logits, temperature, top_k, top_p, min_p = random_rows(64, 128256, seed=22, tied=False)
    args = [a.to(device) for a in (logits, temperature, top_k, top_p, min_p, torch.arange(64), torch.arange(64))]
    drawn, _, counts = sample_with_thresholds(*args)
    split_drawn, _, split_counts = sampling_split.sample_with_thresholds(*args)
    same = (counts == split_counts).cpu()
    assert int(same.sum()) >= 0.9 * len(same)
    assert torch.equal(split_drawn.cpu()[same], drawn.cpu()[same])


def test_philox_known_answers(device):
    probe = triton.jit(philox_probe)
    words = torch.tensor([w for w, _ in PHILOX_KAT] + [[0] * 6], dtype=torch.int64).to(torch.uint32)
    out = torch.zeros(4, 4, dtype=torch.uint32, device=device)
    probe[(1,)](words.to(device), out)
    for row, (_, expected) in enumerate(PHILOX_KAT):
        assert out[row].cpu().to(torch.int64).tolist() == expected


@pytest.mark.parametrize("dtype", [F32, F16])
def test_penalties(device, dtype):
    g = torch.Generator().manual_seed(2)
    batch, vocab = 64, 32000
    logits = (torch.randn(batch, vocab, generator=g) * 3).to(dtype)
    prompt = torch.randint(0, vocab, (batch, 500), generator=g)
    output = torch.randint(0, 300, (batch, 1000), generator=g)
    prompt[0, 10:], output[1, 5:], output[2, :] = -1, -1, -1
    rand = lambda lo, hi: torch.rand(batch, generator=g) * (hi - lo) + lo
    presence, frequency, repetition = rand(-0.5, 1.5), rand(-0.5, 1.0), rand(0.8, 2.0)
    expected = ref_sampling.apply_penalties(logits.clone(), prompt, output, presence, frequency, repetition)
    got = apply_penalties(*(t.to(device) for t in (logits, prompt, output, presence, frequency, repetition)))
    tol = 1e-5 if dtype == F32 else 1e-2
    torch.testing.assert_close(got.cpu(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [BF16, F16, F32])
def test_layer_ops_at_llama_8b_sizes(device, dtype):
    """RMSNorm + residual, SiLU-and-mul and rotary on 300 tokens of Llama-3-8B's sizes (hidden 4096,
    intermediate 14336, 32 + 8 heads of 128), against the references on the CPU."""
    g = torch.Generator().manual_seed(3)
    tokens, hidden, intermediate = 300, 4096, 14336
    x, residual = (torch.randn(tokens, hidden, generator=g).to(dtype) for _ in range(2))
    weight = torch.randn(hidden, generator=g).to(dtype)
    on = lambda t: t.to(device)
    out, total = layer_ops.rms_norm(on(x), on(weight), 1e-5, on(residual))
    want, want_total = ref_layer_ops.rms_norm(x.float(), weight.float(), 1e-5, residual.float())
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(total.cpu().float(), want_total, rtol=tol, atol=tol)
    torch.testing.assert_close(out.cpu().float(), want, rtol=tol, atol=tol)
    gate_up = torch.randn(tokens, 2 * intermediate, generator=g).to(dtype)
    torch.testing.assert_close(layer_ops.silu_and_mul(on(gate_up)).cpu().float(),
                               ref_layer_ops.silu_and_mul(gate_up.float()), rtol=tol, atol=tol)
    qkv = torch.randn(tokens, 48, 128, generator=g).to(dtype)
    qk = qkv[:, :40]                                            # q and k heads of the fused projection
    angles = torch.rand(tokens, 64, generator=g) * 8192
    cos, sin = torch.cat([angles.cos(), angles.sin()], dim=-1).chunk(2, dim=-1)    # strided rows, as the model's
    got = layer_ops.rotary(on(qkv)[:, :40], on(cos), on(sin))
    torch.testing.assert_close(got.cpu().float(), ref_layer_ops.rotary(qk.float(), cos, sin), rtol=tol, atol=tol)


@pytest.mark.parametrize("vocab", [32000, 151936])
def test_token_bitmask_on_full_vocabularies(device, vocab):
    """Our mask kernel against the torch reference and xgrammar's own kernel, on a GPU's vocabulary sizes."""
    import xgrammar

    from llm_kernels.reference.token_bitmask import apply_token_bitmask as reference
    from llm_kernels.triton_ops import apply_token_bitmask

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(8, vocab, generator=g)
    bitmask = torch.randint(-(2 ** 31), 2 ** 31 - 1, (8, (vocab + 31) // 32), generator=g,
                            dtype=torch.int64).to(torch.int32)
    rows = torch.arange(8)
    expected = reference(logits.clone(), bitmask, rows)
    got = apply_token_bitmask(logits.to(device), bitmask.to(device), rows.to(device)).cpu()
    assert torch.equal(got, expected)
    theirs = logits.clone().to(device)
    xgrammar.apply_token_bitmask_inplace(theirs, bitmask.to(device))
    assert torch.equal(theirs.cpu(), expected)
