"""From logits to tokens: min_tokens, allowed_token_ids, bad_words, logit_bias, penalties, structured outputs'
token masks and a spent thinking budget's `</think>`, then the engine's `sample` kernel, plus logprobs. Structured
outputs' masks are filled on the host first, before anything waits for the logits: on a GPU the forward is still
running then. (Not on a thread beside it: on the CPU, a second thread running torch ops kept its own OpenMP workers
spinning, and every later step of the engine took 30% longer.) A row that its bans leave no token draws EOS.

Logprobs are the log-softmax of the raw logits, before any of the processing (vLLM's default), so they
describe the model rather than the sampling settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine import structured_output
from engine.sequence import Sequence
from engine.transfer import tensor_to_device, to_device
from llm_kernels import KernelSet


@dataclass(slots=True)
class TopLogprobs:
    """Per row: the chosen token's logprob and rank, and the k most likely tokens (k may differ per row)."""

    chosen_logprob: list[float]
    chosen_rank: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


def top_logprobs(logprobs: torch.Tensor, chosen: torch.Tensor, ks: list[int]) -> TopLogprobs:
    """Logprob and rank of `chosen` [N] in `logprobs` [N, V], and each row's top-`ks[i]` tokens."""
    chosen_lp = logprobs.gather(1, chosen[:, None]).squeeze(1)
    rank = (logprobs > chosen_lp[:, None]).sum(dim=-1) + 1
    k_max = max(ks)
    top = logprobs.topk(k_max, dim=-1) if k_max else None
    ids = top.indices.tolist() if top is not None else [[] for _ in ks]
    vals = top.values.tolist() if top is not None else [[] for _ in ks]
    return TopLogprobs(chosen_lp.tolist(), rank.tolist(), [row[:k] for row, k in zip(ids, ks)],
                       [row[:k] for row, k in zip(vals, ks)])


@dataclass(slots=True)
class SamplerOutput:
    """The tokens drawn, one per row, and their logprobs for the rows that asked (else None)."""

    token_ids: list[int]
    logprobs: TopLogprobs | None
    logprob_rows: list[int]        # which rows `logprobs` describes, in order


@dataclass(slots=True)
class SamplingRows:
    """The `sample` kernel's parameters, one entry per row, on the host (top_k already within 0..vocab)."""

    temperature: list[float]
    top_p: list[float]
    min_p: list[float]
    top_k: list[int]
    seeds: list[int]
    drawn_at: list[int]        # the position each row's token is drawn for (the draw depends on it and the seed)


_MAX_PENALISED = 1e30     # the largest logit a repetition penalty may make: / 1e-5 (greedy below) stays finite


class Sampler:
    """Turns the logits of the sequences that reached their next token into that token."""

    def __init__(self, eos_token_ids: list[int], kernels: KernelSet, vocab_size: int,
                 device: torch.device) -> None:
        self.eos_token_ids = eos_token_ids
        self.kernels = kernels
        self.vocab_size = vocab_size
        self._device = device
        self._batch = None       # xgrammar's batched filler, made with the first structured output's masks

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence], offsets: list[int] | None = None) -> SamplerOutput:
        """logits [B, V] float32, one row per entry of `seqs`. Row i draws the token at position
        seqs[i].num_tokens + offsets[i] (offsets: 0 for all, unless the rows verify draft tokens)."""
        device = logits.device
        mask_rows = [i for i, seq in enumerate(seqs) if seq.matcher is not None]
        bitmask = self._fill_masks([seqs[i].matcher for i in mask_rows]) if mask_rows else None
        logprob_rows = [i for i, seq in enumerate(seqs) if seq.params.logprobs is not None]
        rows = to_device(logprob_rows, torch.int64, device) if logprob_rows else None
        raw = torch.log_softmax(logits[rows], dim=-1) if rows is not None else None
        banning = self._suppress_stops(logits, seqs) + self._restrict(logits, seqs)
        self._add_bias(logits, seqs)
        self._penalise(logits, seqs)
        if bitmask is not None:
            self.kernels.apply_token_bitmask(logits, tensor_to_device(bitmask, device),
                                             to_device(mask_rows, torch.int64, device))
        if banning or mask_rows:
            self._end_dead_rows(logits, banning + mask_rows)
        self._force(logits, seqs)
        kernel = self.kernel_rows(seqs, offsets)
        # Parameter-major: each parameter is a contiguous row, which the kernels read without a copy.
        temperature, top_p, min_p = to_device([kernel.temperature, kernel.top_p, kernel.min_p], torch.float32,
                                              device).unbind()
        seeds, positions = to_device([kernel.seeds, kernel.drawn_at], torch.int64, device).unbind()
        top_k = to_device(kernel.top_k, torch.int32, device)
        drawn = self.kernels.sample(logits, temperature, top_k, top_p, min_p, seeds, positions)
        # Masks that leave a row nothing (a grammar and allowed_token_ids that share no token) make its
        # probabilities NaN, whose draw may land past the vocabulary: a valid id keeps the engine running.
        drawn = drawn.clamp_(max=self.vocab_size - 1)
        top = None
        if raw is not None:
            ks = [seqs[i].params.logprobs for i in logprob_rows]
            top = top_logprobs(raw, drawn[rows], ks)
        return SamplerOutput(drawn.tolist(), top, logprob_rows)

    def kernel_rows(self, seqs: list[Sequence], offsets: list[int] | None = None) -> SamplingRows:
        """The `sample` kernel's parameters for rows of `seqs` (and `offsets`, as in `__call__`), as host lists."""
        params = [seq.params for seq in seqs]
        drawn_at = ([len(seq.token_ids) for seq in seqs] if offsets is None
                    else [len(seq.token_ids) + j for seq, j in zip(seqs, offsets)])
        top_ks = [p.top_k for p in params]
        if min(top_ks, default=0) < 0 or max(top_ks, default=0) > self.vocab_size:
            top_ks = [min(max(k, 0), self.vocab_size) for k in top_ks]    # k >= vocab keeps all, and fits int32
        return SamplingRows([p.temperature for p in params], [p.top_p for p in params], [p.min_p for p in params],
                            top_ks, [seq.seed for seq in seqs], drawn_at)

    @staticmethod
    def kernel_only(seqs: list[Sequence]) -> bool:
        """Whether the `sample` kernel alone draws these sequences' tokens: no logprobs, token mask, allowed or
        bad tokens, logit bias, penalty or min_tokens to apply first (a CUDA graph can then draw them,
        engine/cuda_graphs.py)."""
        for seq in seqs:
            params = seq.params
            if (params.logprobs is not None or seq.matcher is not None or params.logit_bias or params.has_penalties
                    or seq.num_output_tokens < params.min_tokens or params.allowed_token_ids is not None
                    or seq.request.bad_words_token_ids
                    or (seq.thinking is not None and seq.thinking.forced() is not None)):
                return False
        return True

    def _fill_masks(self, states: list[structured_output.GrammarState]) -> torch.Tensor:
        """The packed bitmask of the tokens each grammar allows next, on the host."""
        if self._batch is None:
            self._batch = structured_output.batch_matcher(self._device)
        return structured_output.fill_bitmask(states, self.vocab_size, self._batch)

    def _suppress_stops(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """Before min_tokens are out, EOS (unless ignored) and the stop token ids cannot be drawn. Returns the rows
        it banned tokens of."""
        rows = []
        for i, seq in enumerate(seqs):
            params = seq.params
            if params.min_tokens and seq.num_output_tokens < params.min_tokens:
                banned = list(params.stop_token_ids) + ([] if params.ignore_eos else self.eos_token_ids)
                if banned:
                    logits[i, to_device(banned, torch.int64, logits.device)] = float("-inf")
                    rows.append(i)
        return rows

    def _restrict(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """allowed_token_ids: every other token cannot be drawn. bad_words: neither can a token that would end
        one of their token sequences after the tokens generated so far. Returns the rows it banned tokens of."""
        rows = []
        for i, seq in enumerate(seqs):
            allowed = seq.params.allowed_token_ids
            if allowed is not None:
                ids = to_device(allowed, torch.int64, logits.device)
                kept = logits[i, ids]
                logits[i] = float("-inf")
                logits[i, ids] = kept
                rows.append(i)
            if seq.request.bad_words_token_ids:
                banned = completing_tokens(seq.request.bad_words_token_ids, seq.output_token_ids)
                if banned:
                    logits[i, to_device(banned, torch.int64, logits.device)] = float("-inf")
                    rows.append(i)
        return rows

    @staticmethod
    def _force(logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """A thinking budget that is spent draws `</think>` (engine/thinking.py), after every other mask."""
        for i, seq in enumerate(seqs):
            token = seq.thinking.forced() if seq.thinking is not None else None
            if token is not None:
                logits[i] = float("-inf")
                logits[i, token] = 0.0

    def _end_dead_rows(self, logits: torch.Tensor, rows: list[int]) -> None:
        """A row whose bans and masks left no token (allowed_token_ids that a grammar or a bad word's completion
        excludes, say: what add_request can foresee it refuses) draws EOS, which ends it, instead of a token it
        banned. On the device, without waiting for it."""
        index = to_device(sorted(set(rows)), torch.int64, logits.device)
        eos = self.eos_token_ids[0] if self.eos_token_ids else 0
        dead = torch.isneginf(logits[index].amax(dim=-1))
        logits[index, eos] = torch.where(dead, torch.zeros_like(dead, dtype=logits.dtype), logits[index, eos])

    def _add_bias(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        for i, seq in enumerate(seqs):
            bias = seq.params.logit_bias
            if bias:
                ids = to_device(list(bias), torch.int64, logits.device)
                logits[i, ids] += to_device(list(bias.values()), logits.dtype, logits.device)

    def _penalise(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        rows = [i for i, seq in enumerate(seqs) if seq.params.has_penalties]
        if not rows:
            return
        picked = [seqs[i] for i in rows]
        device = logits.device
        index = to_device(rows, torch.int64, device)
        sub = logits[index]
        repetition = to_device([seq.params.repetition_penalty for seq in picked], torch.float32, device)
        # A penalty near 0 divides a positive logit past float32's range (inf, then NaN probabilities). Dividing
        # by no less than the row's largest logit / _MAX_PENALISED keeps every logit finite, also once divided by
        # the temperature, and in order; the draw is then the exact computation's (greedy among the seen tokens
        # with positive logits, which outweigh the rest by a factor of about 1e29).
        floor = (sub.amax(dim=-1).clamp(min=0) / _MAX_PENALISED).clamp(min=torch.finfo(torch.float32).tiny)
        repetition = torch.maximum(repetition, floor)      # tiny: no subnormal divisor a GPU may flush to 0
        self.kernels.apply_penalties(
            sub,
            _padded([seq.request.prompt_token_ids for seq in picked], device),
            _padded([seq.output_token_ids for seq in picked], device),
            to_device([seq.params.presence_penalty for seq in picked], torch.float32, device),
            to_device([seq.params.frequency_penalty for seq in picked], torch.float32, device),
            repetition,
        )
        logits[index] = sub


def completing_tokens(sequences: list[list[int]], generated: list[int]) -> list[int]:
    """The last tokens of those `sequences` whose other tokens are the end of `generated` (vLLM's bad_words
    rule: a one-token sequence is always banned, a longer one only right after its beginning)."""
    banned = []
    for ids in sequences:
        head = len(ids) - 1
        if head <= len(generated) and (head == 0 or generated[-head:] == ids[:-1]):
            banned.append(ids[-1])
    return banned


def _padded(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    return to_device([r + [-1] * (width - len(r)) for r in rows], torch.int64, device)

