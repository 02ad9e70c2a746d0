"""Gemma 3 (text), the worked example of adding an architecture: the Llama blocks where they fit, and what Gemma
changes written here.

- RMSNorm scales by (1 + weight): the weight is loaded as 1 + weight (in float32), so for float32 activations the
  engine's `rms_norm` kernel serves; others are normalised in float32 and rounded once, as transformers does.
- Four norms per layer ("sandwich"): input and post-attention around the attention, pre- and post-feedforward
  around the MLP, whose activation is GELU (tanh) instead of SiLU.
- Embeddings are scaled by sqrt(hidden_size); the attention scale is query_pre_attn_scalar ** -0.5; q and k are
  normalised per head (as Qwen3's, with Gemma's norm).
- Layers alternate per `layer_types`: local ones attend a sliding window with RoPE of their own base, global ones
  the whole context with the model's RoPE (and its scaling); each forward looks up both cos/sin tables once.
- Final logits are soft-capped (tanh(x / cap) * cap) where the config sets final_logit_softcapping.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.models.attention import Attention, AttentionMetadata
from engine.models.linear import ParallelLMHead, VocabParallelEmbedding, load_whole
from engine.models.llama import MLP, LlamaForCausalLM
from engine.models.rotary import RotaryEmbedding
from engine.parallel_state import TensorParallel
from llm_kernels import KernelSet


class GemmaRMSNorm(torch.nn.Module):
    """y = (1 + weight) * x / sqrt(mean(x^2) + eps), in float32 and rounded once, as transformers' Gemma: the weight
    is kept in float32 with the one added at load. With float32 activations that is the engine's `rms_norm`
    kernel; other dtypes take the torch expression (the kernel, like Llama, rounds before the multiply)."""

    def __init__(self, size: int, eps: float, kernels: KernelSet) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size, dtype=torch.float32))
        self.eps, self.kernels = eps, kernels

    def load(self, param: torch.nn.Parameter, source: Any, shard: int | None = None) -> None:
        load_whole(param, source, shard)
        with torch.no_grad():
            param.add_(1.0)

    def forward(self, x: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """As `RMSNorm.forward`: with `residual`, normalise x + residual and return (normalised, x + residual)."""
        if x.dtype == torch.float32:
            return self.kernels.rms_norm(x, self.weight, self.eps, residual)
        if residual is not None:
            x = residual = x + residual
        h = x.float()
        out = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)
        return out if residual is None else (out, residual)


class GeluMLP(MLP):
    """Gemma's feed-forward: down(gelu_tanh(gate) * up)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Gemma3DecoderLayer(torch.nn.Module):
    """Attention and MLP, each between two norms, each with a residual connection."""

    def __init__(self, cfg: ModelConfig, window: int, kernels: KernelSet, tp: TensorParallel) -> None:
        super().__init__()
        eps = cfg.rms_norm_eps
        self.local = window > 0
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                   cfg.attention_bias, cfg.attention_bias, eps, kernels, tp, window)
        self.self_attn.q_norm = GemmaRMSNorm(cfg.head_dim, eps, kernels)
        self.self_attn.k_norm = GemmaRMSNorm(cfg.head_dim, eps, kernels)
        self.self_attn.scale = cfg.raw.get("query_pre_attn_scalar", cfg.head_dim) ** -0.5
        self.mlp = GeluMLP(cfg.hidden_size, cfg.intermediate_size, kernels, tp)
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            setattr(self, name, GemmaRMSNorm(cfg.hidden_size, eps, kernels))

    def forward(self, ropes: dict[bool, tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; ropes: the step's cos/sin rows, local (True) and global (False)."""
        h = self.self_attn(ropes[self.local], self.input_layernorm(x), meta)
        h, x = self.pre_feedforward_layernorm(self.post_attention_layernorm(h), x)     # x += attn; h = norm(x)
        return x + self.post_feedforward_layernorm(self.mlp(h))


class Gemma3Model(torch.nn.Module):
    """Scaled embeddings, the layers and the final norm (Hugging Face's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig, max_positions: int, kernels: KernelSet, tp: TensorParallel) -> None:
        super().__init__()
        local = (cfg.raw.get("rope_parameters") or {}).get("sliding_attention") or {}
        theta = local.get("rope_theta", cfg.raw.get("rope_local_base_freq", 10000.0))
        local_type = local.get("rope_type", "default")
        local_scaling = None if local_type == "default" else {
            **local, "max_position_embeddings": cfg.max_position_embeddings}
        self.rotary = {False: RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling),
                       True: RotaryEmbedding(cfg.head_dim, max_positions, theta, local_scaling)}
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.embed_scale = cfg.hidden_size ** 0.5
        self.layers = torch.nn.ModuleList(Gemma3DecoderLayer(cfg, window, kernels, tp)
                                          for window in cfg.layer_windows)
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kernels)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Token ids [T] -> final hidden states [T, hidden]."""
        x = self.embed_tokens(input_ids)
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)        # in the weights' dtype, as transformers does
        ropes = {local: rotary.cos_sin(positions) for local, rotary in self.rotary.items()}
        for layer in self.layers:
            x = layer(ropes, x, meta)
        return self.norm(x)


class Gemma3ForCausalLM(LlamaForCausalLM):
    """Gemma 3's text model (Gemma3ForCausalLM checkpoints; the LM head is tied to the embeddings)."""

    def __init__(self, cfg: ModelConfig, max_positions: int, kernels: KernelSet, tp: TensorParallel) -> None:
        torch.nn.Module.__init__(self)
        activation = cfg.raw.get("hidden_activation") or cfg.raw.get("hidden_act")
        if activation != "gelu_pytorch_tanh" or cfg.raw.get("attn_logit_softcapping"):
            raise ValueError(f"Gemma 3 with hidden_activation {activation!r} or attention logit soft-capping is not "
                             "supported (gelu_pytorch_tanh and no attention soft-capping are)")
        if cfg.raw.get("use_bidirectional_attention"):
            raise ValueError("Gemma 3 with use_bidirectional_attention is not supported (this engine is causal)")
        self.model = Gemma3Model(cfg, max_positions, kernels, tp)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, tp)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.softcap = cfg.raw.get("final_logit_softcapping")

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Hidden states -> float32 logits, soft-capped where the config says."""
        logits = self.lm_head.logits(hidden)
        if logits is None or not self.softcap:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap
