"""Sort-free top-k / top-p thresholds for the samplers (`sampling_split`; benchmarks/one_program_sampler.py).

Every filter keeps an upper set of the probabilities, so each reduces to one threshold value. It is found by a
multi-pivot bisection over the float bit patterns of the candidate values (non-negative floats order like their
bits): each pass over the values evaluates NUM_PIVOTS pivots spread over the bracket [lo, hi] at once, and snaps
the new bounds to the nearest actual values around the deciding pivots, so the search ends on an exact value of
the row (ties are kept together, as in the reference) after about 32 / log2(NUM_PIVOTS + 1) passes. The values
come from a per-row buffer of gathered candidates (FROM_LOGITS=False) or, when they do not fit in it, straight
from the logits (FROM_LOGITS=True), recomputing the same probabilities with `probs`. With COMPACT, each pass
over a buffer also moves the values still inside the bracket to its front, so a pass reads only what the pass
before left (about the whole buffer once, then a fraction of it) instead of the whole buffer every time.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def scaled(logits, temperature):
    """logits / temperature, rounded as IEEE division. Every pass divides through this: a plain `/` is the GPU's
    approximate division, which ptxas turns into a multiply by the reciprocal and may fuse with the subtraction
    that follows in one pass but not in another, so two passes disagreed in the last bit on the same token (on
    an H100: a top-k cut that kept k - 1 tokens, a top-p cut that kept none)."""
    return tl.math.div_rn(logits, temperature)


@triton.jit
def probs(logits, temperature, x_max, inv_z):
    """softmax(logits / temperature) given its max and 1 / sum; every pass uses this for bit-identical values."""
    return tl.exp(scaled(logits, temperature) - x_max) * inv_z


@triton.jit
def _values(src_ptr, offs, n, temperature, x_max, inv_z, FROM_LOGITS: tl.constexpr):
    """Probabilities at `offs` of the source; 0 (never a candidate) past its end."""
    if FROM_LOGITS:
        logits = tl.load(src_ptr + offs, mask=offs < n, other=float("-inf")).to(tl.float32)
        return probs(logits, temperature, x_max, inv_z)
    else:
        return tl.load(src_ptr + offs, mask=offs < n, other=0.0)


@triton.jit
def _pivot_stats(src_ptr, n, floor, pivots, keep_lo, keep_hi, temperature, x_max, inv_z, FROM_LOGITS: tl.constexpr,
                 NUM_PIVOTS: tl.constexpr, BLOCK: tl.constexpr, LANE_SUMS: tl.constexpr, COMPACT: tl.constexpr):
    """Per pivot, over the values >= floor and > 0: how many and how much mass are >= it, the smallest value
    >= it (inf if none) and the largest value below it (-1 if none). LANE_SUMS keeps [BLOCK, NUM_PIVOTS]
    partial results across the tiles and reduces them once at the end, instead of reducing every tile (which
    synchronises the program's warps four times per tile).

    COMPACT (a buffer source only) also moves the values in [keep_lo, keep_hi] to the front of the buffer, in
    place (each is written at or before where it was read, after its tile was read), and returns how many there
    are and the mass of the values above keep_hi that it dropped; otherwise (n, 0).
    """
    tl.static_assert(not (FROM_LOGITS and COMPACT), "COMPACT rewrites its source: a buffer, never the logits")
    if LANE_SUMS:
        count = tl.zeros([BLOCK, NUM_PIVOTS], tl.int32)
        mass = tl.zeros([BLOCK, NUM_PIVOTS], tl.float32)
        above = tl.full([BLOCK, NUM_PIVOTS], float("inf"), tl.float32)
        below = tl.full([BLOCK, NUM_PIVOTS], -1.0, tl.float32)
    else:
        count = tl.zeros([NUM_PIVOTS], tl.int32)
        mass = tl.zeros([NUM_PIVOTS], tl.float32)
        above = tl.full([NUM_PIVOTS], float("inf"), tl.float32)
        below = tl.full([NUM_PIVOTS], -1.0, tl.float32)
    kept = tl.zeros((), tl.int32)
    dropped_mass = tl.zeros((), tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if FROM_LOGITS:  # the expression of `probs`, inlined (the interpreter pays per helper call)
            logits = tl.load(src_ptr + offs, mask=offs < n, other=float("-inf")).to(tl.float32)
            p = tl.exp(tl.math.div_rn(logits, temperature) - x_max) * inv_z
        else:
            p = tl.load(src_ptr + offs, mask=offs < n, other=0.0)
        ok = (p >= floor) & (p > 0)
        grid = p[:, None] + tl.zeros([1, NUM_PIVOTS], tl.float32)
        ge = ok[:, None] & (grid >= pivots[None, :])
        tile_count = ge.to(tl.int32)
        tile_mass = tl.where(ge, grid, 0.0)
        tile_above = tl.where(ge, grid, float("inf"))
        tile_below = tl.where(ok[:, None] & ~ge, grid, -1.0)
        if not LANE_SUMS:
            tile_count = tl.sum(tile_count, axis=0)
            tile_mass = tl.sum(tile_mass, axis=0)
            tile_above = tl.min(tile_above, axis=0)
            tile_below = tl.max(tile_below, axis=0)
        count += tile_count
        mass += tile_mass
        above = tl.minimum(above, tile_above)
        below = tl.maximum(below, tile_below)
        if COMPACT:
            keep = ok & (p >= keep_lo) & (p <= keep_hi)
            slots = kept + tl.cumsum(keep.to(tl.int32), axis=0) - 1
            tl.store(src_ptr + slots, p, mask=keep & (slots != offs))  # a value in place needs no write
            kept += tl.sum(keep.to(tl.int32), axis=0)
            dropped_mass += tl.sum(tl.where(ok & (p > keep_hi), p, 0.0), axis=0)
    if LANE_SUMS:
        count = tl.sum(count, axis=0)
        mass = tl.sum(mass, axis=0)
        above = tl.min(above, axis=0)
        below = tl.max(below, axis=0)
    if COMPACT:
        tl.debug_barrier()  # the next pass reads values that other warps wrote
    else:
        kept = n
    return count, mass, above, below, kept, dropped_mass


@triton.jit
def _pivots(lo, hi, NUM_PIVOTS: tl.constexpr):
    """NUM_PIVOTS values spread evenly in bit space over (lo, hi] (non-negative floats order like their bits)."""
    steps = tl.arange(0, NUM_PIVOTS).to(tl.int64) + 1
    lo_bits = lo.to(tl.int32, bitcast=True).to(tl.int64)
    span = hi.to(tl.int32, bitcast=True).to(tl.int64) - lo_bits - 1
    return (lo_bits + 1 + span * steps // (NUM_PIVOTS + 1)).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def kth_largest(src_ptr, n, k, floor, top, temperature, x_max, inv_z, FROM_LOGITS: tl.constexpr,
                NUM_PIVOTS: tl.constexpr, BLOCK: tl.constexpr, LANE_SUMS: tl.constexpr, COMPACT: tl.constexpr):
    """The k-th largest value (with multiplicity) among the source's values >= floor and > 0, and how many
    values the source holds afterwards (COMPACT drops those below the answer's bracket, never those above it,
    so the source still holds every value >= the answer).

    Needs at least k such values; `top` is the largest. Invariant: the answer lies in [lo, hi].
    """
    ids = tl.arange(0, NUM_PIVOTS)
    lo = floor
    hi = top
    while lo < hi:
        pivots = _pivots(lo, hi, NUM_PIVOTS)
        count, mass, above, below, n, _ = _pivot_stats(src_ptr, n, floor, pivots, lo, float("inf"), temperature,
                                                       x_max, inv_z, FROM_LOGITS, NUM_PIVOTS, BLOCK, LANE_SUMS,
                                                       COMPACT)
        # Pivots 0..last hold >= k values at or above them: the answer is >= the value just above `last`
        # and below the next pivot.
        last = tl.max(tl.where(count >= k, ids, -1), axis=0)
        new_lo = tl.where(last >= 0, tl.sum(tl.where(ids == last, above, 0.0), axis=0), lo)
        hi = tl.where(last + 1 < NUM_PIVOTS, tl.sum(tl.where(ids == last + 1, below, 0.0), axis=0), hi)
        lo = new_lo
    return lo, n


@triton.jit
def mass_at_least(src_ptr, n, floor, temperature, x_max, inv_z, FROM_LOGITS: tl.constexpr, BLOCK: tl.constexpr,
                  LANE_SUMS: tl.constexpr):
    """Sum of the source's values >= floor and > 0 (LANE_SUMS: per lane across tiles, then once)."""
    if LANE_SUMS:  # noqa: SIM108 -- constexpr `if` statements, which every Triton version resolves at compile time
        mass = tl.zeros([BLOCK], tl.float32)
    else:
        mass = tl.zeros((), tl.float32)
    for start in range(0, n, BLOCK):
        p = _values(src_ptr, start + tl.arange(0, BLOCK), n, temperature, x_max, inv_z, FROM_LOGITS)
        tile = tl.where((p >= floor) & (p > 0), p, 0.0)
        if not LANE_SUMS:
            tile = tl.sum(tile, axis=0)
        mass += tile
    if LANE_SUMS:
        mass = tl.sum(mass, axis=0)
    return mass


@triton.jit
def top_p_threshold(src_ptr, n, floor, top, limit, mass_above, temperature, x_max, inv_z,
                    FROM_LOGITS: tl.constexpr, NUM_PIVOTS: tl.constexpr, BLOCK: tl.constexpr,
                    LANE_SUMS: tl.constexpr, COMPACT: tl.constexpr):
    """The smallest value v (>= floor, > 0) whose strictly larger values weigh < limit; `top` when none does.
    `mass_above` is the mass of candidates larger than every value of the source (kept whatever v is).

    For a pivot, with b = the largest value below it, the mass strictly above b is the mass at or above the
    pivot: when that is < limit the answer is <= b, otherwise every value <= b fails and the answer is >= the
    smallest value at or above the pivot. COMPACT keeps only the bracket [lo, hi] in the buffer after each pass,
    adding the mass of the values it drops above hi to `mass_above`.
    """
    ids = tl.arange(0, NUM_PIVOTS)
    mass_above = mass_above + tl.zeros((), tl.float32)  # a loop-carried tensor even when given as a constant
    lo = floor
    hi = top
    while lo < hi:
        pivots = _pivots(lo, hi, NUM_PIVOTS)
        count, mass, above, below, n, dropped = _pivot_stats(src_ptr, n, floor, pivots, lo, hi, temperature, x_max,
                                                             inv_z, FROM_LOGITS, NUM_PIVOTS, BLOCK, LANE_SUMS,
                                                             COMPACT)
        first = tl.min(tl.where((below >= 0) & (mass_above + mass < limit), ids, NUM_PIVOTS), axis=0)
        mass_above += dropped
        new_lo = tl.where(first > 0, tl.sum(tl.where(ids == first - 1, above, 0.0), axis=0), lo)
        hi = tl.where(first < NUM_PIVOTS, tl.sum(tl.where(ids == first, below, 0.0), axis=0), hi)
        lo = new_lo
    return lo


@triton.jit
def filter_threshold(src_ptr, n, floor, count, top, top_k, has_k, top_p, has_p, mass_all, mass_above, temperature,
                     x_max, inv_z, FROM_LOGITS: tl.constexpr, NUM_PIVOTS: tl.constexpr, BLOCK: tl.constexpr,
                     LANE_SUMS: tl.constexpr, COMPACT: tl.constexpr):
    """The probability a token needs to pass top-k then top-p.

    The source's `count` values >= floor (and > 0) must hold every value that can matter: all survivors of
    min-p (`mass_all` is then their mass), or at least top_k of the largest, or (without top-k) the values
    around the top-p cut, the larger candidates weighing `mass_above` (0 with top-k) and `top` the largest value.
    """
    threshold = floor
    if has_k & (count >= top_k):
        threshold, n = kth_largest(src_ptr, n, top_k, floor, top, temperature, x_max, inv_z, FROM_LOGITS,
                                   NUM_PIVOTS, BLOCK, LANE_SUMS, COMPACT)
    if has_p:
        mass = mass_all
        if has_k:
            mass = mass_at_least(src_ptr, n, threshold, temperature, x_max, inv_z, FROM_LOGITS, BLOCK, LANE_SUMS)
        threshold = top_p_threshold(src_ptr, n, threshold, top, top_p * mass, mass_above, temperature, x_max,
                                    inv_z, FROM_LOGITS, NUM_PIVOTS, BLOCK, LANE_SUMS, COMPACT)
    return threshold
