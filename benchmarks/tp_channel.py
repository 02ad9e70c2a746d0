"""What a tensor-parallel step costs in communication, on 2 CPU processes (gloo): rank 0 handing a step's inputs to
rank 1, and the all-reduce a row-parallel layer makes, per decode step of B sequences. Three channels:

- broadcast: `BroadcastChannel` (engine/step_inputs.py), the process group's broadcast, in lockstep by nature;
- pipe: `PipeChannel`, what the engine uses for the workers it starts; rank 0 does not wait for the reader, so
  this is the cost per step of a stream of steps;
- shm: shared memory signalled with two semaphores (as nano-vllm does), in lockstep.

    python -m benchmarks.tp_channel [--batches 1 64 256] [--hidden 256 4096] [--steps 300]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import socket
import time
from multiprocessing import shared_memory

import numpy as np
import torch
import torch.distributed as dist

from engine.step_inputs import BroadcastChannel, PipeChannel, StepInputs

WIDTH = 16          # block-table entries per sequence (256 tokens of context in blocks of 16)


def decode_step(batch: int) -> StepInputs:
    """A decode step of `batch` sequences: one token each."""
    return StepInputs(list(range(batch)), [200] * batch, list(range(batch)), list(range(batch + 1)), [201] * batch,
                      np.tile(np.arange(WIDTH, dtype=np.int32), (batch, 1)), list(range(batch)), [])


def _channel_us(rank: int, step: StepInputs, steps: int, channel: BroadcastChannel | PipeChannel) -> float:
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        if rank == 0:
            channel.send(step)
        else:
            channel.receive()
    dist.barrier()
    return (time.perf_counter() - start) / steps * 1e6


def _shm_us(rank: int, step: StepInputs, steps: int, shm: shared_memory.SharedMemory, ready, done) -> float:
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        if rank == 0:
            data = pickle.dumps(step)
            shm.buf[:4] = len(data).to_bytes(4, "little")
            shm.buf[4:4 + len(data)] = data
            ready.release()
            done.acquire()
        else:
            ready.acquire()
            size = int.from_bytes(shm.buf[:4], "little")
            pickle.loads(shm.buf[4:4 + size])
            done.release()
    dist.barrier()
    return (time.perf_counter() - start) / steps * 1e6


def _all_reduce_us(batch: int, hidden: int, steps: int) -> float:
    x = torch.ones(batch, hidden)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        dist.all_reduce(x)
    dist.barrier()
    return (time.perf_counter() - start) / steps * 1e6


def _rank(rank: int, port: int, args: argparse.Namespace, shm_name: str, ready, done, fds, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    shm = shared_memory.SharedMemory(name=shm_name)
    cpu = torch.device("cpu")
    try:
        for batch in args.batches:
            step = decode_step(batch)
            pipe = PipeChannel([fds[1] if rank == 0 else fds[0]])
            row = {"batch": batch, "broadcast_us": _channel_us(rank, step, args.steps, BroadcastChannel(cpu)),
                   "pipe_us": _channel_us(rank, step, args.steps, pipe),
                   "shm_us": _shm_us(rank, step, args.steps, shm, ready, done)}
            for hidden in args.hidden:
                row[f"all_reduce_{hidden}_us"] = _all_reduce_us(batch, hidden, args.steps)
            if rank == 0:
                results.append(row)
    finally:
        shm.close()
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = mp.get_context("fork")            # the ranks inherit the pipe's ends
    fds = os.pipe()
    shm = shared_memory.SharedMemory(create=True, size=1 << 22)
    ready, done, results = ctx.Semaphore(0), ctx.Semaphore(0), ctx.Manager().list()
    try:
        procs = [ctx.Process(target=_rank, args=(r, port, args, shm.name, ready, done, fds, results))
                 for r in (0, 1)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
    finally:
        shm.close()
        shm.unlink()
    print("microseconds per decode step, 2 CPU processes, gloo (pipe: a stream of steps; the others in lockstep)")
    columns = ["batch", "broadcast_us", "pipe_us", "shm_us"] + [f"all_reduce_{h}_us" for h in args.hidden]
    print("".join(f"{c:>20}" for c in columns))
    for row in results:
        print("".join(f"{row[c]:>20.1f}" if isinstance(row[c], float) else f"{row[c]:>20}" for c in columns))


if __name__ == "__main__":
    main()
