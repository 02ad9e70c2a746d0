"""Engine and model configuration: what the user asked for, and what the checkpoint's config.json says."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.speculative import SpeculativeConfig
from llm_kernels.backend import BACKENDS
from llm_kernels.kernel_set import KernelSet

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "half": torch.float16,
           "float": torch.float32}


@dataclass(slots=True)
class ModelConfig:
    """The fields of a Hugging Face decoder config.json the engine uses (old and transformers-5 spellings)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    hidden_act: str
    dtype: torch.dtype
    eos_token_ids: list[int]
    sliding_window: int | None
    layer_windows: list[int]            # per layer: its sliding window (0: it attends the whole context)
    raw: dict = field(default_factory=dict)      # config.json as read: what one architecture alone reads (Gemma 3)

    @property
    def max_context(self) -> int:
        """The positions the model takes: `max_position_embeddings`, times the factor of linear RoPE scaling (as vLLM
        derives it: positions interpolated by the factor reach that far). Gemma 3's limit is the scaled one already;
        YaRN's and llama3's are too, and dynamic NTK rescales only beyond the limit, which the engine does not."""
        rope = self.rope_scaling or {}
        if rope.get("rope_type") == "linear" and "gemma3" not in self.raw.get("model_type", ""):
            return int(self.max_position_embeddings * rope["factor"])
        return self.max_position_embeddings

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> ModelConfig:
        """Parse `path/config.json`, with the defaults transformers' class for its model_type gives the fields it
        leaves out."""
        raw = _with_defaults(path, json.loads((Path(path) / "config.json").read_text()))
        archs = raw.get("architectures") or []
        heads = raw["num_attention_heads"]
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        rope = rope.get("full_attention", rope)        # per layer type (Gemma 3): the global layers' are the model's
        rope_theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type in ("llama3", "yarn") and raw.get("original_max_position_embeddings"):
            # transformers' own rule: a top-level value (Phi-3's layout) wins over the one among the parameters
            rope = {**rope, "original_max_position_embeddings": raw["original_max_position_embeddings"]}
        eos = raw.get("eos_token_id")
        model_type = raw.get("model_type", "")
        # transformers' defaults where a config leaves a field out: Qwen's windows are off unless switched on.
        sliding = raw.get("sliding_window") if raw.get("use_sliding_window", not model_type.startswith("qwen")) \
            else None
        layers = raw["num_hidden_layers"]
        kinds = raw.get("layer_types")          # transformers 5 names each layer's attention
        if kinds is None and model_type == "gemma3_text":      # Hub configs: every pattern-th layer is global
            pattern = raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern") or 6
            kinds = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
        if kinds is None:                       # else: all windowed (Mistral), Qwen2's from max_window_layers on
            first = raw.get("max_window_layers", 0)
            kinds = ["sliding_attention" if sliding and i >= first else "full_attention" for i in range(layers)]
        windows = [(sliding or 0) if kind == "sliding_attention" else 0 for kind in kinds]
        return cls(
            architecture=archs[0] if archs else raw.get("model_type", "unknown"),
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=None if rope_type == "default" else {
                **rope, "rope_type": rope_type, "max_position_embeddings": raw.get("max_position_embeddings", 2048)},
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=raw.get("tie_word_embeddings", model_type == "gemma3_text"),
            attention_bias=raw.get("attention_bias", False),
            hidden_act=raw.get("hidden_act", "silu"),
            dtype=_DTYPES.get(str(raw.get("torch_dtype") or raw.get("dtype") or "float32"), torch.float32),
            eos_token_ids=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
            sliding_window=sliding,
            layer_windows=windows,
            raw=raw,
        )


def _with_defaults(path: str | os.PathLike, raw: dict) -> dict:
    """config.json with the values transformers' config class adds to it (each architecture's own defaults:
    Mixtral's and Gemma 3's RoPE bases, Gemma 3's window and attention scale, Qwen2's max_window_layers, and RoPE
    parameters in the form that transformers version reads); as it is if transformers cannot parse it."""
    try:
        import transformers
        full = transformers.AutoConfig.from_pretrained(str(path)).to_dict()
    except Exception:               # an unknown model_type: the architecture check names the problem
        return raw
    return {**raw, **{key: value for key, value in full.items() if value is not None}}


@dataclass(slots=True)
class EngineConfig:
    """What `LLM(...)` was asked for, validated; `resolve` fills in what depends on the model and device."""

    model: str
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    block_size: int = 16
    kv_cache_blocks: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    seed: int = 0
    gpu_memory_utilization: float = 0.9
    cuda_graphs: bool | None = None
    cpu_threads: int | None = None
    kernels: str | KernelSet | None = None
    tensor_parallel_size: int = 1
    speculative_config: dict | SpeculativeConfig | None = None
    generation_config: str = "auto"                 # vLLM's: "auto", "vllm", or a directory (sampling_params.py)
    override_generation_config: dict | None = None

    def __post_init__(self) -> None:
        self.speculative_config = SpeculativeConfig.parse(self.speculative_config)
        if self.generation_config not in ("auto", "vllm") and not Path(self.generation_config).is_dir():
            raise ValueError(f"generation_config must be 'auto', 'vllm' or a directory, got {self.generation_config!r}")
        if self.override_generation_config is not None and not isinstance(self.override_generation_config, dict):
            raise ValueError("override_generation_config must be a dict, got "
                             f"{self.override_generation_config!r}")
        if not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"model: {self.model!r} is not a checkpoint directory with a config.json")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, low in (("max_model_len", 2), ("kv_cache_blocks", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"{name} must be None or an integer >= {low}, got {value!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.device != "auto" and _device_type(self.device) not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: no CUDA device is available here (use 'cpu' or 'auto')")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or isinstance(self.cpu_threads, bool)
                                             or self.cpu_threads < 1):
            raise ValueError(f"cpu_threads must be an integer >= 1 or None (torch's default), got {self.cpu_threads!r}")
        if self.kernels is not None and not isinstance(self.kernels, KernelSet) and self.kernels not in BACKENDS:
            raise ValueError(f"kernels must be one of {', '.join(BACKENDS)}, a llm_kernels.KernelSet or None "
                             f"(what llm_kernels.use or LLM_KERNELS_BACKEND says), got {self.kernels!r}")
        if self.cuda_graphs is not None and not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True, False or None (auto), got {self.cuda_graphs!r}")
        self._check_tensor_parallel()

    def _check_tensor_parallel(self) -> None:
        """The ranks must have devices (one GPU each on CUDA) and a collective library, before any is started."""
        size = self.tensor_parallel_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"tensor_parallel_size must be an integer >= 1, got {size!r}")
        if size == 1:
            return
        if self.speculative_config is not None and self.speculative_config.model:
            raise ValueError("speculative_config: a draft model cannot run with tensor_parallel_size > 1 yet; use "
                             "the ngram method")
        if isinstance(self.kernels, KernelSet):
            raise ValueError("kernels: a KernelSet cannot be handed to tensor-parallel worker processes; name a "
                             "backend ('auto', 'triton', 'cpu' or 'torch') with tensor_parallel_size > 1")
        device = self.torch_device()
        if device.type == "cuda" and not launched_by_torchrun():
            first = device.index or 0
            if first + size > torch.cuda.device_count():
                raise ValueError(f"tensor_parallel_size {size} needs GPUs cuda:{first}..cuda:{first + size - 1}; "
                                 f"this machine has {torch.cuda.device_count()}")
        elif not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
            raise ValueError("tensor_parallel_size > 1 on the CPU needs torch.distributed with gloo, which this "
                             "torch build lacks")

    def torch_device(self, rank: int = 0) -> torch.device:
        """`auto` is CUDA when available, else the CPU. Tensor-parallel rank r takes the r-th GPU from the one
        named (cuda:0 by default), or under a launcher (torchrun) the GPU of its LOCAL_RANK; on the CPU all ranks
        share the machine."""
        name = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        device = torch.device(name)
        if device.type == "cuda" and (rank or self.tensor_parallel_size > 1):
            if launched_by_torchrun():
                return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            return torch.device("cuda", (device.index or 0) + rank)
        return device

    def torch_dtype(self, model: ModelConfig, device: torch.device) -> torch.dtype:
        """`auto` is the checkpoint's dtype on a GPU and float32 on the CPU (where half precision is slow)."""
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        return model.dtype if device.type == "cuda" else torch.float32

    def resolved_max_model_len(self, model: ModelConfig) -> int:
        """The context length: the user's, which may not exceed the model's positions (`ModelConfig.max_context`;
        a sliding window does not cap it: the attention kernels apply it)."""
        limit = model.max_context
        if self.max_model_len is None:
            return limit
        if self.max_model_len > limit:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's limit of {limit} tokens")
        return self.max_model_len


def launched_by_torchrun() -> bool:
    """Whether an external launcher (torchrun) started the tensor-parallel ranks (WORLD_SIZE > 1, RANK set)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _device_type(device: str | torch.device) -> str | None:
    """torch's device type of `device`, or None where torch cannot parse it."""
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        return None
