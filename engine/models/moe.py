"""Mixture-of-experts feed-forward layers (Qwen3-MoE, Mixtral) on the engine's `fused_moe` kernel.

The router is a replicated linear layer: softmax over the experts in float32, the top k, renormalised when the
model says so (Mixtral always, Qwen3-MoE per `norm_topk_prob`), and rounded to the activations' dtype where
transformers rounds them (Qwen3-MoE; Mixtral keeps them in float32). The experts' weights are stacked
[E, 2I, H] (gate, then up) and [E, H, I]; under tensor parallelism each rank holds a slice of every expert's
intermediate dimension and the outputs are summed over the ranks.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from engine.models.linear import read_all
from engine.parallel_state import TensorParallel
from llm_kernels import KernelSet

# Checkpoint names of one expert's weights: Qwen3-MoE's gate/up/down_proj, Mixtral's w1/w3/w2.
EXPERT_WEIGHT = re.compile(r"^(?P<prefix>.*)\.experts\.(?P<expert>\d+)\.(?P<part>gate_proj|up_proj|down_proj|w1|w3|w2)"
                           r"\.weight$")
_PARTS = {"gate_proj": 0, "w1": 0, "up_proj": 1, "w3": 1, "down_proj": 2, "w2": 2}


def expert_target(name: str) -> tuple[str, tuple[int, int]] | None:
    """(our stacked parameter, (expert, part)) of an expert's checkpoint weight; None for any other weight."""
    match = EXPERT_WEIGHT.match(name)
    if match is None:
        return None
    part = _PARTS[match["part"]]
    return f"{match['prefix']}.experts.{'w2' if part == 2 else 'w13'}", (int(match["expert"]), part)


class FusedExperts(torch.nn.Module):
    """Every expert's weights stacked, this rank's slice of the intermediate dimension."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.local = tp.split(intermediate_size, "moe_intermediate_size")
        self.start = tp.rank * self.local
        self.w13 = torch.nn.Parameter(torch.empty(num_experts, 2 * self.local, hidden_size))
        self.w2 = torch.nn.Parameter(torch.empty(num_experts, hidden_size, self.local))

    def load(self, param: torch.nn.Parameter, source: Any, shard: tuple[int, int]) -> None:
        """One expert's gate (part 0), up (1) or down (2) projection, this rank's slice of it."""
        expert, part = shard
        whole = read_all(source)
        rows = slice(self.start, self.start + self.local)
        piece = whole[:, rows] if part == 2 else whole[rows]
        target = param[expert] if part == 2 else param[expert, part * self.local:(part + 1) * self.local]
        if target.shape != piece.shape:
            raise ValueError(f"expert {expert} has shape {tuple(whole.shape)}, which does not fit {tuple(param.shape)}")
        with torch.no_grad():
            target.copy_(piece)


class SparseMoeBlock(torch.nn.Module):
    """The router and the experts: x [T, H] -> [T, H]."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int, normalize: bool,
                 kernels: KernelSet, tp: TensorParallel, weights_in_model_dtype: bool = True) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = FusedExperts(num_experts, hidden_size, intermediate_size, tp)
        self.top_k, self.normalize, self.kernels, self.tp = top_k, normalize, kernels, tp
        self.round_weights = weights_in_model_dtype     # Qwen3-MoE rounds the routing weights; Mixtral does not

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        weights, ids = probs.topk(self.top_k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.round_weights:
            weights = weights.to(x.dtype).float()
        out = self.kernels.fused_moe(x, self.experts.w13, self.experts.w2, weights, ids)
        return self.tp.all_reduce(out)
