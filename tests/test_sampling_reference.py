"""The torch sampler and penalties against independent definitions: exact distributions and naive loops."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from llm_kernels.reference.sampling import apply_penalties, filter_probs, first_argmax, invert_cdf, sample, uniform_from

VOCAB = 40
DRAWS = 20000


def exact_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """The target distribution, computed from the written definitions one token at a time."""
    z = logits / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.ones_like(p, dtype=bool)
    if min_p > 0:
        keep &= p >= min_p * p.max()
    q = np.where(keep, p, 0.0)
    if top_k > 0:
        kth = np.sort(q)[::-1][top_k - 1]
        keep &= q >= kth
    q = np.where(keep, p, 0.0)
    if top_p < 1:
        total = q.sum()
        for i in range(len(q)):
            if keep[i] and q[q > q[i]].sum() >= top_p * total:
                keep[i] = False
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def draw(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float,
         n: int = DRAWS) -> np.ndarray:
    rows = logits.expand(n, -1)
    tokens = sample(rows, torch.full((n,), temperature), torch.full((n,), top_k, dtype=torch.int32),
                    torch.full((n,), top_p), torch.full((n,), min_p), torch.arange(n), torch.full((n,), 7))
    return np.bincount(tokens.numpy(), minlength=logits.shape[-1])


@pytest.mark.parametrize("temperature, top_k, top_p, min_p", [
    (1.0, 0, 1.0, 0.0),
    (0.5, 0, 1.0, 0.0),
    (1.5, 5, 1.0, 0.0),
    (1.0, 0, 0.7, 0.0),
    (1.0, 0, 1.0, 0.2),
    (0.8, 12, 0.9, 0.05),
])
def test_draws_follow_the_exact_distribution(temperature, top_k, top_p, min_p):
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(3)) * 2
    expected = exact_distribution(logits.double().numpy(), temperature, top_k, top_p, min_p)
    counts = draw(logits, temperature, top_k, top_p, min_p)
    assert counts[expected == 0].sum() == 0, "a filtered-out token was drawn"
    support = expected > 0
    result = scipy.stats.chisquare(counts[support], expected[support] * DRAWS)
    assert result.pvalue > 1e-3, (result, counts, expected * DRAWS)


def test_ties_at_the_top_k_boundary_are_kept():
    logits = torch.tensor([3.0, 1.0, 1.0, 1.0, -2.0])
    counts = draw(logits, 1.0, 2, 1.0, 0.0, n=4000)
    assert counts[4] == 0 and (counts[1:4] > 0).all()


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([5.0, 0.0, 0.0])
    counts = draw(logits, 1.0, 0, 0.01, 0.0, n=500)
    assert counts[0] == 500


def test_greedy_is_argmax_and_ignores_filters():
    logits = torch.randn(16, VOCAB)
    tokens = sample(logits, torch.zeros(16), torch.full((16,), 3, dtype=torch.int32), torch.full((16,), 0.5),
                    torch.full((16,), 0.1), torch.arange(16), torch.zeros(16, dtype=torch.int64))
    assert torch.equal(tokens, logits.argmax(-1))


def test_draws_over_many_blocks_follow_the_exact_distribution():
    """A vocabulary of several blocks of 64 (and a part block), top-k leaving whole blocks without mass: the
    two-level inversion of the cumulative distribution draws each token at its rate."""
    logits = torch.randn(300, generator=torch.Generator().manual_seed(5)) * 3
    expected = exact_distribution(logits.double().numpy(), 1.0, 40, 1.0, 0.0)
    counts = draw(logits, 1.0, 40, 1.0, 0.0)
    assert counts[expected == 0].sum() == 0, "a filtered-out token was drawn"
    support = expected > 0
    assert scipy.stats.chisquare(counts[support], expected[support] * DRAWS).pvalue > 1e-3


def test_first_argmax_is_torchs_argmax():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 700, generator=g)                      # 700: ten blocks of 64 and part of one
    x[1, [10, 650]] = 9.0                                     # a tie across blocks: the first wins
    x[2, [300, 301]] = 9.0                                    # a tie inside a block
    x[3] = 1.0                                                # all equal
    x[4] = float("-inf")
    x[5, 699] = float("inf")                                  # in the part block
    x[6, [5, 64]] = float("inf")
    x[7, 63], x[7, 64] = 8.0, 8.0                             # either side of a block boundary
    x[8, 699] = 50.0
    assert torch.equal(first_argmax(x), x.argmax(dim=-1))
    x[0, 3] = float("nan")                                    # argmax ranks NaN first; so must this
    assert torch.equal(first_argmax(x), x.argmax(dim=-1))


def test_invert_cdf_draws_a_token_with_mass_where_the_exact_cdf_crosses_the_target():
    """Against a float64 prefix sum over the whole row: the drawn token has mass, and the exact cumulative mass
    crosses the target at it (to float32 rounding); targets at the very bottom and top included."""
    g = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(64, 1000, generator=g) * 3, dim=-1)
    probs[::2, 128:640] = 0.0                                 # whole blocks without mass, and parts of blocks
    probs[1::4] = probs[1::4].masked_fill(probs[1::4] < 1e-3, 0.0)
    probs[1, 900:] = 0.0                                      # the top target's row ends in blocks without mass
    uniforms = torch.rand(64, generator=g, dtype=torch.float64)
    uniforms[:3] = torch.tensor([0.0, 1.0 - 2.0 ** -53, 0.5])
    drawn = invert_cdf(probs, uniforms)
    exact = probs.double().cumsum(dim=-1)
    rows = torch.arange(64)
    target = uniforms * exact[:, -1]
    below = torch.where(drawn > 0, exact[rows, (drawn - 1).clamp(min=0)], 0.0)
    slack = 1e-6 * exact[:, -1]
    assert bool((probs[rows, drawn] > 0).all())
    assert bool((below <= target + slack).all()) and bool((exact[rows, drawn] >= target - slack).all())
    assert drawn[1] == 999 - int((probs[1] > 0).flip(0).int().argmax())      # the top: the last token with mass


def sorted_top_p(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-p as written: sort each whole row, and keep the tokens whose likelier tokens' mass is below top_p of
    the row's mass (ties with the least likely kept token kept)."""
    ordered = probs.sort(dim=-1, descending=True).values
    above = ordered.cumsum(dim=-1) - ordered
    limit = torch.where(top_p < 1, top_p * probs.sum(dim=-1), float("inf"))[:, None]
    last = ((above < limit).sum(dim=-1, keepdim=True) - 1).clamp(min=0)
    return probs.masked_fill(probs < ordered.gather(1, last), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_p_keeps_what_sorting_whole_rows_keeps(dtype):
    """Rows that the 16 or the 256 likeliest tokens decide, and flat ones that need the whole row; ties at the
    cut; top-p 1 beside them."""
    g = torch.Generator().manual_seed(8)
    scales = torch.tensor([12.0, 6.0, 3.0, 1.0, 0.2, 0.0]).repeat(8)[:, None]
    probs = torch.softmax(torch.randn(48, 1000, generator=g) * scales, dim=-1).to(dtype)
    probs[5, :10] = probs[5, 0]                               # a tie group at the top
    top_p = torch.rand(48, generator=g, dtype=dtype) * 0.98
    top_p[::7] = 1.0
    kept = filter_probs(probs, torch.zeros(48, dtype=torch.int32), top_p, torch.zeros(48, dtype=dtype)) > 0
    expected = sorted_top_p(probs, top_p) > 0
    assert torch.equal(kept, expected)
    assert int(kept.sum(dim=-1).max()) > 16 and int(kept.sum(dim=-1)[top_p < 1].min()) < 16


def test_draws_depend_only_on_seed_and_position():
    logits = torch.randn(8, VOCAB)
    params = (torch.ones(8), torch.zeros(8, dtype=torch.int32), torch.ones(8), torch.zeros(8))
    seeds, positions = torch.arange(8) * 1000, torch.arange(8) + 5
    full = sample(logits, *params, seeds, positions)
    # The same rows alone, or in another order inside another batch, draw the same tokens.
    for i in range(8):
        alone = sample(logits[i:i + 1], *(p[i:i + 1] for p in params), seeds[i:i + 1], positions[i:i + 1])
        assert alone.item() == full[i].item()
    order = torch.randperm(8)
    shuffled = sample(logits[order], *(p[order] for p in params), seeds[order], positions[order])
    assert torch.equal(shuffled, full[order])
    # Another position or another seed is another draw (with this many rows, some must differ).
    assert not torch.equal(sample(logits, *params, seeds, positions + 1), full)


def naive_penalties(logits, prompt, output, presence, frequency, repetition):
    out = logits.clone()
    for b in range(logits.shape[0]):
        for token in range(logits.shape[1]):
            count = output[b].count(token)
            if token in prompt[b] or count:
                value = out[b, token]
                out[b, token] = value / repetition[b] if value > 0 else value * repetition[b]
            out[b, token] -= frequency[b] * count + presence[b] * (count > 0)
    return out


def test_penalties_match_the_definition():
    torch.manual_seed(0)
    logits = torch.randn(3, 12)
    prompt = [[1, 2, 2], [], [11]]
    output = [[2, 3, 3, 3], [0, 5], []]
    presence, frequency, repetition = [0.5, -1.0, 2.0], [0.3, 1.5, -0.5], [1.3, 0.7, 1.0]

    def padded(rows):
        width = max(1, max(map(len, rows)))
        return torch.tensor([r + [-1] * (width - len(r)) for r in rows])

    expected = naive_penalties(logits, prompt, output, presence, frequency, repetition)
    got = apply_penalties(logits.clone(), padded(prompt), padded(output), torch.tensor(presence),
                          torch.tensor(frequency), torch.tensor(repetition))
    torch.testing.assert_close(got, expected)


def python_splitmix64(x: int) -> int:
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_uniforms_are_splitmix64_of_seed_and_position():
    seeds = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 123456789])
    positions = torch.tensor([0, 5, 7, 1, 2**40, 3])
    got = uniform_from(seeds, positions).tolist()
    mask = (1 << 64) - 1
    for s, p, u in zip(seeds.tolist(), positions.tolist(), got):
        expected = (python_splitmix64(python_splitmix64(s & mask) ^ (p & mask)) >> 11) * 2.0 ** -53
        assert u == expected
    many = uniform_from(torch.arange(50000) % 7, torch.arange(50000) // 7).numpy()
    assert scipy.stats.kstest(many, "uniform").pvalue > 1e-3


def test_the_kernel_api_rejects_parameters_of_the_wrong_shape():
    """A parameter shorter than the batch would be read past its end by the Triton kernels: a ValueError."""
    import llm_kernels

    logits = torch.randn(4, VOCAB)
    good = [torch.ones(4), torch.zeros(4, dtype=torch.int32), torch.ones(4), torch.zeros(4),
            torch.zeros(4, dtype=torch.int64), torch.arange(4)]
    assert llm_kernels.sample(logits, *good).shape == (4,)
    for i, bad in enumerate([torch.ones(1), torch.ones(()), torch.ones(4, 1)]):
        params = list(good)
        params[i] = bad
        with pytest.raises(ValueError, match=r"sample: logits must be \[B, V\] and each parameter \[B\]"):
            llm_kernels.sample(logits, *params)
    with pytest.raises(ValueError, match="sample: logits must be"):
        llm_kernels.sample(logits[0], *(t[:1] for t in good))
