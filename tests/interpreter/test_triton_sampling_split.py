"""The split sampler (several programs per row, what `llm_kernels.sample` runs on Triton) against the exact
definitions in `llm_kernels.reference.sampling` and the oracle of tests/sampling_oracle.py, and against the
one-program-per-row sampler of benchmarks/: same kept sets, so the same Gumbel-max draws.

Rows are cut into spans of a few tiles here (tiles of 128 tokens in the interpreter), so ties, the greedy
argmax, the gathered band and the best draw all cross span boundaries.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
import triton
from kernel_checks import PHILOX_KAT, chi_square, params, philox_probe, random_rows, seeded_rows
from sampling_oracle import kept_set_problems

import llm_kernels
from benchmarks import one_program_sampler
from llm_kernels.reference import sampling as ref
from llm_kernels.triton_ops import sampling_split


def same_draws_where_same_kept_sets(args, splits: int) -> None:
    """Where both samplers keep as many tokens (kept sets are upper sets of the same probabilities, so the same
    set), the draws are equal; the counts may differ only by float summation order at a top-p cut."""
    drawn, thresholds, counts = sampling_split.sample_with_thresholds(*args, splits=splits)
    assert kept_set_problems(*args[:5], thresholds, counts) == []
    single_drawn, _, single_counts = one_program_sampler.sample_with_thresholds(*args)
    same = counts == single_counts
    assert int(same.sum()) >= 0.9 * len(counts)
    assert torch.equal(drawn[same], single_drawn[same])


@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("tied", [False, True])
def test_filters_keep_exactly_the_reference_tokens(tied, splits):
    batch, vocab = 24, 600
    logits, temperature, top_k, top_p, min_p = random_rows(batch, vocab, seed=7 + tied, tied=tied)
    same_draws_where_same_kept_sets((logits, temperature, top_k, top_p, min_p, torch.full((batch,), 5),
                                     torch.arange(batch)), splits)


def test_top_p_alone_on_wide_rows():
    """Top-p without top-k: the band between two cut-offs is gathered and the mass above it carried; cuts from
    shallow to deeper than the deepest cut-off (16 nats), with and without min-p."""
    vocab = 2000
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(8, vocab, generator=g) * 2.5
    logits[6] = torch.linspace(-150.0, 0.0, vocab)                  # the cut far below the deepest cut-off
    logits[7, :5] = 12.0                                            # ties at the top, a flat tail below
    temperature = torch.tensor([0.8, 0.8, 0.8, 1.0, 2.0, 0.8, 1.0, 1.0])
    top_p = torch.tensor([0.95, 0.5, 0.99, 0.9999, 0.9, 0.95, 0.9999, 0.999])
    min_p = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0])
    args = (logits, temperature, torch.zeros(8, dtype=torch.int32), top_p, min_p, torch.zeros(8, dtype=torch.int64),
            torch.arange(8))
    same_draws_where_same_kept_sets(args, splits=5)


@pytest.mark.parametrize("temperature", [0.0, 1e-40])           # 1e-40: logits / T overflows; greedy below 1e-5
def test_greedy_is_the_first_argmax_across_spans(temperature):
    logits = torch.randn(4, 700, generator=torch.Generator().manual_seed(11))
    logits[1, [10, 650]] = 9.0                                      # a tie across spans: the first index wins
    logits[2, :] = 1.0                                              # all equal
    logits[3, [300, 301]] = 9.0
    args = params(4, temperature=temperature, top_k=3, top_p=0.5)
    drawn, _, counts = sampling_split.sample_with_thresholds(logits, *args, splits=3)
    assert counts.tolist() == [1] * 4
    assert torch.equal(drawn, logits.argmax(dim=-1))
    assert drawn[1] == 10 and drawn[2] == 0 and drawn[3] == 300


def test_draws_depend_only_on_seed_and_position():
    args = seeded_rows(500)
    together = sampling_split.sample_with_thresholds(*args, splits=3)[0]
    for splits in (1, 4):
        assert torch.equal(sampling_split.sample_with_thresholds(*args, splits=splits)[0], together)
    alone = torch.cat([sampling_split.sample_with_thresholds(*(a[i:i + 1] for a in args), splits=3)[0]
                       for i in range(6)])
    assert torch.equal(alone, together)


def test_draws_follow_the_filtered_distribution():
    """Top-p alone (the band path), min-p on: chi-square against the exact filtered distribution."""
    draws, vocab = 200, 40
    row = torch.randn(1, vocab, generator=torch.Generator().manual_seed(3)) * 1.5
    row[0, [4, 29]] = float("-inf")
    drawn = sampling_split.sample(row.repeat(draws, 1), *params(draws, 1.0, 0, 0.8, 0.02, seed=2**40 + 17))
    filtered = ref.filter_probs(torch.softmax(row, dim=-1), torch.tensor([0]), torch.tensor([0.8]),
                                torch.tensor([0.02]))[0]
    assert bool((filtered[drawn] > 0).all()), "a filtered-out token was drawn"
    assert chi_square(drawn, filtered / filtered.sum()) > 1e-3


def test_api_dispatches_to_the_split_sampler(monkeypatch):
    """`llm_kernels.sample` under the Triton backend runs the split sampler (the H100 sweep's choice), whose draws
    are the one-program sampler's."""
    from llm_kernels import triton_ops

    assert triton_ops.sample is sampling_split.sample
    logits, temperature, top_k, top_p, min_p = random_rows(4, 100, seed=5, tied=False)
    args = (logits, temperature, top_k, top_p, min_p, torch.arange(4), torch.arange(4))
    calls = []
    monkeypatch.setattr(triton_ops, "sample", lambda *a: calls.append(1) or sampling_split.sample(*a))
    llm_kernels.use("triton")
    assert torch.equal(llm_kernels.sample(*args), one_program_sampler.sample(*args))
    assert calls == [1]


def test_the_kernel_package_holds_one_sampler_and_no_test_oracle():
    """Production samples only with the split sampler: the one-program comparison lives in benchmarks/, the test
    oracle in tests/sampling_oracle.py, and the package's reference keeps only what the CPU path runs."""
    from llm_kernels import triton_ops

    samplers = [module.name for module in pkgutil.iter_modules(triton_ops.__path__)
                if hasattr(importlib.import_module(f"llm_kernels.triton_ops.{module.name}"), "sample")]
    assert samplers == ["sampling_split"]
    assert not hasattr(ref, "kept_set_problems")


def test_philox_known_answers():
    """Our Philox4x32-10 against the Random123 known-answer vectors (counter, key -> output)."""
    probe = triton.jit(philox_probe)                           # defined now, while the interpreter is on
    words = torch.tensor([w for w, _ in PHILOX_KAT] + [[0] * 6], dtype=torch.int64).to(torch.uint32)
    out = torch.zeros(4, 4, dtype=torch.uint32)
    probe[(1,)](words, out)
    for row, (_, expected) in enumerate(PHILOX_KAT):
        assert out[row].to(torch.int64).tolist() == expected


def test_no_token_outside_the_distribution_wins_by_infinite_noise():
    """Seed 0 at position 1229 gives token 662 a Philox word whose top 24 bits are all ones: mapped to (0, 1) with
    24 bits it was 1.0 in float32, its Gumbel noise +inf, and that token (p ~ 6e-19) was drawn. Found by an
    outside audit with a numpy Philox; the neighbouring positions show the draw is otherwise the likely token."""
    logits = torch.zeros(3, 4096)
    logits[:, 7], logits[:, 662] = 12.0, -30.0
    drawn = sampling_split.sample(logits, torch.ones(3), torch.zeros(3, dtype=torch.int32), torch.ones(3),
                                  torch.zeros(3), torch.zeros(3, dtype=torch.int64), torch.tensor([1228, 1229, 1230]))
    assert drawn.tolist() == [7, 7, 7]


def test_tied_logits_far_above_zero_are_drawn_evenly():
    """Logits / T near 5e7 (temperature 1e-5): float32 steps there are 4, so noise added to them (not to their
    difference from the row's max) rounded tied tokens' scores to ties, won by the first (at 5e6, 57% of 3000
    draws went to the first)."""
    n = 300
    logits = torch.tensor([[500.0, 500.0, 400.0, 300.0]]).repeat(n, 1)
    drawn = sampling_split.sample(logits, torch.full((n,), 1e-5), torch.zeros(n, dtype=torch.int32), torch.ones(n),
                                  torch.zeros(n), torch.full((n,), 12345, dtype=torch.int64),
                                  torch.arange(n, dtype=torch.int64))
    first = int((drawn == 0).sum())
    assert int((drawn <= 1).sum()) == n
    assert abs(first - n / 2) < 3.5 * (n / 4) ** 0.5        # within 3.5 standard deviations of even
