"""The passes of the Triton samplers over a span [start, end) of one row of logits: the split kernels'
(`sampling_split`, one span per program) and the one-program-per-row comparison's in benchmarks/ (span = the
whole row).

Every pass computes a token's probability with `topk_topp.probs` from the same softmax statistics, so the
passes (and the kernels of the split sampler) agree bit for bit on which side of a cut a token falls.
LANE_SUMS keeps partial results per lane across the tiles and reduces them once at the end instead of once per
tile (each block-wide reduction synchronises the program's warps); only the one-program sampler offers it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from llm_kernels.triton_ops.topk_topp import probs, scaled


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
    # 23 random bits to the centre of one of 2**23 bins of (0, 1), so neither log below sees 0 or 1: the largest,
    # 1 - 2**-24, is a float32 below 1 (with 24 bits it would be 1 - 2**-25, which rounds to 1.0: +inf noise).
    u = (word >> 9).to(tl.float32) * (1.0 / 8388608.0) + (0.5 / 8388608.0)
    return -tl.log(-tl.log(u))


@triton.jit
def softmax_stats(row_ptr, start, end, temperature, BLOCK: tl.constexpr, LANE_SUMS: tl.constexpr):
    """(largest logit, first index holding it (`start` if every logit is -inf), max of logits / T,
    sum of exp(logits / T - that max)) over the span: the greedy token and an online softmax."""
    if LANE_SUMS:
        lane_best = tl.full([BLOCK], float("-inf"), tl.float32)
        lane_index = tl.zeros([BLOCK], tl.int32) + start
        lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
        lane_z = tl.zeros([BLOCK], tl.float32)
        for tile in range(start, end, BLOCK):
            offs = tile + tl.arange(0, BLOCK)
            logits = tl.load(row_ptr + offs, mask=offs < end, other=float("-inf")).to(tl.float32)
            better = logits > lane_best
            lane_index = tl.where(better, offs, lane_index)
            lane_best = tl.where(better, logits, lane_best)
            x = scaled(logits, temperature)
            new_max = tl.maximum(lane_max, x)
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            lane_z = lane_z * tl.exp(lane_max - shift) + tl.exp(x - shift)
            lane_max = new_max
        best_logit = tl.max(lane_best, axis=0)
        best_index = tl.min(tl.where(lane_best == best_logit, lane_index, end), axis=0)
        best_index = tl.where(best_logit == float("-inf"), start, best_index)
        x_max = tl.max(lane_max, axis=0)
        shift = tl.where(x_max == float("-inf"), 0.0, x_max)
        z = tl.sum(lane_z * tl.exp(lane_max - shift), axis=0)
    else:
        best_logit = tl.full((), float("-inf"), tl.float32)
        best_index = tl.zeros((), tl.int32) + start
        x_max = tl.full((), float("-inf"), tl.float32)
        z = tl.zeros((), tl.float32)
        for tile in range(start, end, BLOCK):
            offs = tile + tl.arange(0, BLOCK)
            logits = tl.load(row_ptr + offs, mask=offs < end, other=float("-inf")).to(tl.float32)
            tile_max = tl.max(logits, axis=0)
            if tile_max > best_logit:
                best_index = tl.min(tl.where(logits == tile_max, offs, end), axis=0)
                best_logit = tile_max
            x = scaled(logits, temperature)
            new_max = tl.maximum(x_max, tl.max(x, axis=0))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            z = z * tl.exp(x_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
            x_max = new_max
    return best_logit, best_index, x_max, z


@triton.jit
def _tile_probs(row_ptr, tile, end, temperature, x_max, inv_z, BLOCK: tl.constexpr):
    """Token ids, logits (-inf past the span) and probabilities of the tile starting at `tile`."""
    offs = tile + tl.arange(0, BLOCK)
    logits = tl.load(row_ptr + offs, mask=offs < end, other=float("-inf")).to(tl.float32)
    return offs, logits, probs(logits, temperature, x_max, inv_z)


@triton.jit
def level_stats(row_ptr, start, end, temperature, x_max, inv_z, floor, levels, NUM_LEVELS: tl.constexpr,
                BLOCK: tl.constexpr, LANE_SUMS: tl.constexpr):
    """Over the span's candidates (p >= floor and p > 0): how many and how much mass in all, and at or above
    each of the `levels` ([NUM_LEVELS] probabilities)."""
    if LANE_SUMS:
        level_count = tl.zeros([BLOCK, NUM_LEVELS], tl.int32)
        level_mass = tl.zeros([BLOCK, NUM_LEVELS], tl.float32)
        count_all = tl.zeros([BLOCK], tl.int32)
        mass_all = tl.zeros([BLOCK], tl.float32)
    else:
        level_count = tl.zeros([NUM_LEVELS], tl.int32)
        level_mass = tl.zeros([NUM_LEVELS], tl.float32)
        count_all = tl.zeros((), tl.int32)
        mass_all = tl.zeros((), tl.float32)
    for tile in range(start, end, BLOCK):
        _, _, p = _tile_probs(row_ptr, tile, end, temperature, x_max, inv_z, BLOCK)
        ok = (p >= floor) & (p > 0)
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
    return count_all, mass_all, level_count, level_mass


@triton.jit
def gather(row_ptr, start, end, temperature, x_max, inv_z, floor, lower, upper, out_ptr, BLOCK: tl.constexpr):
    """Writes, in token order from out_ptr on, the span's probabilities p with p >= floor, p >= lower, p > 0 and
    not p >= upper (the same comparisons as `level_stats`, so the counts agree exactly); returns how many and
    the largest (-1 if none)."""
    gathered = tl.zeros((), tl.int32)
    largest = tl.full((), -1.0, tl.float32)
    for tile in range(start, end, BLOCK):
        _, _, p = _tile_probs(row_ptr, tile, end, temperature, x_max, inv_z, BLOCK)
        keep = (p >= floor) & (p > 0) & (p >= lower) & ~(p >= upper)
        slots = gathered + tl.cumsum(keep.to(tl.int32), axis=0) - 1
        tl.store(out_ptr + slots, p, mask=keep)
        gathered += tl.sum(keep.to(tl.int32), axis=0)
        largest = tl.maximum(largest, tl.max(tl.where(keep, p, -1.0), axis=0))
    return gathered, largest


@triton.jit
def gumbel_argmax(row_ptr, start, end, temperature, x_max, inv_z, threshold, seed, position, fallback,
                  PHILOX_ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    """Over the span's kept tokens (p >= threshold and p > 0): the largest logits / T - x_max + Gumbel noise, the
    first token holding it (`fallback` if none is kept) and how many are kept. Tiles with no kept token skip the
    noise. The noise goes on logits / T less their max, where float32 resolves it: on logits / T themselves (up to
    1e6 and more at a temperature near 1e-5) tied tokens' noisy scores would round to ties, won by the first."""
    best_score = tl.full((), float("-inf"), tl.float32)
    drawn = tl.zeros((), tl.int32) + fallback
    kept_count = tl.zeros((), tl.int32)
    for tile in range(start, end, BLOCK):
        offs, logits, p = _tile_probs(row_ptr, tile, end, temperature, x_max, inv_z, BLOCK)
        kept = (p >= threshold) & (p > 0)
        kept_here = tl.sum(kept.to(tl.int32), axis=0)
        kept_count += kept_here
        if kept_here > 0:
            gumbel = gumbel_noise(seed, position, offs, PHILOX_ROUNDS)
            score = tl.where(kept, (scaled(logits, temperature) - x_max) + gumbel, float("-inf"))
            tile_best = tl.max(score, axis=0)
            if tile_best > best_score:
                drawn = tl.min(tl.where(score == tile_best, offs, end), axis=0)
                best_score = tile_best
    return best_score, drawn, kept_count
