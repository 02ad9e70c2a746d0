"""The Llama decoder, which Mistral, Qwen2 and Qwen3 specialise with a class attribute or two.

Weights load from Hugging Face names: q/k/v and gate/up projections are stored fused here, and
`stacked_params` says which slice of the fused weight each checkpoint tensor fills. Under tensor parallelism
(`tp`) the layers hold this rank's slices (engine/models/linear.py).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.config import ModelConfig
from engine.models.attention import Attention, AttentionMetadata
from engine.models.linear import ColumnParallelLinear, ParallelLMHead, RowParallelLinear, Shard, VocabParallelEmbedding
from engine.models.norm import RMSNorm
from engine.models.rotary import RotaryEmbedding
from engine.parallel_state import TensorParallel
from llm_kernels import KernelSet


class MLP(torch.nn.Module):
    """SwiGLU feed-forward with the gate and up projections fused into one matmul (column-parallel) and
    down_proj row-parallel."""

    def __init__(self, hidden_size: int, intermediate_size: int, kernels: KernelSet, tp: TensorParallel) -> None:
        super().__init__()
        self.kernels = kernels
        local = tp.split(intermediate_size, "intermediate_size")
        half = Shard(local, tp.rank * local)
        self.gate_up_proj = ColumnParallelLinear(hidden_size, [half, half], bias=False)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, False, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        return self.down_proj(self.kernels.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(torch.nn.Module):
    """Pre-norm attention and MLP blocks, each with a residual connection.

    The residual stream is passed along unsummed, as (the last block's output, the sum before it): each norm adds
    the two and normalises in one call (the kernels' `rms_norm` with a residual), as a fused kernel can.
    """

    def __init__(self, cfg: ModelConfig, qkv_bias: bool, qk_norm: bool, kernels: KernelSet,
                 tp: TensorParallel, sliding_window: int = 0, ffn: tuple[torch.nn.Module | None, str] = (None, "mlp")
                 ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels)
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, qkv_bias,
                                   cfg.attention_bias, cfg.rms_norm_eps if qk_norm else None, kernels, tp,
                                   sliding_window)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels)
        module, self.ffn_name = ffn            # the feed-forward under its checkpoint name (MoE models give theirs)
        setattr(self, self.ffn_name, module if module is not None else MLP(cfg.hidden_size, cfg.intermediate_size,
                                                                          kernels, tp))

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """One transformer block on the step's packed tokens (rope: their rotary cos/sin rows). The hidden state
        is x + residual (just x in the first layer, residual None); returns the new (x, residual)."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm(x, residual)
        h, residual = self.post_attention_layernorm(self.self_attn(rope, h, meta), residual)
        return getattr(self, self.ffn_name)(h), residual


class DecoderModel(torch.nn.Module):
    """Embeddings, the decoder layers and the final norm (Hugging Face's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig, max_positions: int, qkv_bias: bool, qk_norm: bool,
                 kernels: KernelSet, tp: TensorParallel, feed_forward=None) -> None:
        super().__init__()
        self.rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.layers = torch.nn.ModuleList(
            DecoderLayer(cfg, qkv_bias, qk_norm, kernels, tp, window,
                         feed_forward(i) if feed_forward is not None else (None, "mlp"))
            for i, window in enumerate(cfg.layer_windows))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Token ids [T] -> final hidden states [T, hidden]."""
        x, residual = self.embed_tokens(input_ids), None
        rope = self.rotary.cos_sin(positions)           # looked up once, used by every layer
        for layer in self.layers:
            x, residual = layer(rope, x, residual, meta)
        return self.norm(x) if residual is None else self.norm(x, residual)[0]


class LlamaForCausalLM(torch.nn.Module):
    """Llama 2/3 (and Mistral): the decoder plus the LM head, tied to the embeddings when the config says so."""

    qkv_bias = False            # Qwen2 sets True
    qk_norm = False             # Qwen3 sets True
    stacked_params = {          # checkpoint name -> (our fused parameter, shard index)
        "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg: ModelConfig, max_positions: int, kernels: KernelSet, tp: TensorParallel) -> None:
        super().__init__()
        _check_supported(cfg)
        self.model = DecoderModel(cfg, max_positions, self.qkv_bias or cfg.attention_bias, self.qk_norm, kernels,
                                  tp, lambda layer: self.feed_forward(cfg, layer, kernels, tp))
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, tp)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def feed_forward(self, cfg: ModelConfig, layer: int, kernels: KernelSet,
                     tp: TensorParallel) -> tuple[torch.nn.Module | None, str]:
        """Layer `layer`'s feed-forward and its checkpoint name: (None, "mlp"), the SwiGLU MLP, here; mixtures of
        experts give their own."""
        return None, "mlp"

    def checkpoint_target(self, name: str) -> tuple[str, Any] | None:
        """Our parameter for a checkpoint weight the fused q/k/v and gate/up names (`stacked_params`) do not
        cover, and the part of it the weight fills; None for the rest. Mixtures of experts map their experts."""
        return None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Token ids [T] at positions [T] -> hidden states [T, hidden]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Hidden states [N, hidden] -> float32 logits [N, vocab] (on rank 0; None on the other ranks, which
        must call it too: the logits are gathered)."""
        return self.lm_head.logits(hidden)

    def attention_layers(self) -> list[Attention]:
        """The attention modules, in layer order, so the runner can hand each its KV cache."""
        return [layer.self_attn for layer in self.model.layers]


def _check_supported(cfg: ModelConfig) -> None:
    """A ValueError naming a config field whose value these models would not honour (they run SwiGLU MLPs
    without biases)."""
    if cfg.hidden_act != "silu":
        raise ValueError(f"hidden_act {cfg.hidden_act!r} is not supported for {cfg.architecture} (only 'silu': "
                         "the MLP kernels are SwiGLU)")
    if cfg.raw.get("mlp_bias"):
        raise ValueError(f"mlp_bias is not supported for {cfg.architecture}")
