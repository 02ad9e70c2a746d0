"""The samplers' test oracle (`sampling_oracle.kept_set_problems`): exact cuts pass, others are reported."""

from __future__ import annotations

import torch
from sampling_oracle import kept_set_problems

from llm_kernels.reference import sampling as ref


def _exact_cuts(logits, temperature, top_k, top_p, min_p):
    """What an exact float32 sampler reports: the reference's kept count and, as the cut, the float32 softmax
    probability of the least likely kept token."""
    x = logits.float() / temperature[:, None].float()
    kept = ref.filter_probs(torch.softmax(x.double(), dim=-1), top_k, top_p.double(), min_p.double()) > 0
    cuts = torch.where(kept, torch.softmax(x, dim=-1), torch.inf).min(dim=-1).values
    return cuts, kept.sum(dim=-1).int()


def test_kept_set_problems_accepts_exact_cuts_and_flags_others():
    """The rule the Triton sampler is held to: exact cuts pass, also at low temperature (|logit / T| ~ 400) and
    for subnormal cuts; one token more or fewer where no float rounding could decide it is reported."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 400, generator=g) * 2
    logits[3] = logits[3] * 0.25 + 20                          # T 0.05 below: logits / T around 400
    logits[4, :2] = torch.tensor([0.0, -96.0])                 # the 2nd probability ~1e-42, a subnormal float32
    logits[4, 2:] = -1000.0
    temperature = torch.tensor([1.0, 0.8, 1.3, 0.05, 1.0])
    top_k = torch.tensor([20, 0, 0, 7, 2], dtype=torch.int32)
    top_p = torch.tensor([1.0, 0.9, 1.0, 1.0, 1.0])
    min_p = torch.tensor([0.0, 0.0, 0.05, 0.0, 0.0])
    args = (logits, temperature, top_k, top_p, min_p)
    cuts, counts = _exact_cuts(*args)
    assert kept_set_problems(*args, cuts, counts) == []
    floor_cuts = cuts.clone()                                  # min-p's cut may be the floor itself
    floor_cuts[2] = 0.05 * torch.softmax(logits[2] / 1.3, dim=-1).max()
    assert kept_set_problems(*args, floor_cuts, counts) == []
    probs = torch.softmax(logits.double() / temperature[:, None].double(), dim=-1)
    ordered = probs.sort(dim=-1, descending=True).values
    for row in range(4):                                       # one token more, then one fewer, in each row
        for change in (1, -1):
            other_counts, other_cuts = counts.clone(), cuts.clone()
            other_counts[row] += change
            other_cuts[row] = float(ordered[row, int(other_counts[row]) - 1])
            problems = kept_set_problems(*args, other_cuts, other_counts)
            assert len(problems) == 1 and problems[0].startswith(f"row {row} "), (row, change, problems)
    wrong_cut = cuts.clone()
    wrong_cut[0] *= 2                                          # the count and the cut disagree
    assert "does not separate" in kept_set_problems(*args, wrong_cut, counts)[0]


def test_kept_set_problems_does_not_excuse_ignoring_top_k_when_top_p_is_near_one():
    logits = torch.randn(1, 2000, generator=torch.Generator().manual_seed(5))
    args = (logits, torch.ones(1), torch.tensor([20], dtype=torch.int32), torch.tensor([0.99999]), torch.zeros(1))
    everything = torch.softmax(logits, dim=-1).min().reshape(1)
    assert kept_set_problems(*args, everything, torch.tensor([2000])) != []
