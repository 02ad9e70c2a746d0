"""CUDA graphs for decode steps: the model's forward replayed without launching its kernels from Python.

A decode step (one new token per sequence) runs the graph captured for the smallest padded batch size that holds
it. Each graph reads static buffers that a step fills in first: rows
0..n-1 hold the step's sequences, the padding rows attend to one cached token of block 0 and write nothing
(cache slot -1, which `llm_kernels.store_kv` skips). The block tables are as wide as `max_model_len` needs, so
every kernel sees the same shapes (and the decode kernel the same split count) at capture and at replay.
Prefill and mixed steps run eagerly.

Given the model's LM head and the engine's `sample` kernel, a second graph per size draws the step's tokens from
the forward's hidden states: the logits, then the kernel over static parameter buffers (temperature, top-k, top-p,
min-p, seed and position per row; padding rows are greedy). A step whose every row needs nothing but the kernel
(`Sampler.kernel_only`) replays both graphs and reads back only the tokens; any other step samples eagerly from
the forward graph's hidden states. A draw depends only on the row's logits, seed and position, so both ways draw
the same token from the same logits (the graph's logits are those of the padded batch, which in bf16 may round
apart from those of the step's rows alone, as logits already do between batch sizes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np
import torch

from engine.models.attention import AttentionMetadata
from engine.sampler import SamplingRows

logger = logging.getLogger(__name__)

PADDED_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
# The sample kernel's parameter buffers (SamplingRows' fields): dtype, and the value of a padding row (greedy).
_SAMPLING_PARAMS = {"temperature": (torch.float32, 0.0), "top_p": (torch.float32, 1.0), "min_p": (torch.float32, 0.0),
                    "top_k": (torch.int32, 0), "seeds": (torch.int64, 0), "drawn_at": (torch.int64, 0)}
_CAPTURE_LOCK = threading.Lock()      # one engine captures at a time (torch supports one capture per process)


class DecodeGraphs:
    """One captured forward per padded batch size up to `max_batch` (the most sequences a decode step can hold),
    sharing one memory pool (the largest captured first). Captured and replayed on `device`, made current.

    With `logits` (hidden states -> float32 logits) and `sample` (the `llm_kernels.api.sample` contract), also one
    sampling graph per size (`run_sampled`); if capturing those fails, the engine samples eagerly (logged).

    `capture=False` keeps the same static buffers and padding but calls the model (and the sampler) directly: the
    CPU tests use it to check the padding, and nothing else should.
    """

    def __init__(self, model: Callable[..., torch.Tensor], max_batch: int, max_blocks_per_seq: int,
                 device: torch.device, capture: bool = True,
                 logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 sample: Callable[..., torch.Tensor] | None = None) -> None:
        self.sizes = sorted({size for size in PADDED_SIZES if size < max_batch} | {max_batch})
        largest = self.sizes[-1]
        self.input_ids = torch.zeros(largest, dtype=torch.int64, device=device)
        self.positions = torch.zeros(largest, dtype=torch.int64, device=device)
        self.slots = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(largest, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(largest, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.arange(largest + 1, dtype=torch.int32, device=device)
        self._params: dict[str, torch.Tensor] = {}
        if logits is not None and sample is not None:
            self._params = {name: torch.full((largest,), pad, dtype=dtype, device=device)
                            for name, (dtype, pad) in _SAMPLING_PARAMS.items()}
        # Pinned host twins of the buffers a step fills: its lists are written there, then copied without a
        # stream sync or a driver staging copy (engine/transfer.py). The event marks the last copies out of them.
        pinned = torch.device(device).type == "cuda"
        self._host = {name: torch.empty(buffer.shape, dtype=buffer.dtype, pin_memory=pinned)
                      for name, buffer in self._filled().items()}
        self._copied = torch.cuda.Event() if pinned else None
        self._model, self._logits, self._sample = model, logits, sample
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self._sample_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._tokens: dict[int, torch.Tensor] = {}
        if capture:
            with _CAPTURE_LOCK, torch.inference_mode(), torch.cuda.device(device):
                pool = self._capture(self._forward, self._graphs, self._outputs, None, device)
                if self._params:
                    try:       # the stream context restores the current stream should a capture fail
                        with torch.cuda.stream(torch.cuda.current_stream(device)):
                            self._capture(self._draw, self._sample_graphs, self._tokens, pool, device)
                    except RuntimeError:
                        torch.cuda.synchronize(device)     # an error that broke the device is raised here
                        logger.warning("capturing the sampler in CUDA graphs failed; decode steps sample eagerly",
                                       exc_info=True)
                        self._sample_graphs, self._tokens, self._params = {}, {}, {}

    def _capture(self, step: Callable[[int], torch.Tensor], graphs: dict[int, torch.cuda.CUDAGraph],
                 outputs: dict[int, torch.Tensor], pool: tuple | None, device: torch.device) -> tuple:
        """One graph of `step(size)` per size, the largest first, in one memory pool (`pool`, or a new one);
        returns the pool."""
        stream = torch.cuda.Stream(device)       # torch's shared default capture stream is on one device only
        for size in reversed(self.sizes):
            step(size)                           # compiles and warms up outside the graph
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA work of other threads (another engine) does not void this capture.
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                outputs[size] = step(size)
            pool = graph.pool()
            graphs[size] = graph
        return pool

    @property
    def max_batch(self) -> int:
        """The largest decode batch a graph holds."""
        return self.sizes[-1]

    @property
    def samples(self) -> bool:
        """Whether `run_sampled` can draw a step's tokens (the sampler was given, and captured where capturing)."""
        return bool(self._params)

    def _filled(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "positions": self.positions, "slots": self.slots,
                "seq_lens": self.seq_lens, "block_tables": self.block_tables, **self._params}

    def _forward(self, size: int) -> torch.Tensor:
        meta = AttentionMetadata(self.slots[:size], self.block_tables[:size], self.seq_lens[:size],
                                 self.cu_seqlens_q[:size + 1], 1)
        return self._model(self.input_ids[:size], self.positions[:size], meta)

    def _draw(self, size: int) -> torch.Tensor:
        p = {name: buffer[:size] for name, buffer in self._params.items()}
        return self._sample(self._logits(self._outputs[size] if self._graphs else self._forward(size)),
                            p["temperature"], p["top_k"], p["top_p"], p["min_p"], p["seeds"], p["drawn_at"])

    def run(self, input_ids: list[int], positions: list[int], slots: list[int], block_tables: np.ndarray,
            seq_lens: list[int]) -> torch.Tensor:
        """Hidden states [n, hidden] of a decode step of n <= max_batch sequences (one token each); `block_tables`
        [n, width]. The result is a view of a graph's output: valid until the next `run` (the graphs share their
        memory)."""
        size = self._fill(input_ids, positions, slots, block_tables, seq_lens, None)
        if self._graphs:
            with torch.cuda.device(self.input_ids.device):
                self._graphs[size].replay()
            return self._outputs[size][:len(input_ids)]
        return self._forward(size)[:len(input_ids)]

    def run_sampled(self, input_ids: list[int], positions: list[int], slots: list[int], block_tables: np.ndarray,
                    seq_lens: list[int], rows: SamplingRows) -> torch.Tensor:
        """`run`'s step, and the token each of its sequences draws with the sample kernel's parameters `rows`
        (only where `samples`): int64 [n], valid until the next `run` or `run_sampled`."""
        size = self._fill(input_ids, positions, slots, block_tables, seq_lens, rows)
        if self._graphs:
            with torch.cuda.device(self.input_ids.device):
                self._graphs[size].replay()
                self._sample_graphs[size].replay()
            return self._tokens[size][:len(input_ids)]
        return self._draw(size)[:len(input_ids)]

    def _fill(self, input_ids: list[int], positions: list[int], slots: list[int], block_tables: np.ndarray,
              seq_lens: list[int], rows: SamplingRows | None) -> int:
        """Copy a step's inputs (and its sampling parameters) into the static buffers; the padded size to replay."""
        n = len(input_ids)
        size = next(s for s in self.sizes if s >= n)
        width = block_tables.shape[1]
        if self._copied is not None:
            self._copied.synchronize()        # the previous step's copies have left the pinned twins
        host, device = self._host, self._filled()
        # Padding rows (a previous, larger step may have filled them): no write, one cached token of block 0,
        # and a greedy draw.
        values = {"input_ids": (input_ids, 0), "positions": (positions, 0), "slots": (slots, -1),
                  "seq_lens": (seq_lens, 1)}
        if rows is not None:
            values.update((name, (getattr(rows, name), _SAMPLING_PARAMS[name][1])) for name in self._params)
        for name, (listed, padding) in values.items():
            staged = host[name].numpy()
            staged[:n] = listed
            staged[n:size] = padding
            device[name][:size].copy_(host[name][:size], non_blocking=True)
        staged = host["block_tables"].numpy()
        staged[:n, :width] = block_tables
        staged[n:size, 0] = 0
        self.block_tables[:size, :width].copy_(host["block_tables"][:size, :width], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        return size
