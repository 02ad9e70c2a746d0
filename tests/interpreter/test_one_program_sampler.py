"""The one-program-per-row sampler (benchmarks/one_program_sampler.py, a comparison for the split sampler) against
the exact definitions in `llm_kernels.reference.sampling` and the oracle of tests/sampling_oracle.py.

- Filters: the threshold the kernel used must keep exactly the tokens the reference's `filter_probs` keeps
  (through the candidate buffer and through the direct search of the logits), ties included.
- Draws: chi-square against the exact filtered distribution, greedy = argmax, reproducible by
  (seed, position) whatever the batch.
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import chi_square, params, random_rows, seeded_rows
from sampling_oracle import kept_set_problems

from benchmarks.one_program_sampler import sample, sample_with_thresholds
from llm_kernels.reference import sampling as ref

# The one-program sampler's variants: default, partial sums per lane, a search that compacts its buffer, both.
VARIANTS = {"default": {}, "lane_sums": {"lane_sums": True}, "compact": {"compact": True},
            "lane_sums+compact": {"lane_sums": True, "compact": True}}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tied", [False, True])
def test_filters_keep_exactly_the_reference_tokens(tied, variant):
    batch, vocab = 24, 600
    logits, temperature, top_k, top_p, min_p = random_rows(batch, vocab, seed=7 + tied, tied=tied)
    seeds, positions = torch.full((batch,), 5, dtype=torch.int64), torch.arange(batch, dtype=torch.int64)
    args = (logits, temperature, top_k, top_p, min_p, seeds, positions)
    drawn, thresholds, counts = sample_with_thresholds(*args, **VARIANTS[variant])
    assert kept_set_problems(logits, temperature, top_k, top_p, min_p, thresholds, counts) == []
    # Without room for the candidates, every filtered row searches the logits: same thresholds, same draws.
    drawn_direct, thresholds_direct, counts_direct = sample_with_thresholds(*args, max_candidates=2,
                                                                            **VARIANTS[variant])
    assert torch.equal(thresholds_direct, thresholds)
    assert torch.equal(counts_direct, counts)
    assert torch.equal(drawn_direct, drawn)
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    assert bool((probs.gather(1, drawn[:, None]).squeeze(1) >= thresholds * (1 - 2e-6)).all())


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
    drawn = sample(logits, *params(draws, temperature, top_k, top_p, min_p, seed=2**40 + 17))
    probs = torch.softmax(row / temperature, dim=-1)
    filtered = ref.filter_probs(probs, torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))[0]
    assert bool((filtered[drawn] > 0).all()), "a filtered-out token was drawn"
    assert chi_square(drawn, filtered / filtered.sum()) > 1e-3


@pytest.mark.parametrize("temperature", [0.0, 1e-40])           # 1e-40: logits / T overflows; greedy below 1e-5
@pytest.mark.parametrize("lane_sums", [False, True])
def test_greedy_is_the_first_argmax(lane_sums, temperature):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(5, 700, generator=g)
    logits[1, [10, 650]] = 9.0                                  # a tie across tiles: the first index wins
    logits[2, [300, 301]] = 9.0
    logits[3, :] = 1.0                                          # all equal
    logits[4, [3, 259]] = 9.0                                   # a tie in one lane (tiles of 256), adjacent tiles
    args = params(5, temperature=temperature, top_k=3, top_p=0.5)
    drawn, _, counts = sample_with_thresholds(logits, *args, lane_sums=lane_sums)
    assert counts.tolist() == [1] * 5
    assert torch.equal(drawn, logits.argmax(dim=-1))
    assert torch.equal(ref.sample(logits, *args), drawn)
    assert drawn[1] == 10 and drawn[2] == 300 and drawn[3] == 0 and drawn[4] == 3


def test_draws_depend_only_on_seed_and_position():
    args = seeded_rows(300)
    logits = args[0]
    together = sample(*args)
    assert torch.equal(sample(*args), together)
    alone = torch.cat([sample(*(a[i:i + 1] for a in args)) for i in range(6)])
    assert torch.equal(alone, together)
    flipped = sample(*(a.flip(0) for a in args))
    assert torch.equal(flipped.flip(0), together)
    # A different position (or seed) gives a fresh draw: over many positions the draws are not all equal.
    many = sample(logits[:1].repeat(40, 1), *params(40, 1.0, seed=3))
    assert many.unique().numel() > 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_filters_on_rows_spanning_many_nats(variant):
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
    _, thresholds, counts = sample_with_thresholds(*args, **VARIANTS[variant])
    assert kept_set_problems(logits, temperature, top_k, top_p, min_p, thresholds, counts) == []


def test_strided_parameter_vectors():
    """Per-row parameters given as columns of one tensor (strided views, as the engine builds them)."""
    logits, temperature, top_k, top_p, min_p = random_rows(5, 200, seed=8, tied=False)
    floats = torch.stack([temperature, top_p, min_p], dim=1)
    ints = torch.stack([torch.arange(5) * 7 + 1, torch.arange(5) + 100], dim=1)
    strided = (logits, floats[:, 0], top_k, floats[:, 1], floats[:, 2], ints[:, 0], ints[:, 1])
    assert not floats[:, 0].is_contiguous()
    dense = tuple(t.contiguous() for t in strided)
    drawn, thresholds, counts = sample_with_thresholds(*strided)
    expected_drawn, expected_thresholds, expected_counts = sample_with_thresholds(*dense)
    assert torch.equal(drawn, expected_drawn)
    assert torch.equal(thresholds, expected_thresholds)
    assert torch.equal(counts, expected_counts)
    assert kept_set_problems(*dense[:5], thresholds, counts) == []


def test_lane_sums_draw_the_same_tokens():
    """Both accumulation orders keep the same tokens on these rows and so draw the same ones."""
    logits, temperature, top_k, top_p, min_p = random_rows(16, 900, seed=31, tied=False)
    args = (logits, temperature, top_k, top_p, min_p, torch.arange(16), torch.arange(16))
    drawn, thresholds, counts = sample_with_thresholds(*args)
    lane_drawn, lane_thresholds, lane_counts = sample_with_thresholds(*args, lane_sums=True)
    assert torch.equal(lane_counts, counts) and torch.equal(lane_drawn, drawn)
    torch.testing.assert_close(lane_thresholds, thresholds, rtol=1e-6, atol=0)
