"""The one-program-per-row Triton sampler: a comparison for the split sampler that `llm_kernels.sample` runs.

Kept out of the kernel package because production never runs it: `benchmarks.kernels` times it against the split
sampler (and its launch variants in `--sampling-sweep`), `benchmarks.throughput --ablations` runs the engine with
it, and tests/interpreter/test_one_program_sampler.py holds it to the same reference. It draws what the split
sampler draws (same passes, same Philox-keyed Gumbel-max), from one program per row:
1. one pass: the greedy argmax, and the max and sum of exp(logits / T) (online softmax);
2. with top-k or top-p on, one pass counts the candidates and their mass at NUM_LEVELS cut-offs
   p >= p_max * exp(-depth) (restricted to the min-p survivors), picks the shallowest cut-off that surely
   holds the answer (>= top_k values, or >= top_p of the mass), and one pass gathers those candidates into a
   per-row buffer (as wide as the vocabulary unless a caller caps it); the exact thresholds are then found by
   bisection on that buffer (`topk_topp`), or on the logits themselves when a capped buffer is too small;
3. one pass draws argmax(logits / T + Gumbel noise) over the kept tokens, which samples exactly from the kept
   tokens' renormalised softmax. The noise is Philox keyed on (seed, position) and the token id, so a seeded
   row draws the same token whatever the batch and whatever the tiling. Tiles with no kept token skip the noise.
The passes are the jit functions of `llm_kernels.triton_ops.sampling_passes`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops import _utils
from llm_kernels.triton_ops.sampling_passes import gather, gumbel_argmax, level_stats, softmax_stats
from llm_kernels.triton_ops.sampling_split import MASS_MARGIN, NUM_PIVOTS, PHILOX_ROUNDS
from llm_kernels.triton_ops.topk_topp import filter_threshold

NUM_LEVELS = 8
# Cut-off depths (in nats below the largest logit / T): 1.5 * 1.6**j, from 1.5 to about 40.
LEVEL_BASE = 1.5
LEVEL_LOG2_GROWTH = 0.6780719051126377


@triton.jit
def _sample_kernel(logits_ptr, stride_row, out_ptr, threshold_ptr, count_ptr, temperature_ptr, top_k_ptr,
                   top_p_ptr, min_p_ptr, seed_ptr, position_ptr, buffer_ptr, capacity, vocab,
                   PHILOX_ROUNDS: tl.constexpr, BLOCK: tl.constexpr, SEARCH_BLOCK: tl.constexpr,
                   NUM_PIVOTS: tl.constexpr,
                   NUM_LEVELS: tl.constexpr, LEVEL_BASE: tl.constexpr, LEVEL_LOG2_GROWTH: tl.constexpr,
                   MASS_MARGIN: tl.constexpr, LANE_SUMS: tl.constexpr, COMPACT: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature < 1e-5             # llm_kernels.reference.sampling.GREEDY_BELOW
    temperature = tl.where(greedy, 1.0, temperature)

    # Pass 1: greedy argmax (first index of the largest logit) and the softmax's max and normaliser.
    _, best_index, x_max, z = softmax_stats(row_ptr, 0, vocab, temperature, BLOCK, LANE_SUMS)
    if greedy:
        tl.store(out_ptr + row, best_index.to(tl.int64))
        tl.store(count_ptr + row, 1)
        return

    inv_z = tl.math.div_rn(1.0, z)    # IEEE, as every division of the samplers (see topk_topp.scaled)
    # The largest probability, exactly as `probs` computes it for a token at x_max (exp(0) = 1).
    p_max = inv_z
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    has_k = (top_k > 0) & (top_k < vocab)
    has_p = top_p < 1
    threshold = tl.where(min_p > 0, min_p * p_max, 0.0)

    if has_k | has_p:
        # Pass 2: candidates (min-p survivors) and their mass above each cut-off, and in all.
        levels = tl.exp(-LEVEL_BASE * tl.exp2(tl.arange(0, NUM_LEVELS).to(tl.float32) * LEVEL_LOG2_GROWTH)) * inv_z
        count_all, mass_all, level_count, level_mass = level_stats(row_ptr, 0, vocab, temperature, x_max, inv_z,
                                                                   threshold, levels, NUM_LEVELS, BLOCK, LANE_SUMS)
        enough = tl.where(has_k, level_count >= top_k, level_mass >= top_p * mass_all * MASS_MARGIN)
        level_ids = tl.arange(0, NUM_LEVELS)
        chosen = tl.min(tl.where(enough, level_ids, NUM_LEVELS), axis=0)
        floor = threshold
        count = count_all
        if chosen < NUM_LEVELS:
            floor = tl.maximum(threshold, tl.sum(tl.where(level_ids == chosen, levels, 0.0), axis=0))
            count = tl.sum(tl.where(level_ids == chosen, level_count, 0), axis=0)

        if count <= capacity:
            # Pass 3: gather the candidates, then solve the thresholds on them.
            buffer_row = buffer_ptr + row.to(tl.int64) * capacity
            gather(row_ptr, 0, vocab, temperature, x_max, inv_z, floor, floor, float("inf"), buffer_row, BLOCK)
            tl.debug_barrier()  # the search reads (and with COMPACT rewrites) what every warp gathered
            threshold = filter_threshold(buffer_row, count, floor, count, p_max, top_k, has_k, top_p, has_p,
                                         mass_all, 0.0, temperature, x_max, inv_z, False, NUM_PIVOTS,
                                         SEARCH_BLOCK, LANE_SUMS, COMPACT)
        else:
            threshold = filter_threshold(row_ptr, vocab, floor, count, p_max, top_k, has_k, top_p, has_p,
                                         mass_all, 0.0, temperature, x_max, inv_z, True, NUM_PIVOTS,
                                         SEARCH_BLOCK, LANE_SUMS, False)

    tl.store(threshold_ptr + row, threshold)
    # Last pass: Gumbel-max over the kept tokens.
    seed = tl.load(seed_ptr + row)
    position = tl.load(position_ptr + row)
    _, drawn, kept_count = gumbel_argmax(row_ptr, 0, vocab, temperature, x_max, inv_z, threshold, seed, position,
                                         best_index, PHILOX_ROUNDS, BLOCK)
    tl.store(out_ptr + row, drawn.to(tl.int64))
    tl.store(count_ptr + row, kept_count)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of `logits` [B, V] (contract: `llm_kernels.api.sample`)."""
    return sample_with_thresholds(logits, temperature, top_k, top_p, min_p, seeds, positions)[0]


def sample_with_thresholds(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                           top_p: torch.Tensor, min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor,
                           max_candidates: int | None = None, block: int | None = None,
                           num_warps: int | None = None, lane_sums: bool = False,
                           compact: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sample`, plus each row's probability threshold (a token is kept when its probability is >= it and > 0;
    0 for unfiltered and greedy rows) and how many tokens it kept (1 for greedy rows), for tests and tuning
    (tests/sampling_oracle.py checks them). `max_candidates` sizes the per-row candidate
    buffer (default: the vocabulary, so the buffer is as large as the logits and no row goes without it);
    rows with more candidates search the logits directly, several passes over the whole row. `block` (tokens
    per tile of the passes over the vocabulary, a power of two) and `num_warps` override the launch
    configuration. `lane_sums` keeps the partial results of the first passes (softmax statistics, cut-off
    levels) and of the threshold search per lane across tiles and reduces them once per pass instead of once
    per tile, which on a GPU synchronises the program's warps several times a tile: the same cut up to float32
    summation order. `compact` narrows the candidate buffer in place as the threshold search narrows (see
    `topk_topp`): fewer values read, the same cut up to float32 summation order. Neither is the default until
    a GPU benchmark shows it is faster (`python -m benchmarks.kernels --sampling-sweep`)."""
    batch, vocab = logits.shape
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    thresholds = torch.zeros(batch, dtype=torch.float32, device=logits.device)
    counts = torch.empty(batch, dtype=torch.int32, device=logits.device)       # every row writes its own
    if batch == 0:
        return out, thresholds, counts
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    capacity = max(1, min(vocab, max_candidates or vocab))
    buffer = torch.empty(batch, capacity, dtype=torch.float32, device=logits.device)
    on_gpu = _utils.compiled_for_gpu(logits.device)
    # Per-row parameters may be strided views (e.g. columns of one [B, 3] tensor): the kernel reads them densely.
    params = [t.to(dtype).contiguous() for t, dtype in ((temperature, torch.float32), (top_k, torch.int32),
                                                        (top_p, torch.float32), (min_p, torch.float32),
                                                        (seeds, torch.int64), (positions, torch.int64))]
    # 2048-token tiles and 8 warps on a GPU: in the sweep of 1024/2048/4096 tiles x 4/8/16 warps recorded in
    # benchmarks/RESULTS.md (H200, vocab 128k, batch 1 to 256) the only setting within 13% of the fastest in
    # every row (4096 is faster at small batches but 30% slower at batch 256).
    _sample_kernel[(batch,)](
        logits, logits.stride(0), out, thresholds, counts, *params, buffer, capacity, vocab,
        PHILOX_ROUNDS=PHILOX_ROUNDS, BLOCK=block or (2048 if on_gpu else 256), SEARCH_BLOCK=256,
        NUM_PIVOTS=NUM_PIVOTS, NUM_LEVELS=NUM_LEVELS, LEVEL_BASE=LEVEL_BASE, LEVEL_LOG2_GROWTH=LEVEL_LOG2_GROWTH,
        MASS_MARGIN=MASS_MARGIN, LANE_SUMS=lane_sums, COMPACT=compact, num_warps=num_warps or (8 if on_gpu else 4),
    )
    return out, thresholds, counts
