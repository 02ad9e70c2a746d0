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
  two, inverts the kept tokens' cumulative distribution (a float32 prefix sum). So a seeded request draws
  the same tokens whatever else is in the batch.
"""

from __future__ import annotations

import torch

GREEDY_BELOW = 1e-5         # the Triton samplers compare with the same literal


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


def filter_probs(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 min_p: torch.Tensor) -> torch.Tensor:
    """Zero the probabilities that min-p, top-k and top-p remove (rows not renormalised). probs [B, V]."""
    vocab = probs.shape[-1]
    if bool((min_p > 0).any()):
        floor = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    k = torch.where((top_k <= 0) | (top_k >= vocab), vocab, top_k).long()
    if bool((k < vocab).any()):
        kth = probs.topk(int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        probs = probs.masked_fill(probs < kth, 0.0)
    if bool((top_p < 1).any()):
        ordered = probs.sort(dim=-1, descending=True).values
        cumulative = ordered.cumsum(dim=-1)
        above = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)  # mass before
        limit = torch.where(top_p < 1, top_p * cumulative[:, -1], float("inf"))[:, None]
        last = ((above < limit).sum(dim=-1, keepdim=True) - 1).clamp(min=0)
        probs = probs.masked_fill(probs < ordered.gather(1, last), 0.0)
    return probs


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of `logits` [B, V]; see the module docstring for the exact semantics."""
    random_rows = temperature >= GREEDY_BELOW
    if not bool(random_rows.any()):
        return logits.argmax(dim=-1)
    temp = torch.where(random_rows, temperature, 1.0).float()
    probs = torch.softmax(logits.float() / temp[:, None], dim=-1)
    probs = filter_probs(probs, top_k, top_p, min_p)
    # A float prefix sum of non-negative terms never decreases, so the first entry above the target belongs
    # to a kept token.
    cdf = probs.cumsum(dim=-1)
    target = (uniform_from(seeds, positions) * cdf[:, -1]).float()
    drawn = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1)
    vocab = probs.shape[-1]
    if bool((drawn >= vocab).any()):       # rounding put a target at the very top: take the last kept token
        last_kept = vocab - 1 - (probs > 0).flip(-1).long().argmax(dim=-1)
        drawn = torch.minimum(drawn, last_kept)
    if bool(random_rows.all()):
        return drawn
    return torch.where(random_rows, drawn, logits.argmax(dim=-1))


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
