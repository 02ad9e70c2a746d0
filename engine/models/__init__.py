"""Model architectures, keyed by the `architectures` entry of a Hugging Face config.json.

Adding an architecture: write a small file here (usually a subclass of `LlamaForCausalLM` that sets a class
attribute or overrides a module; `gemma3.py` is the worked example of a model that changes more) and add it to
`ARCHITECTURES`.
"""

from __future__ import annotations

import torch

from engine.models.gemma3 import Gemma3ForCausalLM
from engine.models.llama import LlamaForCausalLM
from engine.models.mixtral import MixtralForCausalLM, Qwen3MoeForCausalLM
from engine.models.qwen2 import Qwen2ForCausalLM
from engine.models.qwen3 import Qwen3ForCausalLM

ARCHITECTURES: dict[str, type[torch.nn.Module]] = {
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
}


def model_class(architecture: str) -> type[torch.nn.Module]:
    """The class that implements `architecture`, or a ValueError listing what is supported."""
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"architecture {architecture!r} is not supported; supported: "
                         f"{', '.join(sorted(ARCHITECTURES))}") from None
