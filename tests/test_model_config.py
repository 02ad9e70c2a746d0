"""ModelConfig reads configs as transformers does where they leave fields out: Gemma 3's Hub configs (a sliding
window pattern, tied embeddings), Qwen's windows (off unless switched on), YaRN without its original length."""

from __future__ import annotations

import json

import torch
import transformers

from engine.config import ModelConfig
from engine.models.rotary import inverse_frequencies

BASE = {"vocab_size": 400, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


def _config(tmp_path, **fields) -> ModelConfig:
    (tmp_path / "config.json").write_text(json.dumps({**BASE, **fields}))
    return ModelConfig.from_dir(tmp_path)


def test_a_gemma3_hub_config_alternates_by_its_pattern_and_ties_embeddings(tmp_path):
    fields = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "sliding_window": 32,
              "sliding_window_pattern": 3, "head_dim": 16}
    cfg = _config(tmp_path, **fields)
    theirs = transformers.Gemma3TextConfig(**{**BASE, **{k: v for k, v in fields.items() if k != "architectures"}})
    assert cfg.layer_windows == [32 if kind == "sliding_attention" else 0 for kind in theirs.layer_types]
    assert cfg.layer_windows == [32, 32, 0, 32, 32, 0, 32, 32]
    assert cfg.tie_word_embeddings is theirs.tie_word_embeddings is True


def test_qwen_windows_are_off_unless_switched_on(tmp_path):
    qwen = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "sliding_window": 32, "max_window_layers": 2}
    assert _config(tmp_path, **qwen).layer_windows == [0] * 8
    on = _config(tmp_path, **qwen, use_sliding_window=True).layer_windows
    assert on == [0, 0] + [32] * 6
    mistral = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": 32}
    assert _config(tmp_path, **mistral).layer_windows == [32] * 8


def test_yarn_without_its_original_length_is_what_transformers_computes(tmp_path):
    rope = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    cfg = _config(tmp_path, architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=16,
                  rope_parameters=rope)
    ours, factor = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    theirs_cfg = transformers.Qwen3Config(**BASE, head_dim=16, rope_parameters=dict(rope))
    theirs, their_factor = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["yarn"](theirs_cfg, "cpu")
    torch.testing.assert_close(ours, theirs.float())
    assert factor == their_factor
