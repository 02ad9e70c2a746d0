"""Inputs and checks shared by the kernel tests in the interpreter (tests/interpreter) and on a GPU (tests/gpu).

Everything is built on the CPU from seeded generators; GPU tests move it to the device. `llm_kernels.triton_ops` is
imported here as the importing test directory left it: interpreted under tests/interpreter, compiled under tests/gpu
(each directory runs in a pytest process of its own on a GPU machine).
"""

from __future__ import annotations

import torch
import triton.language as tl
from scipy import stats

from llm_kernels.triton_ops.sampling_passes import philox4x32


def params(batch: int, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234, positions=None):
    full = lambda value, dtype: value if isinstance(value, torch.Tensor) else torch.full((batch,), value, dtype=dtype)
    return (full(temperature, torch.float32), full(top_k, torch.int32), full(top_p, torch.float32),
            full(min_p, torch.float32), full(seed, torch.int64),
            torch.arange(batch, dtype=torch.int64) if positions is None else positions)


def random_rows(batch: int, vocab: int, seed: int, tied: bool):
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


def seeded_rows(vocab: int) -> tuple[torch.Tensor, ...]:
    """`sample`'s arguments for six rows with repeated and extreme seeds and positions (row 2 greedy): for the
    tests that a draw depends only on its row, seed and position."""
    logits, temperature, top_k, top_p, min_p = random_rows(6, vocab, seed=21, tied=False)
    temperature[2] = 0.0
    seeds = torch.tensor([1, 2, 2, 3, 2**62 + 5, 7], dtype=torch.int64)
    positions = torch.tensor([0, 5, 5, 1000, 3, 2**33 + 1], dtype=torch.int64)
    return logits, temperature, top_k, top_p, min_p, seeds, positions


def chi_square(drawn: torch.Tensor, expected_probs: torch.Tensor) -> float:
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


def philox_probe(words_ptr, out_ptr):
    """Four Philox4x32-10 evaluations, one per lane: words [4, 6] (c0 c1 c2 c3 k0 k1) -> out [4, 4]."""
    lanes = tl.arange(0, 4)
    r0, r1, r2, r3 = philox4x32(tl.load(words_ptr + lanes * 6), tl.load(words_ptr + lanes * 6 + 1),
                                tl.load(words_ptr + lanes * 6 + 2), tl.load(words_ptr + lanes * 6 + 3),
                                tl.load(words_ptr + lanes * 6 + 4), tl.load(words_ptr + lanes * 6 + 5), 10)
    tl.store(out_ptr + lanes * 4, r0)
    tl.store(out_ptr + lanes * 4 + 1, r1)
    tl.store(out_ptr + lanes * 4 + 2, r2)
    tl.store(out_ptr + lanes * 4 + 3, r3)


# Philox4x32-10 known answers, (c0 c1 c2 c3 k0 k1) -> four words, from Random123's kat_vectors.
PHILOX_KAT = [
    ([0, 0, 0, 0, 0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 6, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]
