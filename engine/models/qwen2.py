"""Qwen2: the Llama decoder with biases on the q, k and v projections."""

from engine.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 / Qwen2.5."""

    qkv_bias = True
