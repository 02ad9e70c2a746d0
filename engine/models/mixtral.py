"""Mixtral and Qwen3-MoE: the Llama and Qwen3 decoders with a mixture of experts as the feed-forward
(engine/models/moe.py) in every layer (Mixtral) or in the layers the config makes sparse (Qwen3-MoE)."""

from __future__ import annotations

from typing import Any

import torch

from engine.config import ModelConfig
from engine.models.llama import LlamaForCausalLM
from engine.models.moe import SparseMoeBlock, expert_target
from engine.models.qwen3 import Qwen3ForCausalLM
from engine.parallel_state import TensorParallel
from llm_kernels import KernelSet


def _num_experts(cfg: ModelConfig) -> int:
    return cfg.raw.get("num_local_experts") or cfg.raw["num_experts"]


class MixtralForCausalLM(LlamaForCausalLM):
    """Mixtral: top-k of the experts in every layer, renormalised."""

    def feed_forward(self, cfg: ModelConfig, layer: int, kernels: KernelSet,
                     tp: TensorParallel) -> tuple[torch.nn.Module | None, str]:
        return SparseMoeBlock(cfg.hidden_size, cfg.intermediate_size, _num_experts(cfg),
                              cfg.raw["num_experts_per_tok"], True, kernels, tp, weights_in_model_dtype=False), \
            "block_sparse_moe"

    def checkpoint_target(self, name: str) -> tuple[str, Any] | None:
        return expert_target(name)


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    """Qwen3-MoE: experts in the layers that are sparse (every decoder_sparse_step-th, but mlp_only_layers), the
    dense SwiGLU MLP in the others; the top-k weights renormalised when norm_topk_prob."""

    def feed_forward(self, cfg: ModelConfig, layer: int, kernels: KernelSet,
                     tp: TensorParallel) -> tuple[torch.nn.Module | None, str]:
        raw = cfg.raw
        step = raw.get("decoder_sparse_step") or 1
        if layer in (raw.get("mlp_only_layers") or []) or (layer + 1) % step:
            return None, "mlp"
        return SparseMoeBlock(cfg.hidden_size, raw["moe_intermediate_size"], _num_experts(cfg),
                              raw["num_experts_per_tok"], bool(raw.get("norm_topk_prob")), kernels, tp), "mlp"

    def checkpoint_target(self, name: str) -> tuple[str, Any] | None:
        return expert_target(name)
