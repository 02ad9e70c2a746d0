"""Plain-torch sampling and penalties: the exact definitions the Triton sampler is tested against.

Definitions (per row; `p` = softmax(logits / temperature)):
- temperature below GREEDY_BELOW (1e-5; 0 included): greedy, the first index of the largest logit: the limit
  of the distribution as the temperature goes to 0, which float32 cannot compute (logits / temperature
  overflows near the smallest floats). vLLM draws the same line.
- min-p keeps tokens with p >= min_p * max(p).
- top-k keeps tokens with p >= the k-th largest p (ties at the boundary are kept).
- top-p keeps token i when the mass of the tokens strictly more likely than i is < top_p times the
  mass left by the filters before it (so the most likely token is always kept, and ties are kept together).
- The filters apply in that order; the draw is from the kept tokens, renormalised.
- The draw depends only on (seed, position): one uniform number per row, from a counter-based hash of the
  two, inverts the kept tokens' cumulative distribution (float32 prefix sums). So a seeded request draws
  the same tokens whatever else is in the batch.

This file is also the CPU's sampler, so three steps take a path torch runs fast on a CPU and give the same answer
as the plain one (measured over 256 rows of 4096 tokens, one thread of this 2-core machine): the greedy index
comes from `amax` in blocks of 64 tokens (0.2 ms; `argmax` took 0.9 ms, being scalar code there), and the draw
inverts the distribution in two levels, the sums of the blocks of 64 and then the prefix sums within the block
drawn (a prefix sum over the whole row, `cumsum`, took 1.0 ms of a 2.4 ms draw). Top-p sorts only as many of
a row's likeliest tokens as decide it (`_top_p_cut`): on the default model's distributions at temperature 0.7
with top-p 0.9, 5 ms against 57 ms for sorting whole rows; on flat distributions, where most rows need the whole
sort, about 30% slower than sorting at once.
"""

from __future__ import annotations

import torch

GREEDY_BELOW = 1e-5         # the Triton samplers compare with the same literal
_BLOCK = 64                 # tokens per block of the two-level searches


def is_greedy(temperature: float) -> bool:
    """Whether a sampler draws greedily at this temperature: the float32 comparison the samplers make."""
    return bool(torch.tensor(temperature, dtype=torch.float32) < GREEDY_BELOW)


def _int64(constant: int) -> int:
    """A 64-bit constant as the signed value an int64 tensor holds."""
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_GOLDEN, _MIX1, _MIX2 = (_int64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (products wrap modulo 2**64, as in C)."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def uniform_from(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Uniform float64 numbers in [0, 1), each depending only on its (seed, position) pair."""
    bits = _splitmix64(_splitmix64(seeds.long()) ^ positions.long())
    return _shr(bits, 11).double() * 2.0 ** -53


def _blocks(x: torch.Tensor, pad: float) -> torch.Tensor:
    """x [B, V] as [B, V / _BLOCK, _BLOCK], padded at the end with `pad` to whole blocks."""
    batch, vocab = x.shape
    short = -vocab % _BLOCK
    if short:
        x = torch.cat([x, x.new_full((batch, short), pad)], dim=-1)
    return x.view(batch, -1, _BLOCK)


def first_argmax(x: torch.Tensor) -> torch.Tensor:
    """The index of the first largest value of each row of x [B, V], as `x.argmax(dim=-1)` gives it: the block of
    64 that first holds the row's maximum, then the place in it."""
    top = x.amax(dim=-1, keepdim=True)
    if bool(top.isnan().any()):                  # argmax ranks NaN highest; no comparison finds it
        return x.argmax(dim=-1)
    blocks = _blocks(x, float("-inf"))
    rows = torch.arange(x.shape[0], device=x.device)
    block = (blocks.amax(dim=-1) == top).to(torch.uint8).argmax(dim=-1)
    offset = (blocks[rows, block] == top).to(torch.uint8).argmax(dim=-1)
    return block * _BLOCK + offset


def invert_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """For each row of probs [B, V] (not negative, not all zero; not normalised), the token whose cumulative
    mass first exceeds uniforms [B] (in [0, 1)) times the row's mass: the block of 64 tokens whose prefix sum of
    block sums first exceeds that target, then the first token in it whose prefix sum from the blocks before
    exceeds it. A float prefix sum of non-negative terms never decreases, so that token has mass; where rounding
    leaves the target at or above a level's last sum, the last block, or token, with mass is taken."""
    blocks = _blocks(probs, 0.0)
    rows = torch.arange(probs.shape[0], device=probs.device)
    mass = blocks.sum(dim=-1)
    ends = mass.cumsum(dim=-1)
    target = (uniforms * ends[:, -1]).float()[:, None]
    last = mass.shape[1] - 1 - (mass > 0).flip(-1).to(torch.uint8).argmax(dim=-1)
    block = torch.minimum(torch.searchsorted(ends, target, right=True).squeeze(1), last)
    before = torch.where(block > 0, ends[rows, (block - 1).clamp(min=0)], 0.0)
    chosen = blocks[rows, block]
    within = chosen.cumsum(dim=-1) + before[:, None]
    place = torch.searchsorted(within, target, right=True).squeeze(1)
    last_place = _BLOCK - 1 - (chosen > 0).flip(-1).to(torch.uint8).argmax(dim=-1)
    return block * _BLOCK + torch.minimum(place, last_place)


def _top_p_cut(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The probability of the least likely token that top-p keeps in each row of probs [B, V] (rows whose top_p
    is below 1): [B, 1]. A row's likeliest tokens decide it when their mass reaches the limit, since every other
    token has at least that mass above it: the 16 likeliest first, then 256, then the whole row, each time for the
    rows not yet decided (torch's CPU sort of 256 rows of 4096 took 52 ms here, `topk(16)` 2 ms)."""
    limits = top_p * probs.sum(dim=-1)
    cut = torch.zeros(probs.shape[0], 1, dtype=probs.dtype, device=probs.device)
    rows = (top_p < 1).nonzero().squeeze(1)
    for width in (min(16, probs.shape[-1]), min(256, probs.shape[-1]), probs.shape[-1]):
        ordered = probs[rows].topk(width, dim=-1).values
        mass = ordered.cumsum(dim=-1)
        above = torch.cat([torch.zeros_like(mass[:, :1]), mass[:, :-1]], dim=-1)     # the mass of likelier tokens
        limit = limits[rows][:, None]
        decided = (mass[:, -1:] >= limit).squeeze(1) | (width == probs.shape[-1])
        last = ((above < limit).sum(dim=-1, keepdim=True) - 1).clamp(min=0)
        cut[rows[decided]] = ordered.gather(1, last)[decided]
        rows = rows[~decided]
        if rows.numel() == 0:
            break
    return cut


def filter_probs(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 min_p: torch.Tensor) -> torch.Tensor:
    """Zero the probabilities that min-p, top-k and top-p remove (rows not renormalised). probs [B, V]."""
    vocab = probs.shape[-1]
    if bool((min_p > 0).any()):
        floor = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
        probs = probs.masked_fill(probs < floor, 0.0)
    k = torch.where((top_k <= 0) | (top_k >= vocab), vocab, top_k).long()
    if bool((k < vocab).any()):
        kth = probs.topk(int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        probs = probs.masked_fill(probs < kth, 0.0)
    if bool((top_p < 1).any()):
        probs = probs.masked_fill(probs < _top_p_cut(probs, top_p), 0.0)
    return probs


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of `logits` [B, V]; see the module docstring for the exact semantics."""
    random_rows = temperature >= GREEDY_BELOW
    if not bool(random_rows.any()):
        return first_argmax(logits)
    temp = torch.where(random_rows, temperature, 1.0).float()
    probs = torch.softmax(logits.float() / temp[:, None], dim=-1)
    probs = filter_probs(probs, top_k, top_p, min_p)
    drawn = invert_cdf(probs, uniform_from(seeds, positions))
    if bool(random_rows.all()):
        return drawn
    return torch.where(random_rows, drawn, first_argmax(logits))


def apply_penalties(logits: torch.Tensor, prompt_tokens: torch.Tensor, output_tokens: torch.Tensor,
                    presence: torch.Tensor, frequency: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """Penalise repeated tokens in `logits` [B, V] in place, the way vLLM and OpenAI define it.

    `prompt_tokens` [B, Lp] and `output_tokens` [B, Lo] are padded with -1. Repetition (CTRL-style) divides
    positive logits and multiplies negative ones for tokens seen in the prompt or the output; presence
    subtracts a constant and frequency a multiple of the count, for tokens in the output only.
    """
    batch, vocab = logits.shape
    counts = torch.zeros(batch, vocab + 1, dtype=logits.dtype, device=logits.device)
    out_ids = torch.where(output_tokens < 0, vocab, output_tokens).long()
    counts.scatter_add_(1, out_ids, torch.ones_like(out_ids, dtype=logits.dtype))
    counts = counts[:, :vocab]
    seen = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, torch.where(prompt_tokens < 0, vocab, prompt_tokens).long(), True)
    seen = seen[:, :vocab] | (counts > 0)
    rep = repetition[:, None].to(logits.dtype)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(seen, penalised, logits))
    logits -= frequency[:, None].to(logits.dtype) * counts + presence[:, None].to(logits.dtype) * (counts > 0)
    return logits
