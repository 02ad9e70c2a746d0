"""Tiny random-weight checkpoints for tests, built with transformers' own configs and `save_pretrained`.

Nothing comes from a model hub: the tokenizer is a byte-level BPE trained here with `tokenizers` on a few
sentences and some multi-byte text, and each architecture gets a two-layer model with random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# ChatML, with tools as Qwen renders them: listed in a system turn, calls as <tool_call>{json}</tool_call>.
CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "Call a tool as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% elif m['content'] %}"
    "{% for part in m['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{% for c in m.get('tool_calls') or [] %}<tool_call>{\"name\": \"{{ c['function']['name'] }}\", "
    "\"arguments\": {{ c['function']['arguments'] | tojson }}}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "Continuous batching adds and removes sequences at every step.",
    "café naïve résumé 日本語のテキスト 中文字符 😀🎉🚀 Ελληνικά русский",
    "import os\nimport sys\nprint('hello world')\n",
    "for i in range(10):\n    total += i * i\n",
] * 20

ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, {}),
    "llama3": (transformers.LlamaConfig, {"rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}, "rope_theta": 500000.0}),
    "mistral": (transformers.MistralConfig, {"sliding_window": None}),
    "mistral-window": (transformers.MistralConfig, {"sliding_window": 16, "max_position_embeddings": 512}),
    "mixtral": (transformers.MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3-moe": (transformers.Qwen3MoeConfig, {"head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2,
                                                "moe_intermediate_size": 48, "norm_topk_prob": True,
                                                "mlp_only_layers": [1]}),
    "gemma3": (transformers.Gemma3TextConfig, {
        "head_dim": 16, "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
        "query_pre_attn_scalar": 24, "final_logit_softcapping": 30.0, "tie_word_embeddings": True,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}}}),
    "qwen2": (transformers.Qwen2Config, {}),
    "qwen3": (transformers.Qwen3Config, {"head_dim": 32}),
    "qwen3-yarn": (transformers.Qwen3Config, {"head_dim": 32, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}),
    "llama-dynamic": (transformers.LlamaConfig, {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
}


def build_tokenizer(path: Path, thinking: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on CORPUS and save it with a ChatML template under `path`; `thinking` adds `<think>`
    and `</think>` as tokens of their own (not special: their text stays in the output, as Qwen3's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if thinking:
        fast.add_tokens(["<think>", "</think>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_checkpoint(path: Path, arch: str = "llama", *, tie: bool = False, dtype: torch.dtype = torch.float32,
                     seed: int = 0, thinking: bool = False, **overrides) -> Path:
    """A two-layer random-weight checkpoint of `arch` with the test tokenizer, saved under `path`."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path, thinking)
    config_cls, extra = ARCHITECTURES[arch]
    settings = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    tie_word_embeddings=tie, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                    pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    settings.update(extra)
    settings.update(overrides)
    config = config_cls(**settings)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(path)
    return path
