"""Plain-torch paged attention and KV-cache writes: the test oracle of the Triton kernels and the CPU path.

Layout (shared with the Triton kernels, see `llm_kernels.api`): each layer's cache is
`[num_blocks, block_size, num_kv_heads, head_dim]`; token `t` of a sequence lives in slot
`block_tables[s, t // block_size] * block_size + t % block_size`.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

# Decodes are gathered into dense tensors a chunk of sequences at a time, sorted by length so that a chunk
# pads little; a chunk holds at most this many sequences and this many gathered elements of k (or v).
_DECODE_CHUNK = 32
_MAX_GATHERED_ELEMENTS = 1 << 24


class _Scratch(threading.local):
    """Per-thread buffers reused from call to call: on the CPU a freshly allocated large tensor costs a page
    fault per page, every call, which is several times the cost of the copy that fills it."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A 1-D tensor of `numel` elements whose contents are undefined."""
        key = (name, dtype, device)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            with torch.inference_mode(False):      # a normal tensor can be written in and out of inference mode
                buffer = self.buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel]


_scratch = _Scratch()


def _slot_rows(cache: torch.Tensor, heads_too: bool = False) -> torch.Tensor | None:
    """The cache as one row per slot, [num_blocks * block_size, num_kv_heads, head_dim] (or [..., num_kv_heads *
    head_dim] with `heads_too`), without a copy; None when a strided cache's dimensions do not merge."""
    _, _, heads, head_dim = cache.shape
    try:
        return cache.view(-1, heads * head_dim) if heads_too else cache.view(-1, heads, head_dim)
    except RuntimeError:                # "view size is not compatible with input tensor's size and stride"
        return None


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write `key`/`value` [T, num_kv_heads, head_dim] into the caches at `slot_mapping` [T] (negative: skip).
    The caches may be strided views (e.g. the halves of one [num_blocks, 2, ...] tensor)."""
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        key, value, slots = key[keep], value[keep], slots[keep]
    for cache, new in ((k_cache, key), (v_cache, value)):
        rows = _slot_rows(cache)
        if rows is not None:
            rows.index_copy_(0, slots, new.to(cache.dtype))
        else:
            block_size = cache.shape[1]
            cache[slots // block_size, slots % block_size] = new.to(cache.dtype)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence's cache, as a dense [length, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    return cache[block_table[:num_blocks].long()].flatten(0, 1)[:length]


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int = 0) -> torch.Tensor:
    """Causal attention of q [Lq, H, D] over k/v [L, Hkv, D], q being the last Lq of the L positions (and each
    attending only its last `window` positions, itself included, when window > 0)."""
    q_len = q.shape[0]
    length = k.shape[0]
    # [1, H, L, D]: with a batch dimension (and GQA left to SDPA) torch's CPU flash-attention kernel takes it,
    # 1.5x its math path's speed on this project's machine; three dimensions would run the math path.
    qh = q.float().transpose(0, 1)[None]
    kh, vh = k.float().transpose(0, 1)[None], v.float().transpose(0, 1)[None]
    mask = torch.ones(q_len, length, dtype=torch.bool, device=q.device).tril(diagonal=length - q_len)
    if window > 0:                       # row i is position length - q_len + i: keys after it minus the window
        mask = mask.triu(diagonal=length - q_len - window + 1)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)                                    # [Lq, H, D]


def _gather_slots(cache: torch.Tensor, slots: torch.Tensor, name: str) -> torch.Tensor:
    """The cache rows at `slots` [S, K], as [S, K, num_kv_heads, head_dim] (in a scratch buffer unless the cache
    is a strided view whose slots are not rows)."""
    rows = _slot_rows(cache, heads_too=True)
    if rows is None:
        return cache[slots // cache.shape[1], slots % cache.shape[1]]
    out = _scratch.get(name, slots.numel() * rows.shape[1], cache.dtype, cache.device).view(slots.numel(), -1)
    torch.index_select(rows, 0, slots.flatten(), out=out)
    return out.view(*slots.shape, cache.shape[2], cache.shape[3])


def _attend_decodes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor, scale: float, window: int = 0) -> torch.Tensor:
    """One query token per sequence (q [S, H, D]), batched: gather each sequence's keys and mask the padding."""
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    positions = torch.arange(int(seq_lens.max()), device=q.device)[None, :]
    valid = positions < seq_lens[:, None]                            # [S, K]
    if window > 0:
        valid &= positions >= seq_lens[:, None] - window
    # Padding reads each sequence's first token (written, so finite: 0 * NaN cannot leak), then is masked.
    positions = positions * valid
    slots = block_tables.long().gather(1, positions // block_size) * block_size + positions % block_size
    k = _gather_slots(k_cache, slots, "k")                           # [S, K, Hkv, D]
    v = _gather_slots(v_cache, slots, "v")
    # The group's query heads play the part of SDPA's query length, so GQA needs no copy of k and v.
    qg = q.float().view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(qg, k.float().transpose(1, 2), v.float().transpose(1, 2),
                                         attn_mask=valid[:, None, None, :], scale=scale)
    return out.reshape(num_seqs, num_heads, head_dim)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int,
                    scale: float, sliding_window: int = 0) -> torch.Tensor:
    """Causal attention of packed new tokens over their sequences' paged caches (contract in `llm_kernels.api`)."""
    window = sliding_window
    if max_seqlen_q == 1 and q.shape[0] == seq_lens.shape[0] <= _DECODE_CHUNK:   # a small decode batch, as it is
        return _attend_decodes(q, k_cache, v_cache, block_tables, seq_lens, scale, window).to(q.dtype)
    out = torch.empty_like(q)
    starts = cu_seqlens_q[:-1].tolist()
    ends = cu_seqlens_q[1:].tolist()
    lens = seq_lens.tolist()
    decodes = sorted((s for s in range(len(lens)) if ends[s] - starts[s] == 1), key=lens.__getitem__)
    per_token = k_cache.shape[2] * k_cache.shape[3]
    while decodes:
        count = 1
        while (count < min(len(decodes), _DECODE_CHUNK)
               and (count + 1) * lens[decodes[count]] * per_token <= _MAX_GATHERED_ELEMENTS):
            count += 1
        chunk, decodes = decodes[:count], decodes[count:]
        idx = torch.tensor(chunk, device=q.device)
        rows = cu_seqlens_q[idx].long()
        out[rows] = _attend_decodes(q[rows], k_cache, v_cache, block_tables[idx], seq_lens[idx], scale,
                                    window).to(q.dtype)
    for s in range(len(lens)):
        if ends[s] - starts[s] > 1:
            k = gather_kv(k_cache, block_tables[s], lens[s])
            v = gather_kv(v_cache, block_tables[s], lens[s])
            out[starts[s]:ends[s]] = _attend_one(q[starts[s]:ends[s]], k, v, scale, window).to(q.dtype)
    return out
