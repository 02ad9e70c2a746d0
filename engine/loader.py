"""Build a model from a Hugging Face checkpoint directory and load its safetensors weights into it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from engine.config import ModelConfig
from engine.models import model_class
from llm_kernels import KernelSet

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's weight files: those named by model.safetensors.index.json, else every *.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / name for name in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {path}")
    return files


def load_model(path: str, cfg: ModelConfig, max_positions: int, dtype: torch.dtype, device: torch.device,
               kernels: KernelSet) -> torch.nn.Module:
    """Instantiate the architecture (its layers calling `kernels`) without initialising it, then fill every
    parameter from the checkpoint."""
    cls = model_class(cfg.architecture)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = cls(cfg, max_positions, kernels)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    params = dict(model.named_parameters())
    with torch.no_grad():
        for param in params.values():
            param.fill_(float("nan"))      # so that a weight (or a fused slice) the checkpoint lacks is caught
    for file in safetensors_files(Path(path)):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.endswith(_IGNORED_SUFFIXES) or (cfg.tie_word_embeddings and name == "lm_head.weight"):
                    continue
                _load_tensor(model, params, name, f.get_tensor(name))
    missing = [name for name, param in params.items() if bool(param.isnan().any())]
    if missing:
        raise ValueError(f"checkpoint {path} lacks weights (or has NaNs) for: {', '.join(missing)}")
    return model.eval()


def _load_tensor(model: torch.nn.Module, params: dict[str, torch.nn.Parameter], name: str,
                 tensor: torch.Tensor) -> None:
    """Copy one checkpoint tensor into its parameter, or into its slice of a fused one."""
    for part, (fused, shard) in model.stacked_params.items():
        marker = f".{part}."
        if marker not in name:
            continue
        target_name = name.replace(marker, f".{fused}.")
        if target_name not in params:
            break
        target = params[target_name]
        sizes = _shard_sizes(target.shape[0], fused, model, name)
        start = sum(sizes[:shard])
        _copy(target[start:start + sizes[shard]], tensor, name)
        return
    if name not in params:
        raise ValueError(f"unexpected weight {name!r} for {type(model).__name__}")
    _copy(params[name], tensor, name)


def _copy(target: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if target.shape != tensor.shape:
        raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(tensor)


def _shard_sizes(total: int, fused: str, model: torch.nn.Module, name: str) -> list[int]:
    if fused == "gate_up_proj":
        return [total // 2, total // 2]
    layer = int(name.split(".layers.")[1].split(".")[0])
    return model.model.layers[layer].self_attn.qkv_sizes
