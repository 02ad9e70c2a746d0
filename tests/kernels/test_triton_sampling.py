"""The Triton sampler against the exact definitions in `kernels.reference.sampling`.

- Filters: the threshold the kernel used must keep exactly the tokens the reference's `filter_probs` keeps
  (through the candidate buffer and through the direct search of the logits), ties included.
- Draws: chi-square against the exact filtered distribution, greedy = argmax, reproducible by
  (seed, position) whatever the batch.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from scipy import stats

import kernels
from kernels.reference import sampling as ref
from kernels.triton_ops.sampling import philox4x32, sample, sample_with_thresholds


def _params(batch: int, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234, positions=None):
    full = lambda value, dtype: value if isinstance(value, torch.Tensor) else torch.full((batch,), value, dtype=dtype)
    return (full(temperature, torch.float32), full(top_k, torch.int32), full(top_p, torch.float32),
            full(min_p, torch.float32), full(seed, torch.int64),
            torch.arange(batch, dtype=torch.int64) if positions is None else positions)


def _random_rows(batch: int, vocab: int, seed: int, tied: bool):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(batch, 1, generator=g) * 3 + 0.5
    logits = torch.randn(batch, vocab, generator=g) * scale
    if tied:
        logits = (logits * 2).round() / 2                      # many exact ties, also at the filter boundaries
    pick = lambda options: torch.tensor(options)[torch.randint(len(options), (batch,), generator=g)]
    temperature = pick([0.5, 1.0, 1.7])
    top_k = pick([0, 1, 3, 40, vocab - 1, vocab + 5]).int()
    top_p = pick([1.0, 0.3, 0.9, 0.995])
    min_p = pick([0.0, 0.0, 0.02, 0.3])
    return logits, temperature, top_k, top_p, min_p


def _assert_keeps_reference_set(logits, temperature, top_k, top_p, min_p, thresholds):
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    expected = ref.filter_probs(probs, top_k, top_p, min_p) > 0
    # The kernel's probabilities may differ from torch's in the last bit: compare a hair below the threshold.
    kept = (probs >= thresholds[:, None] * (1 - 2e-6)) & (probs > 0)
    for row in range(logits.shape[0]):
        assert torch.equal(kept[row], expected[row]), (
            f"row {row}: T={temperature[row]:.2f} k={int(top_k[row])} p={top_p[row]:.3f} min_p={min_p[row]:.2f} "
            f"kept {int(kept[row].sum())}, reference {int(expected[row].sum())}")


@pytest.mark.parametrize("tied", [False, True])
def test_filters_keep_exactly_the_reference_tokens(tied):
    batch, vocab = 24, 600
    logits, temperature, top_k, top_p, min_p = _random_rows(batch, vocab, seed=7 + tied, tied=tied)
    seeds, positions = torch.full((batch,), 5, dtype=torch.int64), torch.arange(batch, dtype=torch.int64)
    args = (logits, temperature, top_k, top_p, min_p, seeds, positions)
    drawn, thresholds = sample_with_thresholds(*args)
    _assert_keeps_reference_set(logits, temperature, top_k, top_p, min_p, thresholds)
    # Without room for the candidates, every filtered row searches the logits: same thresholds, same draws.
    drawn_direct, thresholds_direct = sample_with_thresholds(*args, max_candidates=2)
    assert torch.equal(thresholds_direct, thresholds)
    assert torch.equal(drawn_direct, drawn)
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    assert bool((probs.gather(1, drawn[:, None]).squeeze(1) >= thresholds * (1 - 2e-6)).all())


def _chi_square(drawn: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """p-value of the draws against the distribution; cells with small expectations are pooled."""
    counts = torch.bincount(drawn, minlength=expected_probs.numel()).double()
    expected = expected_probs.double() * drawn.numel()
    order = expected.argsort(descending=True).tolist()
    observed_cells, expected_cells, pool_obs, pool_exp = [], [], 0.0, 0.0
    for token in order:
        if expected[token] == 0:
            continue
        if expected[token] >= 5:
            observed_cells.append(float(counts[token]))
            expected_cells.append(float(expected[token]))
        else:
            pool_obs, pool_exp = pool_obs + float(counts[token]), pool_exp + float(expected[token])
    if pool_exp > 0:
        observed_cells.append(pool_obs)
        expected_cells.append(pool_exp)
    if len(observed_cells) < 2:
        return 1.0
    total = sum(expected_cells)                                 # renormalise away float rounding for scipy
    expected_cells = [e * drawn.numel() / total for e in expected_cells]
    return float(stats.chisquare(observed_cells, expected_cells).pvalue)


@pytest.mark.parametrize(("temperature", "top_k", "top_p", "min_p"), [
    (0.5, 0, 1.0, 0.0),
    (1.0, 6, 1.0, 0.0),
    (1.0, 0, 0.7, 0.0),
    (1.0, 0, 1.0, 0.15),
    (2.0, 10, 0.85, 0.03),
])
def test_draws_follow_the_filtered_distribution(temperature, top_k, top_p, min_p):
    draws, vocab = 200, 30
    row = torch.randn(1, vocab, generator=torch.Generator().manual_seed(3)) * 1.5
    row[0, [4, 9]] = float("-inf")                              # masked tokens (e.g. a grammar): never drawn
    logits = row.repeat(draws, 1)
    drawn = sample(logits, *_params(draws, temperature, top_k, top_p, min_p, seed=2**40 + 17))
    probs = torch.softmax(row / temperature, dim=-1)
    filtered = ref.filter_probs(probs, torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))[0]
    assert bool((filtered[drawn] > 0).all()), "a filtered-out token was drawn"
    assert _chi_square(drawn, filtered / filtered.sum()) > 1e-3


def test_greedy_is_the_first_argmax():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(5, 700, generator=g)
    logits[1, [10, 650]] = 9.0                                  # a tie across tiles: the first index wins
    logits[2, [300, 301]] = 9.0
    logits[3, :] = 1.0                                          # all equal
    drawn = sample(logits, *_params(5, temperature=0.0, top_k=3, top_p=0.5))
    assert torch.equal(drawn, logits.argmax(dim=-1))
    assert drawn[1] == 10 and drawn[2] == 300 and drawn[3] == 0


def test_draws_depend_only_on_seed_and_position():
    logits, temperature, top_k, top_p, min_p = _random_rows(6, 300, seed=21, tied=False)
    temperature[2] = 0.0
    seeds = torch.tensor([1, 2, 2, 3, 2**62 + 5, 7], dtype=torch.int64)
    positions = torch.tensor([0, 5, 5, 1000, 3, 2**33 + 1], dtype=torch.int64)
    args = (logits, temperature, top_k, top_p, min_p, seeds, positions)
    together = sample(*args)
    assert torch.equal(sample(*args), together)
    alone = torch.cat([sample(*(a[i:i + 1] for a in args)) for i in range(6)])
    assert torch.equal(alone, together)
    flipped = sample(*(a.flip(0) for a in args))
    assert torch.equal(flipped.flip(0), together)
    # A different position (or seed) gives a fresh draw: over many positions the draws are not all equal.
    many = sample(logits[:1].repeat(40, 1), *_params(40, 1.0, seed=3))
    assert many.unique().numel() > 1


def test_api_dispatches_to_the_triton_sampler():
    logits, temperature, top_k, top_p, min_p = _random_rows(4, 100, seed=5, tied=False)
    args = (logits, temperature, top_k, top_p, min_p, torch.arange(4), torch.arange(4))
    kernels.use("triton")
    assert torch.equal(kernels.sample(*args), sample(*args))


def test_filters_on_rows_spanning_many_nats():
    """Rows whose candidates reach past the deepest cut-off, so the search runs over every min-p survivor."""
    vocab = 500
    row = torch.linspace(-150.0, 0.0, vocab)
    row[100:110] = -60.0                                         # a tie deep in the tail
    logits = row.repeat(6, 1)
    temperature = torch.tensor([1.0, 1.0, 1.0, 0.7, 1.0, 2.0])
    top_k = torch.tensor([vocab - 1, 450, 0, 395, 0, 400], dtype=torch.int32)
    top_p = torch.tensor([1.0, 0.99999, 0.9999, 1.0, 1.0, 0.95])
    min_p = torch.tensor([0.0, 0.0, 0.0, 1e-30, 1e-20, 0.0])
    args = (logits, temperature, top_k, top_p, min_p, torch.zeros(6, dtype=torch.int64), torch.arange(6))
    _, thresholds = sample_with_thresholds(*args)
    _assert_keeps_reference_set(logits, temperature, top_k, top_p, min_p, thresholds)


def test_strided_parameter_vectors():
    """Per-row parameters given as columns of one tensor (strided views, as the engine builds them)."""
    logits, temperature, top_k, top_p, min_p = _random_rows(5, 200, seed=8, tied=False)
    floats = torch.stack([temperature, top_p, min_p], dim=1)
    ints = torch.stack([torch.arange(5) * 7 + 1, torch.arange(5) + 100], dim=1)
    strided = (logits, floats[:, 0], top_k, floats[:, 1], floats[:, 2], ints[:, 0], ints[:, 1])
    assert not floats[:, 0].is_contiguous()
    dense = tuple(t.contiguous() for t in strided)
    drawn, thresholds = sample_with_thresholds(*strided)
    expected_drawn, expected_thresholds = sample_with_thresholds(*dense)
    assert torch.equal(drawn, expected_drawn)
    assert torch.equal(thresholds, expected_thresholds)
    _assert_keeps_reference_set(*dense[:5], thresholds)


def _philox_probe(words_ptr, out_ptr):
    """Four Philox4x32-10 evaluations, one per lane: words [4, 6] (c0 c1 c2 c3 k0 k1) -> out [4, 4]."""
    lanes = tl.arange(0, 4)
    r0, r1, r2, r3 = philox4x32(tl.load(words_ptr + lanes * 6), tl.load(words_ptr + lanes * 6 + 1),
                                tl.load(words_ptr + lanes * 6 + 2), tl.load(words_ptr + lanes * 6 + 3),
                                tl.load(words_ptr + lanes * 6 + 4), tl.load(words_ptr + lanes * 6 + 5), 10)
    tl.store(out_ptr + lanes * 4, r0)
    tl.store(out_ptr + lanes * 4 + 1, r1)
    tl.store(out_ptr + lanes * 4 + 2, r2)
    tl.store(out_ptr + lanes * 4 + 3, r3)


def test_philox_known_answers():
    """Our Philox4x32-10 against the Random123 known-answer vectors (counter, key -> output)."""
    probe = triton.jit(_philox_probe)                           # defined now, while the interpreter is on
    vectors = [  # c0 c1 c2 c3 k0 k1 -> four words (Random123 kat_vectors, philox4x32 with 10 rounds)
        ([0, 0, 0, 0, 0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 6, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0],
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    words = torch.tensor([w for w, _ in vectors] + [[0] * 6], dtype=torch.int64).to(torch.uint32)
    out = torch.zeros(4, 4, dtype=torch.uint32)
    probe[(1,)](words, out)
    for row, (_, expected) in enumerate(vectors):
        assert out[row].to(torch.int64).tolist() == expected
