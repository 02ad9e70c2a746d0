"""The model's linear layers and embeddings, split over tensor-parallel ranks (one rank: plain layers).

- Column-parallel (q/k/v, gate/up): each rank holds a slice of the output features and computes its slice; no
  communication. A fused layer is a list of `Shard`s, one per checkpoint tensor it holds a slice of.
- Row-parallel (o_proj, down_proj): each rank holds a slice of the input features, computes a partial sum, and
  one all-reduce adds them; the bias is added once, after it.
- Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice of the (padded) vocabulary; the
  embedding all-reduces (ids outside a rank's slice give zeros there), the head gathers the logits to rank 0.

Each layer's `load(param, source, shard)` copies this rank's part of a checkpoint tensor into one of its
parameters (`load_whole` does it for the others); `source` is a safetensors slice (so a rank reads only its rows or
columns from the file) or a tensor.

With the CPU kernels, `pack_linears` then hands each linear layer's weight (and the LM head's) to oneDNN once, in
its blocked layout (`llm_kernels.cpu.linear`), and drops the dense copy (but an embedding's, which a tied head
shares).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engine.parallel_state import TensorParallel
from llm_kernels.cpu import linear as cpu_linear


@dataclass(frozen=True, slots=True)
class Shard:
    """Rows `start:start + size` (along `dim`) of one checkpoint tensor, as this rank holds them."""

    size: int
    start: int


def read(source: Any, dim: int, start: int, size: int) -> torch.Tensor:
    """`size` rows (dim 0) or columns (dim 1) of `source` from `start`: only those are read from a file."""
    if isinstance(source, torch.Tensor):
        return source.narrow(dim, start, size)
    return source[start:start + size] if dim == 0 else source[:, start:start + size]


def read_all(source: Any) -> torch.Tensor:
    """The whole of `source` (a tensor, or a safetensors slice)."""
    return source if isinstance(source, torch.Tensor) else source[:]


def _copy(target: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if target.shape != tensor.shape:
        raise ValueError(f"weight {name} has shape {tuple(tensor.shape)} here, expected {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(tensor)


def load_whole(param: torch.nn.Parameter, source: Any, shard: int | None = None) -> None:
    """The loader of a parameter every rank holds whole (norms, a row-parallel layer's bias)."""
    _copy(param, read_all(source), "(replicated)")


class _Packable:
    """A layer whose weight `pack_linears` may have packed for oneDNN (`packed`; else None: `F.linear`)."""

    packed: torch.Tensor | None = None

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) if self.packed is None else cpu_linear.linear(x, self.packed)


class ColumnParallelLinear(_Packable, torch.nn.Linear):
    """y = x W^T (+ b) for this rank's slice of the output features: one `Shard` per fused checkpoint tensor."""

    def __init__(self, in_features: int, shards: list[Shard], bias: bool) -> None:
        super().__init__(in_features, sum(s.size for s in shards), bias=bias)
        self.shards = shards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the output features."""
        y = self._product(x)
        return y if self.bias is None else y + self.bias

    def load(self, param: torch.nn.Parameter, source: Any, shard: int | None = None) -> None:
        """The weight's or the bias's rows of checkpoint tensor `shard` (of the fused ones) for this rank."""
        index = 0 if shard is None else shard
        offset = sum(s.size for s in self.shards[:index])
        part = self.shards[index]
        _copy(param.narrow(0, offset, part.size), read(source, 0, part.start, part.size), f"shard {index}")


class RowParallelLinear(_Packable, torch.nn.Linear):
    """y = sum over ranks of x_r W_r^T, then + b: this rank holds input features `start:start + size`."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TensorParallel) -> None:
        local = tp.split(in_features, "the input features of a row-parallel layer")
        super().__init__(local, out_features, bias=bias)
        self.tp, self.start = tp, tp.rank * local

    def load(self, param: torch.nn.Parameter, source: Any, shard: int | None = None) -> None:
        """The weight's columns for this rank; the bias whole."""
        if param is self.bias:
            load_whole(param, source)
        else:
            _copy(param, read(source, 1, self.start, self.in_features), "(row-parallel)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The full output on every rank."""
        y = self.tp.all_reduce(self._product(x))
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(torch.nn.Module):
    """Token embeddings, this rank holding rows `start:start + local` of the vocabulary padded to a multiple of
    the ranks (the padding rows are zeros)."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp, self.vocab_size = tp, vocab_size
        self.local = -(-vocab_size // tp.size)
        self.start = tp.rank * self.local
        self.weight = torch.nn.Parameter(torch.empty(self.local, hidden_size))

    def load(self, param: torch.nn.Parameter, source: Any, shard: int | None = None) -> None:
        """This rank's rows of the vocabulary, zeros past its end."""
        rows = max(0, min(self.local, self.vocab_size - self.start))
        with torch.no_grad():
            param[rows:].zero_()
        _copy(param[:rows], read(source, 0, self.start, rows), "(vocabulary-parallel)")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [T] -> [T, hidden] on every rank."""
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        mine = (input_ids >= self.start) & (input_ids < self.start + self.local)
        x = F.embedding((input_ids - self.start) * mine, self.weight) * mine.unsqueeze(1).to(self.weight.dtype)
        return self.tp.all_reduce(x)


class ParallelLMHead(_Packable, VocabParallelEmbedding):
    """The LM head over the same vocabulary slices: rank 0 gathers the float32 logits, the others get None."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Hidden states [N, hidden] -> float32 logits [N, vocab] on rank 0."""
        logits = self.tp.gather_last_dim(self._product(hidden).float())
        return None if logits is None else logits[:, :self.vocab_size]


def pack_linears(model: torch.nn.Module) -> int:
    """Pack the weight of every linear layer and LM head of `model` for oneDNN where it can take it, dropping the
    dense weight unless an embedding uses it too; the number packed."""
    embedding_weights = {id(m.weight) for m in model.modules()
                         if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)}
    count = 0
    for module in model.modules():
        if isinstance(module, _Packable) and module.weight is not None:
            packed = cpu_linear.pack(module.weight)
            if packed is None:
                continue
            module.packed = packed
            if id(module.weight) not in embedding_weights:
                module.weight = None
            count += 1
    return count
