"""The engine never builds a device tensor with `torch.tensor(..., device=...)`: on a GPU that copy waits for every
queued kernel (engine/transfer.py), which a CPU run cannot show, so the rule is checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from engine.transfer import to_device

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def synchronous_copies(source: str) -> list[int]:
    """Lines of `torch.tensor(...)` / `torch.as_tensor(...)` calls given a `device`."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("tensor", "as_tensor") and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch" and any(k.arg == "device" for k in node.keywords)]


def test_the_check_finds_a_synchronous_copy():
    assert synchronous_copies("import torch\nx = torch.tensor([1], dtype=torch.int64, device=dev)\n") == [2]
    assert synchronous_copies("x = torch.tensor([1]).to(dev, non_blocking=True)\n") == []


def test_no_engine_module_copies_host_lists_synchronously():
    found = {path.name: lines for path in sorted(ENGINE.rglob("*.py"))
             if (lines := synchronous_copies(path.read_text()))}
    assert found == {}, f"use engine.transfer.to_device instead: {found}"


def test_to_device_keeps_values_and_dtype():
    t = to_device([[1, -2], [3, 2**40]], torch.int64, torch.device("cpu"))
    assert t.dtype == torch.int64 and t.tolist() == [[1, -2], [3, 2**40]]


def test_to_device_copies_to_cuda_from_pinned_memory_without_waiting(monkeypatch):
    """For a CUDA device: the host tensor is pinned and the copy non-blocking (`.to` stubbed: no GPU here)."""
    pinned, moves = [], []
    tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, pin_memory=False, **k: pinned.append(pin_memory) or tensor(*a, **k))
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: moves.append((a, k)) or self)
    cuda = torch.device("cuda")
    assert to_device([1.5, 2.0], torch.float32, cuda).tolist() == [1.5, 2.0]
    assert pinned == [True] and moves == [((cuda,), {"non_blocking": True})]
