"""The engine never builds a device tensor with `torch.tensor(..., device=...)` (on a GPU that copy waits for every
queued kernel, engine/transfer.py) nor copies a freshly built pageable host tensor to a device (the driver may wait
while it stages it): a CPU run cannot show either, so the rules are checked on the source."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest
import torch

from engine.transfer import host_tensor, to_device

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def synchronous_copies(source: str) -> list[int]:
    """Lines of `torch.tensor(...)` / `torch.as_tensor(...)` calls given a `device`."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("tensor", "as_tensor") and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch" and any(k.arg == "device" for k in node.keywords)]


def _fresh_host_tensor(node: ast.AST, pinned_ok: bool) -> bool:
    """Whether `node` builds a new host tensor from Python data (`torch.tensor`, `torch.as_tensor`): pageable
    memory, unless it asks for `pin_memory` and that is allowed."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("tensor", "as_tensor") and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
            and not (pinned_ok and any(k.arg == "pin_memory" for k in node.keywords)))


def pageable_copies(source: str) -> list[int]:
    """Lines that copy a freshly built pageable host tensor to a device: `dst.copy_(torch.tensor(...))`, or
    `torch.tensor(...).to(...)` / `.cuda(...)` without `pin_memory`."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if _copies_pageable(node)]


def _copies_pageable(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    if node.func.attr == "copy_":
        return bool(node.args) and _fresh_host_tensor(node.args[0], pinned_ok=False)
    return node.func.attr in ("to", "cuda") and _fresh_host_tensor(node.func.value, pinned_ok=True)


def test_the_check_finds_a_pageable_copy():
    old_graph_path = "self.slots[:n].copy_(torch.tensor(slots, dtype=torch.int64), non_blocking=True)\n"
    assert pageable_copies(old_graph_path) == [1]
    assert pageable_copies("x = torch.tensor(v, dtype=d).to(dev, non_blocking=True)\ny = torch.as_tensor(v).cuda()\n") \
        == [1, 2]
    assert pageable_copies("x = torch.tensor(v, pin_memory=True).to(dev, non_blocking=True)\n") == []
    assert pageable_copies("dst[:n].copy_(host[:n], non_blocking=True)\n") == []


def test_no_engine_module_copies_from_pageable_host_memory():
    found = {path.name: lines for path in sorted(ENGINE.rglob("*.py"))
             if (lines := pageable_copies(path.read_text()))}
    assert found == {}, f"copy from pinned memory (engine.transfer.to_device, or a pinned buffer): {found}"


def test_the_check_finds_a_synchronous_copy():
    assert synchronous_copies("import torch\nx = torch.tensor([1], dtype=torch.int64, device=dev)\n") == [2]
    assert synchronous_copies("x = torch.tensor([1]).to(dev, non_blocking=True)\n") == []


def test_no_engine_module_copies_host_lists_synchronously():
    found = {path.name: lines for path in sorted(ENGINE.rglob("*.py"))
             if (lines := synchronous_copies(path.read_text()))}
    assert found == {}, f"use engine.transfer.to_device instead: {found}"


def test_to_device_keeps_values_and_dtype():
    cpu = torch.device("cpu")
    t = to_device([[1, -2], [3, 2**40]], torch.int64, cpu)
    assert t.dtype == torch.int64 and t.tolist() == [[1, -2], [3, 2**40]]
    for values, dtype in (([0.1, -2.5, 1e39], torch.float32), ([7, -8], torch.int32), ([[0.5], [2.0]], torch.float64),
                          ([True, False], torch.bool), ([], torch.int64), ([[], []], torch.int32)):
        t = to_device(values, dtype, cpu)
        assert t.dtype == dtype and torch.equal(t, torch.tensor(values, dtype=dtype)), (values, dtype)


def test_host_tensor_outlives_its_array_and_refuses_ragged_rows():
    t = host_tensor(list(range(1000)), torch.int64)
    gc.collect()
    garbage = [host_tensor([-1] * 1000, torch.int64) for _ in range(50)]
    assert t.tolist() == list(range(1000)) and len(garbage) == 50
    with pytest.raises(ValueError):
        host_tensor([[1, 2], [3], [4, 5, 6]], torch.int64)      # 6 values would view as 3 x 2


def test_to_device_copies_to_cuda_from_pinned_memory_without_waiting(monkeypatch):
    """For a CUDA device: the host tensor is pinned and the copy non-blocking (no GPU here: both are stubbed)."""
    pinned, moves = [], []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.tolist()) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: moves.append((a, k)) or self)
    cuda = torch.device("cuda")
    assert to_device([1.5, 2.0], torch.float32, cuda).tolist() == [1.5, 2.0]
    assert pinned == [[1.5, 2.0]] and moves == [((cuda,), {"non_blocking": True})]
