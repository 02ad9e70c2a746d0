"""Qwen3: the Llama decoder with an RMSNorm on each query and key head before RoPE."""

from engine.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3 (dense)."""

    qk_norm = True
