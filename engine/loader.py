"""Build a model from a Hugging Face checkpoint directory and load its safetensors weights into it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from engine.config import ModelConfig
from engine.models import model_class
from engine.models.linear import load_whole, pack_linears
from engine.parallel_state import SINGLE, TensorParallel
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
               kernels: KernelSet, tp: TensorParallel = SINGLE) -> torch.nn.Module:
    """Instantiate the architecture (its layers calling `kernels`, holding rank `tp.rank`'s slices) without
    initialising it, then fill every parameter from the checkpoint, reading only this rank's slices. With the CPU
    kernels, the linear layers' weights are then packed for oneDNN (`pack_linears`)."""
    cls = model_class(cfg.architecture)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = cls(cfg, max_positions, kernels, tp)
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
                _load_tensor(model, params, name, f.get_slice(name))
    missing = [name for name, param in params.items() if bool(param.isnan().any())]
    if missing:
        raise ValueError(f"checkpoint {path} lacks weights (or has NaNs) for: {', '.join(missing)}")
    if kernels.backend == "cpu":
        pack_linears(model)
    return model.eval()


def _load_tensor(model: torch.nn.Module, params: dict[str, torch.nn.Parameter], name: str, source: Any) -> None:
    """Copy this rank's part of one checkpoint tensor into its parameter, or into its slice of a fused one: the
    layer that owns the parameter knows which part (its `load`; `load_whole` for the others)."""
    target, shard = name, None
    mapped = model.checkpoint_target(name) if hasattr(model, "checkpoint_target") else None
    if mapped is not None:
        target, shard = mapped
    else:
        for part, (fused, index) in model.stacked_params.items():
            marker = f".{part}."
            if marker in name:
                target, shard = name.replace(marker, f".{fused}."), index
                break
    if target not in params:
        raise ValueError(f"unexpected weight {name!r} for {type(model).__name__}")
    owner = model.get_submodule(target.rpartition(".")[0])
    try:
        getattr(owner, "load", load_whole)(params[target], source, shard)
    except ValueError as exc:
        raise ValueError(f"weight {name!r}: {exc}") from None
