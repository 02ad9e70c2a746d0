"""CUDA graphs for decode steps: the model's forward replayed without launching its kernels from Python.

A decode step (one new token per sequence) runs the graph captured for the smallest padded batch size that holds
it. Each graph reads static buffers that a step fills in first: rows
0..n-1 hold the step's sequences, the padding rows attend to one cached token of block 0 and write nothing
(cache slot -1, which `llm_kernels.store_kv` skips). The block tables are as wide as `max_model_len` needs, so
every kernel sees the same shapes (and the decode kernel the same split count) at capture and at replay.
Prefill and mixed steps run eagerly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from engine.models.attention import AttentionMetadata

PADDED_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
_CAPTURE_LOCK = threading.Lock()      # one engine captures at a time (torch supports one capture per process)


class DecodeGraphs:
    """One captured forward per padded batch size up to `max_batch` (the most sequences a decode step can hold),
    sharing one memory pool (the largest captured first). Captured and replayed on `device`, made current.

    `capture=False` keeps the same static buffers and padding but calls the model directly: the CPU tests use it
    to check the padding, and nothing else should.
    """

    def __init__(self, model: Callable[..., torch.Tensor], max_batch: int, max_blocks_per_seq: int,
                 device: torch.device, capture: bool = True) -> None:
        self.sizes = sorted({size for size in PADDED_SIZES if size < max_batch} | {max_batch})
        largest = self.sizes[-1]
        self.input_ids = torch.zeros(largest, dtype=torch.int64, device=device)
        self.positions = torch.zeros(largest, dtype=torch.int64, device=device)
        self.slots = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(largest, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(largest, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.arange(largest + 1, dtype=torch.int32, device=device)
        # Pinned host twins of the buffers a step fills: its lists are written there, then copied without a
        # stream sync or a driver staging copy (engine/transfer.py). The event marks the last copies out of them.
        pinned = torch.device(device).type == "cuda"
        self._host = {name: torch.empty(buffer.shape, dtype=buffer.dtype, pin_memory=pinned)
                      for name, buffer in self._filled().items()}
        self._copied = torch.cuda.Event() if pinned else None
        self._model = model
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        if capture:
            pool = None
            stream = torch.cuda.Stream(device)       # torch's shared default capture stream is on one device only
            with _CAPTURE_LOCK, torch.inference_mode(), torch.cuda.device(device):
                for size in reversed(self.sizes):
                    self._forward(size)              # compiles and warms up outside the graph
                    torch.cuda.synchronize(device)
                    graph = torch.cuda.CUDAGraph()
                    # thread_local: CUDA work of other threads (another engine) does not void this capture.
                    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                        self._outputs[size] = self._forward(size)
                    pool = graph.pool()
                    self._graphs[size] = graph

    @property
    def max_batch(self) -> int:
        """The largest decode batch a graph holds."""
        return self.sizes[-1]

    def _filled(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "positions": self.positions, "slots": self.slots,
                "seq_lens": self.seq_lens, "block_tables": self.block_tables}

    def _forward(self, size: int) -> torch.Tensor:
        meta = AttentionMetadata(self.slots[:size], self.block_tables[:size], self.seq_lens[:size],
                                 self.cu_seqlens_q[:size + 1], 1)
        return self._model(self.input_ids[:size], self.positions[:size], meta)

    def run(self, input_ids: list[int], positions: list[int], slots: list[int], block_tables: np.ndarray,
            seq_lens: list[int]) -> torch.Tensor:
        """Hidden states [n, hidden] of a decode step of n <= max_batch sequences (one token each); `block_tables`
        [n, width]. The result is a view of a graph's output: valid until the next `run` (the graphs share their
        memory)."""
        n = len(input_ids)
        size = next(s for s in self.sizes if s >= n)
        width = block_tables.shape[1]
        if self._copied is not None:
            self._copied.synchronize()        # the previous step's copies have left the pinned twins
        host, device = self._host, self._filled()
        values = {"input_ids": input_ids, "positions": positions, "slots": slots, "seq_lens": seq_lens}
        for name, listed in values.items():
            host[name].numpy()[:n] = listed
            device[name][:n].copy_(host[name][:n], non_blocking=True)
        host["block_tables"].numpy()[:n, :width] = block_tables
        self.block_tables[:n, :width].copy_(host["block_tables"][:n, :width], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        # Padding rows (a previous, larger step may have filled them): no write, one cached token of block 0.
        self.input_ids[n:size] = 0
        self.positions[n:size] = 0
        self.slots[n:size] = -1
        self.seq_lens[n:size] = 1
        self.block_tables[n:size, 0] = 0
        if self._graphs:
            with torch.cuda.device(self.input_ids.device):
                self._graphs[size].replay()
            return self._outputs[size][:n]
        return self._forward(size)[:n]
