"""The test oracle of the Triton samplers: how a sampler's kept sets differ from `filter_probs` beyond float32
rounding. The samplers report, per row, their cut and how many tokens they kept; this judges both against the
float64 reference. Used by the interpreter and GPU tests and by the kernel benchmarks' "kept ok" column.
"""

from __future__ import annotations

import torch

from llm_kernels.reference.sampling import GREEDY_BELOW, filter_probs


def kept_set_problems(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                      min_p: torch.Tensor, thresholds: torch.Tensor, kept_counts: torch.Tensor,
                      rtol: float = 1e-5, mass_rtol: float = 1e-5) -> list[str]:
    """How another sampler's filters may differ from `filter_probs`: a description of each row where they differ
    by more than float32 rounding; an empty list when none does. For tests and benchmarks.

    The reference is computed in float64 from the float32 quotient logits / temperature (what a float32 kernel
    divides to). The other sampler reports, per row, how many tokens it kept (`kept_counts`) and its cut
    (`thresholds`: a token is kept when its probability is >= the cut and > 0). It kept the `kept_counts` most
    likely tokens, so the cut must lie between the least likely of them and the next one. Where the counts
    differ, every token ranked between the two must be one whose fate float rounding can decide: its
    probability is near the min-p floor, or near the k-th largest probability and ranked after it (kept as a
    float32 tie), or below what a float32 holds
    normally (1e-37), or, for a token that min-p and top-k keep and where top-p decides, the mass of the tokens
    above it is near top_p times the mass that min-p and top-k leave (a range: tokens near the k-th probability
    may tie with it in float32). "Near" is `rtol` relative (`mass_rtol` for masses), widened by four float32
    units of the row's largest |logit / temperature| (a margin for the GPU's approximate exponential). Greedy
    rows (temperature below GREEDY_BELOW) are skipped.
    """
    problems = []
    vocab = logits.shape[-1]
    for row in range(logits.shape[0]):
        if temperature[row] < GREEDY_BELOW:
            continue
        x = (logits[row].float() / temperature[row].float()).double()
        finite = x[x.isfinite()]
        if finite.numel() == 0:                                    # no token can be drawn: nothing to compare
            continue
        slack = rtol + 2.0 ** -21 * float(finite.abs().max())
        ordered = torch.softmax(x, dim=-1).sort(descending=True).values
        k, p, m = int(top_k[row]), float(top_p[row]), float(min_p[row])
        expected = int((filter_probs(ordered[None], top_k[row:row + 1], top_p[row:row + 1].double(),
                                     min_p[row:row + 1].double())[0] > 0).sum())
        count, cut = int(kept_counts[row]), float(thresholds[row])
        where = f"row {row} (T {float(temperature[row]):g}, k {k}, p {p:g}, min-p {m:g}): kept {count}, " \
                f"reference {expected}"
        if not 0 < count <= vocab:
            problems.append(f"{where}: impossible count")
            continue
        least, next_one = float(ordered[count - 1]), float(ordered[count]) if count < vocab else 0.0
        if (cut >= 1e-37 and least < cut * (1 - slack)) or next_one > max(cut, 1e-37) * (1 + slack):
            problems.append(f"{where}: cut {cut:.9g} does not separate the kept tokens (least {least:.9g}) from "
                            f"the next ({next_one:.9g})")
            continue
        if count == expected:
            continue
        floor = m * float(ordered[0])
        kth = float(ordered[k - 1]) if 0 < k < vocab else 0.0
        bound = max(floor, kth)
        strict_pool, loose_pool = ordered[ordered >= bound], ordered[ordered >= bound * (1 - slack)]
        low, high = p * float(strict_pool.sum()), p * float(loose_pool.sum())    # the top-p target's range
        tolerance = mass_rtol * high + slack * high
        ranks = torch.arange(min(count, expected), max(count, expected))
        values = ordered[ranks]
        above = torch.searchsorted(-loose_pool, -values)           # how many pool tokens are strictly likelier
        mass_above = torch.cat([loose_pool.new_zeros(1), loose_pool.cumsum(0)])[above]
        explained = ((values < 1e-37) | ((values - floor).abs() <= slack * floor)
                     | ((ranks >= k) & ((values - kth).abs() <= slack * kth))    # a float32 tie with the k-th
                     | ((p < 1) & (values >= bound * (1 - slack))
                        & (mass_above >= low - tolerance) & (mass_above <= high + tolerance)))
        if not bool(explained.all()):
            i = int((~explained).nonzero()[0])
            problems.append(f"{where}: the token ranked {int(ranks[i]) + 1} (p {float(values[i]):.9g}, "
                            f"mass above {float(mass_above[i]):.9g}, top-p target {low:.9g} to {high:.9g}) is at "
                            "no boundary")
    return problems
