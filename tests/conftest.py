"""Shared fixtures: tiny checkpoints built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The test models are tiny: one intra-op thread is faster than two, and it does not stall when the
# machine's two cores are also busy with a server subprocess (OpenMP threads spin-wait on each other).
torch.set_num_threads(1)

# The helpers of tests/ import by name; the repository root makes `benchmarks` importable whoever runs pytest.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))

from tiny_models import build_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """Build (once) and return the path of a tiny checkpoint: factory(arch, **options)."""
    cache: dict[tuple, Path] = {}

    def make(arch: str = "llama", **options) -> str:
        items = sorted(options.items(), key=lambda kv: kv[0])
        key = (arch, repr(items))            # options may be dicts (rope_parameters)
        if key not in cache:
            name = "-".join([arch] + [f"{k}={v}" for k, v in items]).replace("/", "_")[:80]
            cache[key] = build_checkpoint(tmp_path_factory.mktemp(name), arch, **options)
        return str(cache[key])

    return make


@pytest.fixture(scope="session")
def llama_path(checkpoint_factory) -> str:
    """The default tiny Llama checkpoint."""
    return checkpoint_factory("llama")
