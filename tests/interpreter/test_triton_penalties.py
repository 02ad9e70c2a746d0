"""The Triton penalties against the torch reference (`llm_kernels.reference.sampling.apply_penalties`)."""

from __future__ import annotations

import pytest
import torch

import llm_kernels
from llm_kernels.reference import sampling as ref
from llm_kernels.triton_ops import apply_penalties


def _batch(dtype: torch.dtype):
    g = torch.Generator().manual_seed(2)
    batch, vocab = 5, 1500
    logits = (torch.randn(batch, vocab, generator=g) * 3).to(dtype)
    prompt = torch.randint(0, vocab, (batch, 40), generator=g)
    output = torch.randint(0, 60, (batch, 300), generator=g)   # many repeats: counts up to ~15
    prompt[0, 10:] = -1                                         # padding
    output[1, 5:] = -1
    output[2, :] = -1                                           # nothing generated yet
    prompt[3, :] = output[3, :40]                               # tokens in both lists
    # Columns of one tensor, so strided views, as an engine may pass them; the last row is neutral.
    params = torch.tensor([[0.5, 0.1, 1.3], [0.0, 0.7, 1.0], [1.0, 0.0, 0.8], [-0.3, 0.2, 2.0], [0.0, 0.0, 1.0]])
    presence, frequency, repetition = params.T
    return logits, prompt, output, presence, frequency, repetition


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_penalties_match_reference(dtype):
    logits, prompt, output, presence, frequency, repetition = _batch(dtype)
    expected = ref.apply_penalties(logits.clone(), prompt, output, presence, frequency, repetition)
    got = logits.clone()
    returned = apply_penalties(got, prompt, output, presence, frequency, repetition)
    assert returned.data_ptr() == got.data_ptr()               # in place
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    assert not torch.equal(got[:4], logits[:4])                 # the penalties did something
    assert torch.equal(got[4], logits[4])


def test_penalties_through_the_api_with_empty_lists():
    logits, _, _, presence, frequency, repetition = _batch(torch.float32)
    empty = torch.empty(logits.shape[0], 0, dtype=torch.int64)
    output = torch.tensor([[3, 3, -1]] * logits.shape[0])
    expected = ref.apply_penalties(logits.clone(), empty, output, presence, frequency, repetition)
    llm_kernels.use("triton")
    got = llm_kernels.apply_penalties(logits.clone(), empty, output, presence, frequency, repetition)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
