"""The device work of one step as plain data (`StepInputs`), and how rank 0 hands it to tensor-parallel workers.

Rank 0's runner turns a SchedulerOutput into StepInputs; every rank then runs the same forward on them
(`ModelRunner.forward`): the workers need nothing else of the scheduler. Two channels carry them:

- `PipeChannel`, for workers the engine started on its own machine: the pickled StepInputs through one pipe per
  worker. Rank 0 does not wait for the workers to read (a pipe buffers the step) and a worker that died is a
  BrokenPipeError at once.
- `BroadcastChannel`, for ranks an external launcher started, maybe on other machines: the process group's
  broadcast of one packed int64 tensor after a fixed-size header (two broadcasts a step).

Measured on this 2-core machine (benchmarks/tp_channel.py, benchmarks/RESULTS.md), handing over a decode step of
1 to 256 sequences took 6-55 us through a pipe, 41-145 us through shared memory with semaphores and 230-850 us by
broadcast, hence pipes wherever they reach. (The all-reduces cost more: 0.6-3 ms each with gloo.)
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from engine.sequence import Sequence
from engine.transfer import to_device

_HEADER = 6          # kind (1 step, 0 stop), tokens, sequences, block-table width, sample rows, prompt rows


@dataclass(slots=True)
class StepInputs:
    """Token ids, positions and cache slots of the step's new tokens, packed; per sequence its cumulative query
    offsets, its tokens in the cache after the step and its block table (rows of int32 padded with block 0 to one
    width, `SchedulerOutput.block_tables`); the rows whose logits are sampled and those whose logits give prompt
    logprobs."""

    input_ids: list[int]
    positions: list[int]
    slots: list[int]
    cu_seqlens: list[int]
    seq_lens: list[int]
    block_tables: np.ndarray
    sample_rows: list[int]
    prompt_rows: list[int]

    @property
    def max_seqlen_q(self) -> int:
        """The most new tokens of one sequence (1: a decode step)."""
        if len(self.input_ids) == len(self.seq_lens):      # each sequence has at least one
            return 1
        return max(b - a for a, b in zip(self.cu_seqlens, self.cu_seqlens[1:]))


def padded_block_tables(seqs: list[Sequence]) -> np.ndarray:
    """The sequences' block tables from their lists, padded with block 0 to the longest (`StepInputs.block_tables`):
    for the draft model's steps, which the scheduler does not gather (engine/block_tables.py)."""
    width = max(len(seq.block_table) for seq in seqs)
    return np.array([seq.block_table + [0] * (width - len(seq.block_table)) for seq in seqs], dtype=np.int32)


class PipeChannel:
    """Rank 0 writes each step (or a stop, None) to every worker's pipe; a worker reads its own (`fd`)."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    def send(self, x: StepInputs | None) -> None:
        """Rank 0: one step to every worker (None: stop). BrokenPipeError if a worker has gone."""
        data = pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)
        message = len(data).to_bytes(8, "little") + data
        for fd in self.fds:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view):]

    def send_stop(self) -> None:
        """Rank 0: tell the workers to leave their loop."""
        self.send(None)

    def receive(self) -> StepInputs | None:
        """A worker: the next step, or None for a stop (or when rank 0 has gone: end of file)."""
        head = self._read(8)
        body = None if head is None else self._read(int.from_bytes(head, "little"))
        return None if body is None else pickle.loads(body)

    def close(self) -> None:
        """Close this side's ends."""
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def _read(self, size: int) -> bytes | None:
        chunks, left = [], size
        while left:
            chunk = os.read(self.fds[0], left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class BroadcastChannel:
    """Rank 0 sends each step's StepInputs (or a stop) to the other ranks, which receive them, over the process
    group's broadcast, on `device` (NCCL needs CUDA tensors; gloo takes CPU ones)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def send(self, x: StepInputs) -> None:
        """Rank 0: broadcast one step."""
        width = x.block_tables.shape[1]
        header = [1, len(x.input_ids), len(x.seq_lens), width, len(x.sample_rows), len(x.prompt_rows)]
        payload = (x.input_ids + x.positions + x.slots + x.cu_seqlens + x.seq_lens
                   + x.block_tables.ravel().tolist() + x.sample_rows + x.prompt_rows)
        dist.broadcast(to_device(header, torch.int64, self.device), src=0)
        dist.broadcast(to_device(payload, torch.int64, self.device), src=0)

    def send_stop(self) -> None:
        """Rank 0: tell the other ranks to leave their loop."""
        dist.broadcast(torch.zeros(_HEADER, dtype=torch.int64, device=self.device), src=0)

    def receive(self) -> StepInputs | None:
        """Ranks > 0: the next step, or None for a stop."""
        header = torch.empty(_HEADER, dtype=torch.int64, device=self.device)
        dist.broadcast(header, src=0)
        kind, tokens, seqs, width, samples, prompts = header.tolist()
        if kind == 0:
            return None
        payload = torch.empty(3 * tokens + 2 * seqs + 1 + seqs * width + samples + prompts, dtype=torch.int64,
                              device=self.device)
        dist.broadcast(payload, src=0)
        values = payload.tolist()
        parts, at = [], 0
        for size in (tokens, tokens, tokens, seqs + 1, seqs, seqs * width, samples, prompts):
            parts.append(values[at:at + size])
            at += size
        tables = np.array(parts[5], dtype=np.int32).reshape(seqs, width)
        return StepInputs(parts[0], parts[1], parts[2], parts[3], parts[4], tables, parts[6], parts[7])

    def close(self) -> None:
        """Nothing to close: the process group goes with the engine."""


StepChannel = PipeChannel | BroadcastChannel
