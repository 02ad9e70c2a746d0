"""Sampling on Triton with several programs per row: temperature, min-p / top-k / top-p without sorting, seeded
Gumbel-max draws (contract and exact filter semantics: `llm_kernels.api.sample`, `llm_kernels.reference.sampling`).
The draw is argmax(logits / T + Gumbel noise) over the kept tokens, which samples exactly from their renormalised
softmax; the noise is Philox keyed on (seed, position) and the token id, so a seeded row draws the same token
whatever the batch and whatever the tiling. One program per row (benchmarks/one_program_sampler.py, kept for
comparison) leaves the GPU idle at small batches and waits on its own latency.

Each row's vocabulary is cut into `splits` spans of whole tiles; kernels over (row, span) do the passes over the
logits, and per-row kernels merge their small results. Six launches:
1. softmax:  per span, the greedy argmax and an online softmax (max, normaliser);
2. levels:   merges (1) into the row's max and 1 / normaliser (span 0 records them, so every later kernel uses
             the same two floats and so the same probabilities); per span, the candidates' count and mass at
             NUM_LEVELS cut-offs LEVEL_STEP nats apart (min-p survivors only);
3. gather:   every span merges (2) identically and picks the band of probabilities that must hold the cut:
             [the shallowest cut-off with >= top_k candidates or >= top_p of the mass, the deepest cut-off
             whose mass is surely < top_p) for top-p alone (what lies above is kept, its mass carried along),
             or everything from the first cut-off with top-k; each span writes its band members to the row's
             buffer at its offset (the counts of the spans before it), so the buffer is dense;
4. threshold: per row, the sort-free search of `topk_topp` on the band, compacting the buffer as it narrows;
5. draw:     per span, Gumbel-max over the kept tokens;
6. finish:   per row, the best of the spans (first token on ties), the kept count, greedy rows' argmax.
The default Triton sampler (`llm_kernels.triton_ops.sample`) since the H100 sweep in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_kernels.triton_ops import _utils
from llm_kernels.triton_ops.sampling_passes import gather, gumbel_argmax, level_stats, softmax_stats
from llm_kernels.triton_ops.topk_topp import filter_threshold

NUM_LEVELS = 32
NUM_PIVOTS = 16             # pivots per pass of the threshold search (`topk_topp`)
PHILOX_ROUNDS = 10
# A top-p cut-off must hold this much more than top_p of the mass, so that summation order cannot matter.
MASS_MARGIN = 1.0001
LEVEL_STEP = 0.5            # nats between cut-offs: 0.5 to 16 below the most likely token
PROGRAMS_PER_SM = 8         # (row, span) programs to aim for per multiprocessor (H100 sweep: 8 beat 4)
MAX_SPLITS = 128            # spans per row at most: each gather program holds [spans, NUM_LEVELS] counts


@triton.jit
def _span(vocab, chunk):
    """(span index, spans per row, first token, end) of this program's span."""
    split = tl.program_id(1)
    start = split * chunk
    return split, tl.num_programs(1), start, tl.minimum(start + chunk, vocab)


@triton.jit
def _temperature(temperature_ptr, row):
    """(temperature to divide by, greedy?) of the row: greedy below 1e-5 (reference.sampling.GREEDY_BELOW)."""
    temperature = tl.load(temperature_ptr + row)
    greedy = temperature < 1e-5
    return tl.where(greedy, 1.0, temperature), greedy


@triton.jit
def _filters(top_k_ptr, top_p_ptr, min_p_ptr, row, vocab, inv_z):
    """top_k, has top-k, top_p, has top-p, and the min-p floor of the row."""
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    return top_k, (top_k > 0) & (top_k < vocab), top_p, top_p < 1, tl.where(min_p > 0, min_p * inv_z, 0.0)


@triton.jit
def _record(row_f_ptr, row, NUM_LEVELS: tl.constexpr):
    """The row's record, written by the levels kernel: its max of logits / T, 1 / normaliser, then the levels."""
    return row_f_ptr + row * (2 + NUM_LEVELS)


@triton.jit
def _softmax_record(row_f_ptr, row, NUM_LEVELS: tl.constexpr):
    """(max of logits / T, 1 / normaliser) of the row, as the levels kernel recorded them."""
    record = _record(row_f_ptr, row, NUM_LEVELS)
    return tl.load(record), tl.load(record + 1)


@triton.jit
def _row_softmax(part_f_ptr, part_i_ptr, row, splits, vocab, SPLITS: tl.constexpr):
    """Merges the spans' (largest logit, its index, max, normaliser) into the row's."""
    ids = tl.arange(0, SPLITS)
    valid = ids < splits
    slot = row * splits + ids
    best = tl.load(part_f_ptr + slot * 3, mask=valid, other=float("-inf"))
    index = tl.load(part_i_ptr + slot, mask=valid, other=vocab)
    maxes = tl.load(part_f_ptr + slot * 3 + 1, mask=valid, other=float("-inf"))
    sums = tl.load(part_f_ptr + slot * 3 + 2, mask=valid, other=0.0)
    best_index = tl.min(tl.where(best == tl.max(best, axis=0), index, vocab), axis=0)
    x_max = tl.max(maxes, axis=0)
    shift = tl.where(x_max == float("-inf"), 0.0, x_max)
    return best_index, x_max, tl.sum(sums * tl.exp(maxes - shift), axis=0)


@triton.jit
def _softmax_kernel(logits_ptr, stride_row, temperature_ptr, part_f_ptr, part_i_ptr, vocab, chunk,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0)
    split, splits, start, end = _span(vocab, chunk)
    temperature, _ = _temperature(temperature_ptr, row)
    best_logit, best_index, x_max, z = softmax_stats(logits_ptr + row.to(tl.int64) * stride_row, start, end,
                                                     temperature, BLOCK, False)
    slot = row * splits + split
    tl.store(part_f_ptr + slot * 3, best_logit)
    tl.store(part_f_ptr + slot * 3 + 1, x_max)
    tl.store(part_f_ptr + slot * 3 + 2, z)
    tl.store(part_i_ptr + slot, best_index)


@triton.jit
def _levels_kernel(logits_ptr, stride_row, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, part_f_ptr, part_i_ptr,
                   row_f_ptr, level_count_ptr, level_mass_ptr, vocab, chunk, SPLITS: tl.constexpr,
                   NUM_LEVELS: tl.constexpr, LEVEL_STEP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    split, splits, start, end = _span(vocab, chunk)
    temperature, greedy = _temperature(temperature_ptr, row)
    if greedy:
        return
    _, x_max, z = _row_softmax(part_f_ptr, part_i_ptr, row, splits, vocab, SPLITS)
    inv_z = tl.math.div_rn(1.0, z)    # IEEE, as every division of the samplers (see topk_topp.scaled)
    level_ids = tl.arange(0, NUM_LEVELS)
    levels = tl.exp(-LEVEL_STEP * (level_ids + 1).to(tl.float32)) * inv_z
    record = _record(row_f_ptr, row, NUM_LEVELS)
    if split == 0:
        tl.store(record, x_max)
        tl.store(record + 1, inv_z)
        tl.store(record + 2 + level_ids, levels)
    _, has_k, _, has_p, floor = _filters(top_k_ptr, top_p_ptr, min_p_ptr, row, vocab, inv_z)
    if has_k | has_p:
        count_all, mass_all, level_count, level_mass = level_stats(
            logits_ptr + row.to(tl.int64) * stride_row, start, end, temperature, x_max, inv_z, floor, levels,
            NUM_LEVELS, BLOCK, False)
        slot = (row * splits + split) * (NUM_LEVELS + 1)           # NUM_LEVELS levels, then the floor's
        tl.store(level_count_ptr + slot + level_ids, level_count)
        tl.store(level_mass_ptr + slot + level_ids, level_mass)
        tl.store(level_count_ptr + slot + NUM_LEVELS, count_all)
        tl.store(level_mass_ptr + slot + NUM_LEVELS, mass_all)


@triton.jit
def _gather_kernel(logits_ptr, stride_row, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, row_f_ptr,
                   level_count_ptr, level_mass_ptr, buffer_ptr, band_f_ptr, band_n_ptr, band_max_ptr, vocab, chunk,
                   SPLITS: tl.constexpr, NUM_LEVELS: tl.constexpr, MASS_MARGIN: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    split, splits, start, end = _span(vocab, chunk)
    temperature, greedy = _temperature(temperature_ptr, row)
    if greedy:
        return
    x_max, inv_z = _softmax_record(row_f_ptr, row, NUM_LEVELS)
    top_k, has_k, top_p, has_p, floor = _filters(top_k_ptr, top_p_ptr, min_p_ptr, row, vocab, inv_z)
    if has_k | has_p:
        level_ids = tl.arange(0, NUM_LEVELS)
        levels = tl.load(_record(row_f_ptr, row, NUM_LEVELS) + 2 + level_ids)
        span_ids = tl.arange(0, SPLITS)
        span_slots = (row * splits + span_ids) * (NUM_LEVELS + 1)               # each span's NUM_LEVELS + 1
        slots = span_slots[:, None] + level_ids[None, :]
        valid = span_ids < splits
        counts = tl.load(level_count_ptr + slots, mask=valid[:, None], other=0)   # [SPLITS, NUM_LEVELS]
        count_all = tl.load(level_count_ptr + span_slots + NUM_LEVELS, mask=valid, other=0)
        mass = tl.sum(tl.load(level_mass_ptr + slots, mask=valid[:, None], other=0.0), axis=0)
        mass_all = tl.sum(tl.load(level_mass_ptr + span_slots + NUM_LEVELS, mask=valid, other=0.0), axis=0)
        limit = top_p * mass_all
        enough = tl.where(has_k, tl.sum(counts, axis=0) >= top_k, mass >= limit * MASS_MARGIN)
        chosen = tl.min(tl.where(enough, level_ids, NUM_LEVELS), axis=0)
        upper_id = tl.max(tl.where(~has_k & (mass * MASS_MARGIN < limit), level_ids, -1), axis=0)
        lower = tl.where(chosen < NUM_LEVELS, tl.sum(tl.where(level_ids == chosen, levels, 0.0), axis=0), floor)
        upper = tl.where(upper_id >= 0, tl.sum(tl.where(level_ids == upper_id, levels, 0.0), axis=0), float("inf"))
        span_lower = tl.where(chosen < NUM_LEVELS, tl.sum(tl.where(level_ids[None, :] == chosen, counts, 0), axis=1),
                              count_all)
        span_upper = tl.sum(tl.where(level_ids[None, :] == upper_id, counts, 0), axis=1)
        band = span_lower - span_upper                                            # [SPLITS] band members
        offset = tl.sum(tl.where(span_ids < split, band, 0), axis=0)
        gathered, largest = gather(logits_ptr + row.to(tl.int64) * stride_row, start, end, temperature, x_max,
                                   inv_z, floor, lower, upper, buffer_ptr + row.to(tl.int64) * vocab + offset, BLOCK)
        # The levels kernel's counts placed this span's members; a mismatch would overlap the spans' writes
        # (checked in Triton's debug mode, TRITON_DEBUG=1; the tests' kept-set checks fail on it anyway).
        tl.device_assert(gathered == tl.sum(tl.where(span_ids == split, band, 0), axis=0), "band count mismatch")
        tl.store(band_max_ptr + row * splits + split, largest)
        if split == 0:
            tl.store(band_f_ptr + row * 4, lower)
            tl.store(band_f_ptr + row * 4 + 1, upper)
            tl.store(band_f_ptr + row * 4 + 2, tl.sum(tl.where(level_ids == upper_id, mass, 0.0), axis=0))
            tl.store(band_f_ptr + row * 4 + 3, mass_all)
            tl.store(band_n_ptr + row, tl.sum(band, axis=0))


@triton.jit
def _threshold_kernel(temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr, row_f_ptr, band_f_ptr, band_n_ptr,
                      band_max_ptr, buffer_ptr, threshold_ptr, vocab, splits, SPLITS: tl.constexpr,
                      NUM_LEVELS: tl.constexpr, NUM_PIVOTS: tl.constexpr, SEARCH_BLOCK: tl.constexpr):
    row = tl.program_id(0)
    _, greedy = _temperature(temperature_ptr, row)
    if greedy:
        return
    _, inv_z = _softmax_record(row_f_ptr, row, NUM_LEVELS)
    top_k, has_k, top_p, has_p, threshold = _filters(top_k_ptr, top_p_ptr, min_p_ptr, row, vocab, inv_z)
    if has_k | has_p:
        lower = tl.load(band_f_ptr + row * 4)
        mass_above = tl.load(band_f_ptr + row * 4 + 2)
        mass_all = tl.load(band_f_ptr + row * 4 + 3)
        n = tl.load(band_n_ptr + row)
        span_ids = tl.arange(0, SPLITS)
        top = tl.max(tl.load(band_max_ptr + row * splits + span_ids, mask=span_ids < splits, other=-1.0), axis=0)
        # The band is not empty for a valid row (min_p <= 1): with top-k it holds the most likely token, for top-p
        # alone the mass at its lower cut-off exceeds the mass above its upper one. The buffer holds probabilities
        # already (so: temperature 1, no shift, no scale). Never below the min-p floor, whatever the band.
        threshold = tl.maximum(threshold, filter_threshold(
            buffer_ptr + row.to(tl.int64) * vocab, n, lower, n, top, top_k, has_k, top_p, has_p, mass_all,
            mass_above, 1.0, 0.0, 1.0, False, NUM_PIVOTS, SEARCH_BLOCK, False, True))
    tl.store(threshold_ptr + row, threshold)


@triton.jit
def _draw_kernel(logits_ptr, stride_row, temperature_ptr, seed_ptr, position_ptr, row_f_ptr, threshold_ptr,
                 part_score_ptr, part_index_ptr, part_count_ptr, vocab, chunk, NUM_LEVELS: tl.constexpr,
                 PHILOX_ROUNDS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    split, splits, start, end = _span(vocab, chunk)
    temperature, greedy = _temperature(temperature_ptr, row)
    if greedy:
        return
    x_max, inv_z = _softmax_record(row_f_ptr, row, NUM_LEVELS)
    score, drawn, kept = gumbel_argmax(logits_ptr + row.to(tl.int64) * stride_row, start, end, temperature,
                                       x_max, inv_z, tl.load(threshold_ptr + row),
                                       tl.load(seed_ptr + row), tl.load(position_ptr + row), vocab, PHILOX_ROUNDS,
                                       BLOCK)
    slot = row * splits + split
    tl.store(part_score_ptr + slot, score)
    tl.store(part_index_ptr + slot, drawn)
    tl.store(part_count_ptr + slot, kept)


@triton.jit
def _finish_kernel(temperature_ptr, part_f_ptr, part_i_ptr, part_score_ptr, part_index_ptr, part_count_ptr, out_ptr,
                   count_ptr, vocab, splits, SPLITS: tl.constexpr):
    row = tl.program_id(0)
    _, greedy = _temperature(temperature_ptr, row)
    best_index, _, _ = _row_softmax(part_f_ptr, part_i_ptr, row, splits, vocab, SPLITS)
    if greedy:
        tl.store(out_ptr + row, best_index.to(tl.int64))
        tl.store(count_ptr + row, 1)
        return
    span_ids = tl.arange(0, SPLITS)
    valid = span_ids < splits
    scores = tl.load(part_score_ptr + row * splits + span_ids, mask=valid, other=float("-inf"))
    drawn = tl.load(part_index_ptr + row * splits + span_ids, mask=valid, other=vocab)
    best = tl.max(scores, axis=0)
    drawn = tl.where(best == float("-inf"), best_index, tl.min(tl.where(scores == best, drawn, vocab), axis=0))
    tl.store(out_ptr + row, drawn.to(tl.int64))
    tl.store(count_ptr + row, tl.sum(tl.load(part_count_ptr + row * splits + span_ids, mask=valid, other=0), axis=0))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of `logits` [B, V] (contract: `llm_kernels.api.sample`)."""
    return sample_with_thresholds(logits, temperature, top_k, top_p, min_p, seeds, positions)[0]


def sample_with_thresholds(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                           top_p: torch.Tensor, min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor,
                           splits: int | None = None, block: int | None = None,
                           num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sample`, plus each row's probability threshold (a token is kept when its probability is >= it and > 0;
    0 for unfiltered and greedy rows) and how many tokens it kept (1 for greedy rows), for tests and tuning
    (tests/sampling_oracle.py checks them). `splits` (spans per row; default: enough for PROGRAMS_PER_SM programs
    per multiprocessor; at most one per tile and MAX_SPLITS), `block` (tokens per tile, a power of two) and
    `num_warps` override the launch configuration."""
    batch, vocab = logits.shape
    device = logits.device
    out = torch.empty(batch, dtype=torch.int64, device=device)
    thresholds = torch.zeros(batch, dtype=torch.float32, device=device)
    counts = torch.empty(batch, dtype=torch.int32, device=device)
    if batch == 0:
        return out, thresholds, counts
    logits = _utils.last_dim_contiguous(logits)
    on_gpu = _utils.compiled_for_gpu(device)
    block = block or (1024 if on_gpu else 128)
    if splits is None:
        splits = _utils.cdiv(PROGRAMS_PER_SM * _utils.sm_count(device), batch)
    splits = max(1, min(splits, MAX_SPLITS, _utils.cdiv(vocab, block)))
    chunk = _utils.cdiv(_utils.cdiv(vocab, splits), block) * block
    splits = _utils.cdiv(vocab, chunk)
    params = [t.to(dtype).contiguous() for t, dtype in ((temperature, torch.float32), (top_k, torch.int32),
                                                        (top_p, torch.float32), (min_p, torch.float32),
                                                        (seeds, torch.int64), (positions, torch.int64))]
    temperature, top_k, top_p, min_p, seeds, positions = params
    # Workspaces, every element written before it is read: per (row, span), then per row, then the buffer.
    per_span = splits * (NUM_LEVELS + 1)
    floats = torch.empty(batch * (splits * 5 + per_span + 2 + NUM_LEVELS + 4 + vocab), dtype=torch.float32,
                         device=device)
    part_f, band_max, part_score, level_mass, row_f, band_f, buffer = floats.split(
        [batch * splits * 3, batch * splits, batch * splits, batch * per_span, batch * (2 + NUM_LEVELS), batch * 4,
         batch * vocab])
    ints = torch.empty(batch * (splits * 3 + per_span + 1), dtype=torch.int32, device=device)
    part_i, part_index, part_count, level_count, band_n = ints.split(
        [batch * splits, batch * splits, batch * splits, batch * per_span, batch])
    spans, rows = (batch, splits), (batch,)
    pow2 = _utils.next_pow2(splits)
    warps = num_warps or 4
    _softmax_kernel[spans](logits, logits.stride(0), temperature, part_f, part_i, vocab, chunk, BLOCK=block,
                           num_warps=warps)
    _levels_kernel[spans](logits, logits.stride(0), temperature, top_k, top_p, min_p, part_f, part_i, row_f,
                          level_count, level_mass, vocab, chunk, SPLITS=pow2, NUM_LEVELS=NUM_LEVELS,
                          LEVEL_STEP=LEVEL_STEP, BLOCK=min(block, 256), num_warps=warps)
    _gather_kernel[spans](logits, logits.stride(0), temperature, top_k, top_p, min_p, row_f, level_count,
                          level_mass, buffer, band_f, band_n, band_max, vocab, chunk, SPLITS=pow2,
                          NUM_LEVELS=NUM_LEVELS, MASS_MARGIN=MASS_MARGIN, BLOCK=block, num_warps=warps)
    _threshold_kernel[rows](temperature, top_k, top_p, min_p, row_f, band_f, band_n, band_max, buffer, thresholds,
                            vocab, splits, SPLITS=pow2, NUM_LEVELS=NUM_LEVELS, NUM_PIVOTS=NUM_PIVOTS,
                            SEARCH_BLOCK=256, num_warps=warps)
    _draw_kernel[spans](logits, logits.stride(0), temperature, seeds, positions, row_f, thresholds, part_score,
                        part_index, part_count, vocab, chunk, NUM_LEVELS=NUM_LEVELS, PHILOX_ROUNDS=PHILOX_ROUNDS,
                        BLOCK=block, num_warps=warps)
    _finish_kernel[rows](temperature, part_f, part_i, part_score, part_index, part_count, out, counts, vocab, splits,
                         SPLITS=pow2, num_warps=1)
    return out, thresholds, counts
