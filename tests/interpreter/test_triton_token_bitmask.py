"""The Triton token-bitmask kernel against the torch reference, and the reference against xgrammar's own
`apply_token_bitmask_inplace` (an oracle nobody here wrote)."""

from __future__ import annotations

import pytest
import torch
import xgrammar

import llm_kernels
from llm_kernels.reference.token_bitmask import apply_token_bitmask as reference
from llm_kernels.triton_ops import apply_token_bitmask


def _case(vocab: int, words: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, vocab, generator=g)
    bitmask = torch.randint(-(2 ** 31), 2 ** 31 - 1, (3, words), generator=g, dtype=torch.int64).to(torch.int32)
    bitmask[1] = 0                                   # nothing allowed
    bitmask[2] = -1                                  # everything allowed
    rows = torch.tensor([4, 0, 2])
    return logits, bitmask, rows


@pytest.mark.parametrize(("vocab", "words"), [(1500, 47), (2048, 64), (1500, 40)])   # exact, padded, short mask
def test_triton_matches_the_reference(vocab, words):
    logits, bitmask, rows = _case(vocab, words)
    expected = reference(logits.clone(), bitmask, rows)
    got = logits.clone()
    assert apply_token_bitmask(got, bitmask, rows).data_ptr() == got.data_ptr()
    assert torch.equal(got, expected)
    assert torch.equal(got[[1, 3, 5]], logits[[1, 3, 5]])                  # rows not named are untouched
    assert torch.isinf(got[0]).all() and torch.equal(got[2, :min(vocab, 32 * words)],
                                                     logits[2, :min(vocab, 32 * words)])


@pytest.mark.parametrize("every_row", [False, True])       # a subset of rows (gather, scatter), or all in order
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_reference_matches_xgrammar(every_row, dtype):
    logits, bitmask, rows = _case(1500, 47, seed=1)
    logits = logits.to(dtype)
    if every_row:
        rows = torch.arange(logits.shape[0])
        bitmask = torch.cat([bitmask, bitmask])
    ours = reference(logits.clone(), bitmask, rows)
    assert ours.dtype == dtype
    theirs = logits.clone()
    full = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=torch.int32)    # xgrammar's: one row per logit row
    full[rows] = bitmask
    xgrammar.apply_token_bitmask_inplace(theirs, full, indices=rows.tolist(), backend="torch_native")
    assert torch.equal(ours, theirs)


def test_through_the_api_and_the_kernel_set():
    logits, bitmask, rows = _case(700, 22, seed=2)
    expected = reference(logits.clone(), bitmask, rows)
    llm_kernels.use("triton")
    assert torch.equal(llm_kernels.apply_token_bitmask(logits.clone(), bitmask, rows), expected)
    assert llm_kernels.select("cpu", "triton").apply_token_bitmask is apply_token_bitmask
