"""The draft model of `speculative_config={"method": "draft_model", "model": PATH, ...}`: a smaller checkpoint with
the target's vocabulary that guesses the next k tokens greedily.

It is a second `ModelRunner` with its own paged KV cache, with as many blocks as the target's and in the same
layout, so the target's block tables serve it unchanged: a block the prefix cache hands out holds the draft's KV
of those tokens as well as the target's, because the draft mirrors every step: `mirror` runs the draft over the
same packed tokens as the target's forward (draft tokens included), right after it. Then, before the next step,
`propose` runs k one-token forwards per drafting sequence: its last token (the one drawn after verification, not
yet in either cache) and then each guess, writing their KV ahead of the sequence (the scheduler reserves those
blocks first). Guesses that verification rejects leave stale KV behind, overwritten when those positions are
computed for real, as the target's are.

Greedy guesses keep the verification exact (engine/speculative.py): a draft is one token, not a distribution.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from engine.config import EngineConfig, ModelConfig
from engine.model_runner import ModelRunner
from engine.sequence import Sequence
from engine.step_inputs import StepInputs, padded_block_tables


def kv_share(target: ModelConfig, draft: ModelConfig) -> float:
    """The target's part of the KV memory when a draft model's cache takes the same number of blocks: the target's
    bytes per block over both models'."""

    def per_block(model: ModelConfig) -> int:
        return model.num_layers * model.num_kv_heads * model.head_dim * model.dtype.itemsize

    return per_block(target) / (per_block(target) + per_block(draft))


class DraftModel:
    """Loads the draft checkpoint beside the target's runner and drafts for its sequences."""

    def __init__(self, config: EngineConfig, model_config: ModelConfig, target: ModelRunner,
                 eos_token_ids: list[int]) -> None:
        """`model_config`: the draft checkpoint's (`config.speculative_config.model`)."""
        path = config.speculative_config.model
        if model_config.vocab_size != target.model_config.vocab_size:
            raise ValueError(f"speculative_config: the draft model's vocabulary ({model_config.vocab_size} tokens) "
                             f"is not the target's ({target.model_config.vocab_size})")
        if model_config.max_context < target.max_model_len:
            raise ValueError(f"speculative_config: the draft model has {model_config.max_context} "
                             f"positions, fewer than the context length {target.max_model_len}")
        draft_config = replace(config, model=path, kv_cache_blocks=target.num_blocks, cuda_graphs=False,
                               speculative_config=None, cpu_threads=None)
        self.runner = ModelRunner(draft_config, model_config, target.max_model_len, eos_token_ids)
        self.block_size = target.block_size

    def mirror(self, x: StepInputs) -> None:
        """Compute the draft's KV of the step the target just ran (no logits)."""
        self.runner.forward(replace(x, sample_rows=[], prompt_rows=[]))

    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[list[int]]:
        """Up to ks[i] greedy guesses for each of `seqs`, whose blocks already reach their last guess's position."""
        drafts: list[list[int]] = [[] for _ in seqs]
        last = [seq.token_ids[-1] for seq in seqs]
        active = list(range(len(seqs)))
        bs = self.block_size
        while active:
            positions = [seqs[i].num_tokens - 1 + len(drafts[i]) for i in active]
            rows = [seqs[i] for i in active]
            x = StepInputs(input_ids=[last[i] for i in active], positions=positions,
                           slots=[seq.block_table[p // bs] * bs + p % bs for seq, p in zip(rows, positions)],
                           cu_seqlens=list(range(len(active) + 1)), seq_lens=[p + 1 for p in positions],
                           block_tables=padded_block_tables(rows),
                           sample_rows=list(range(len(active))), prompt_rows=[])
            logits, _ = self.runner.forward(x)
            for i, token in zip(active, torch.argmax(logits, dim=-1).tolist()):
                drafts[i].append(token)
                last[i] = token
            active = [i for i in active if len(drafts[i]) < ks[i]]
        return drafts
