"""Sampling on Triton: temperature, min-p / top-k / top-p without sorting, seeded Gumbel-max draws.

One program per row (contract and exact filter semantics: `kernels.api.sample`, `kernels.reference.sampling`):
1. one pass: the greedy argmax, and the max and sum of exp(logits / T) (online softmax);
2. with top-k or top-p on, one pass counts the candidates and their mass at NUM_LEVELS cut-offs
   p >= p_max * exp(-depth) (restricted to the min-p survivors), picks the shallowest cut-off that surely
   holds the answer (>= top_k values, or >= top_p of the mass), and one pass gathers those candidates into a
   per-row buffer (as wide as the vocabulary unless a caller caps it); the exact thresholds are then found by
   bisection on that buffer (`topk_topp`), or on the logits themselves when a capped buffer is too small;
3. one pass draws argmax(logits / T + Gumbel noise) over the kept tokens, which samples exactly from the kept
   tokens' renormalised softmax. The noise is Philox keyed on (seed, position) and the token id, so a seeded
   row draws the same token whatever the batch and whatever the tiling. Tiles with no kept token skip the noise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_ops import _utils
from kernels.triton_ops.topk_topp import filter_threshold, probs

NUM_LEVELS = 8
NUM_PIVOTS = 16
PHILOX_ROUNDS = 10
# Cut-off depths (in nats below the largest logit / T): 1.5 * 1.6**j, from 1.5 to about 40.
LEVEL_BASE = 1.5
LEVEL_LOG2_GROWTH = 0.6780719051126377
# A top-p cut-off must hold this much more than top_p of the mass, so that summation order cannot matter.
MASS_MARGIN = 1.0001


@triton.jit
def philox4x32(c0, c1, c2, c3, k0, k1, N_ROUNDS: tl.constexpr):
    """Philox4x32 (Salmon et al., SC 2011): N_ROUNDS rounds on the uint32 counter (c0, c1, c2, c3) with the
    uint32 key (k0, k1); returns the four output words."""
    m0 = tl.full((), 0xD2511F53, tl.uint32)
    m1 = tl.full((), 0xCD9E8D57, tl.uint32)
    for _ in tl.static_range(N_ROUNDS):
        c0, c1, c2, c3 = (tl.math.umulhi(m1, c2) ^ c1 ^ k0, m1 * c2, tl.math.umulhi(m0, c0) ^ c3 ^ k1, m0 * c0)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def gumbel_noise(seed, position, tokens, N_ROUNDS: tl.constexpr):
    """Gumbel(0, 1) noise for `tokens`: Philox4x32 with the 64-bit seed as key and (token, position low,
    position high, 0) as counter, so a function of (seed, position, token) alone."""
    zero = tokens.to(tl.uint32) * 0
    word, _, _, _ = philox4x32(tokens.to(tl.uint32), zero + (position & 0xFFFFFFFF).to(tl.uint32),
                               zero + ((position >> 32) & 0xFFFFFFFF).to(tl.uint32), zero,
                               (seed & 0xFFFFFFFF).to(tl.uint32), ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32),
                               N_ROUNDS)
    # 24 random bits to the centre of one of 2**24 bins of (0, 1), so neither log below sees 0 or 1.
    u = (word >> 8).to(tl.float32) * (1.0 / 16777216.0) + (0.5 / 16777216.0)
    return -tl.log(-tl.log(u))


@triton.jit
def _sample_kernel(logits_ptr, stride_row, out_ptr, threshold_ptr, count_ptr, temperature_ptr, top_k_ptr,
                   top_p_ptr, min_p_ptr, seed_ptr, position_ptr, buffer_ptr, capacity, vocab,
                   PHILOX_ROUNDS: tl.constexpr, BLOCK: tl.constexpr, SEARCH_BLOCK: tl.constexpr,
                   NUM_PIVOTS: tl.constexpr,
                   NUM_LEVELS: tl.constexpr, LEVEL_BASE: tl.constexpr, LEVEL_LOG2_GROWTH: tl.constexpr,
                   MASS_MARGIN: tl.constexpr, LANE_SUMS: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature <= 0
    temperature = tl.where(greedy, 1.0, temperature)

    # Pass 1: greedy argmax (first index of the largest logit) and the softmax's max and normaliser.
    if LANE_SUMS:  # each lane keeps its own running max, normaliser and first argmax; combined once at the end
        lane_best = tl.full([BLOCK], float("-inf"), tl.float32)
        lane_index = tl.zeros([BLOCK], tl.int32)
        lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
        lane_z = tl.zeros([BLOCK], tl.float32)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            logits = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
            better = logits > lane_best
            lane_index = tl.where(better, offs, lane_index)
            lane_best = tl.where(better, logits, lane_best)
            x = logits / temperature
            new_max = tl.maximum(lane_max, x)
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            lane_z = lane_z * tl.exp(lane_max - shift) + tl.exp(x - shift)
            lane_max = new_max
        best_logit = tl.max(lane_best, axis=0)
        best_index = tl.min(tl.where(lane_best == best_logit, lane_index, vocab), axis=0)
        best_index = tl.where(best_logit == float("-inf"), 0, best_index)
        x_max = tl.max(lane_max, axis=0)
        shift = tl.where(x_max == float("-inf"), 0.0, x_max)
        z = tl.sum(lane_z * tl.exp(lane_max - shift), axis=0)
    else:
        best_logit = tl.full((), float("-inf"), tl.float32)
        best_index = tl.zeros((), tl.int32)
        x_max = tl.full((), float("-inf"), tl.float32)
        z = tl.zeros((), tl.float32)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            logits = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
            tile_max = tl.max(logits, axis=0)
            if tile_max > best_logit:
                best_index = tl.min(tl.where(logits == tile_max, offs, vocab), axis=0)
                best_logit = tile_max
            x = logits / temperature
            new_max = tl.maximum(x_max, tl.max(x, axis=0))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            z = z * tl.exp(x_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
            x_max = new_max
    if greedy:
        tl.store(out_ptr + row, best_index.to(tl.int64))
        tl.store(count_ptr + row, 1)
        return

    inv_z = 1.0 / z
    # The largest probability, exactly as `probs` computes it for a token at x_max (exp(0) = 1). Not derived
    # from the argmax logit: an approximate GPU division need not be monotonic in the last bit.
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
        if LANE_SUMS:  # partial sums per lane across the tiles, reduced once (see topk_topp._pivot_stats)
            level_count = tl.zeros([BLOCK, NUM_LEVELS], tl.int32)
            level_mass = tl.zeros([BLOCK, NUM_LEVELS], tl.float32)
            count_all = tl.zeros([BLOCK], tl.int32)
            mass_all = tl.zeros([BLOCK], tl.float32)
        else:
            level_count = tl.zeros([NUM_LEVELS], tl.int32)
            level_mass = tl.zeros([NUM_LEVELS], tl.float32)
            count_all = tl.zeros((), tl.int32)
            mass_all = tl.zeros((), tl.float32)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            logits = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
            p = probs(logits, temperature, x_max, inv_z)
            ok = (p >= threshold) & (p > 0)
            above = ok[:, None] & (p[:, None] >= levels[None, :])
            tile_count, tile_mass = ok.to(tl.int32), tl.where(ok, p, 0.0)
            tile_level_count, tile_level_mass = above.to(tl.int32), tl.where(above, p[:, None], 0.0)
            if not LANE_SUMS:
                tile_count, tile_mass = tl.sum(tile_count, axis=0), tl.sum(tile_mass, axis=0)
                tile_level_count = tl.sum(tile_level_count, axis=0)
                tile_level_mass = tl.sum(tile_level_mass, axis=0)
            count_all += tile_count
            mass_all += tile_mass
            level_count += tile_level_count
            level_mass += tile_level_mass
        if LANE_SUMS:
            count_all, mass_all = tl.sum(count_all, axis=0), tl.sum(mass_all, axis=0)
            level_count, level_mass = tl.sum(level_count, axis=0), tl.sum(level_mass, axis=0)
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
            gathered = tl.zeros((), tl.int32)
            for start in range(0, vocab, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                logits = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
                p = probs(logits, temperature, x_max, inv_z)
                keep = (p >= floor) & (p > 0)
                slots = gathered + tl.cumsum(keep.to(tl.int32), axis=0) - 1
                tl.store(buffer_row + slots, p, mask=keep)
                gathered += tl.sum(keep.to(tl.int32), axis=0)
            threshold = filter_threshold(buffer_row, count, floor, count, p_max, top_k, has_k, top_p, has_p,
                                         mass_all, temperature, x_max, inv_z, False, NUM_PIVOTS, SEARCH_BLOCK,
                                         LANE_SUMS)
        else:
            threshold = filter_threshold(row_ptr, vocab, floor, count, p_max, top_k, has_k, top_p, has_p,
                                         mass_all, temperature, x_max, inv_z, True, NUM_PIVOTS, SEARCH_BLOCK,
                                         LANE_SUMS)

    tl.store(threshold_ptr + row, threshold)
    # Last pass: Gumbel-max over the kept tokens.
    seed = tl.load(seed_ptr + row)
    position = tl.load(position_ptr + row)
    best_score = tl.full((), float("-inf"), tl.float32)
    drawn = best_index
    kept_count = tl.zeros((), tl.int32)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        logits = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        p = probs(logits, temperature, x_max, inv_z)
        kept = (p >= threshold) & (p > 0)
        kept_here = tl.sum(kept.to(tl.int32), axis=0)
        kept_count += kept_here
        if kept_here > 0:
            gumbel = gumbel_noise(seed, position, offs, PHILOX_ROUNDS)
            score = tl.where(kept, logits / temperature + gumbel, float("-inf"))
            tile_best = tl.max(score, axis=0)
            if tile_best > best_score:
                drawn = tl.min(tl.where(score == tile_best, offs, vocab), axis=0)
                best_score = tile_best
    tl.store(out_ptr + row, drawn.to(tl.int64))
    tl.store(count_ptr + row, kept_count)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of `logits` [B, V] (contract: `kernels.api.sample`)."""
    return sample_with_thresholds(logits, temperature, top_k, top_p, min_p, seeds, positions)[0]


def sample_with_thresholds(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                           top_p: torch.Tensor, min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor,
                           max_candidates: int | None = None, block: int | None = None,
                           num_warps: int | None = None,
                           lane_sums: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sample`, plus each row's probability threshold (a token is kept when its probability is >= it and > 0;
    0 for unfiltered and greedy rows) and how many tokens it kept (1 for greedy rows), for tests and tuning
    (`kernels.reference.sampling.kept_set_problems` checks them). `max_candidates` sizes the per-row candidate
    buffer (default: the vocabulary, so the buffer is as large as the logits and no row goes without it);
    rows with more candidates search the logits directly, several passes over the whole row. `block` (tokens
    per tile of the passes over the vocabulary, a power of two) and `num_warps` override the launch
    configuration. `lane_sums` keeps the partial results of the first passes (softmax statistics, cut-off
    levels) and of the threshold search per lane across tiles and reduces them once per pass instead of once
    per tile, which on a GPU synchronises the program's warps several times a tile: the same cut up to float32
    summation order. Not the default until a GPU benchmark shows it is faster
    (`python -m benchmarks.kernels --sampling-sweep`)."""
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
        MASS_MARGIN=MASS_MARGIN, LANE_SUMS=lane_sums, num_warps=num_warps or (8 if on_gpu else 4),
    )
    return out, thresholds, counts
