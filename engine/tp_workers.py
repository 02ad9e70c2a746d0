"""Tensor-parallel worker processes: ranks 1..N-1 of an engine whose rank 0 runs in the user's process.

On one machine the engine starts them itself: fresh interpreters (`engine.tp_workers.main`, so the user's
script is not re-imported as multiprocessing's spawn would), told their rank and the engine's settings on stdin.
Each joins the process group, loads its slices of the model, and then runs every step rank 0 broadcasts until
rank 0 says stop. They never outlive rank 0: the kernel kills them when it dies (PR_SET_PDEATHSIG), `stop` kills
what does not exit in time, and a finalizer stops them at interpreter exit.

On several machines an external launcher (`torchrun`, which sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK)
starts every rank; `launched_rank()` tells a process which it is, and ranks > 0 call `serve_steps` instead of
building an engine.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import llm_kernels
from engine.config import EngineConfig, ModelConfig, launched_by_torchrun
from engine.parallel_state import TensorParallel, destroy_group, init_group
from engine.step_inputs import BroadcastChannel, PipeChannel, StepChannel

if TYPE_CHECKING:
    from engine.model_runner import ModelRunner

logger = logging.getLogger(__name__)

GROUP_TIMEOUT_S = 600.0     # a collective that waits this long fails (a worker that died fails it at once)
WORKER_CODE = "from engine.tp_workers import main; main()"      # what a worker process runs


def check_shardable(cfg: ModelConfig, size: int) -> None:
    """A ValueError naming what cannot be split over `size` ranks (before any process is started): the layers'
    own rules, asked of rank 0."""
    tp = TensorParallel(0, size)
    tp.split(cfg.num_heads, "num_attention_heads")
    tp.split(cfg.intermediate_size, "intermediate_size")
    if "moe_intermediate_size" in cfg.raw:          # every expert is split as the dense MLP is
        tp.split(cfg.raw["moe_intermediate_size"], "moe_intermediate_size")
    tp.kv_heads(cfg.num_kv_heads)


def launched_rank() -> int | None:
    """This process's rank when an external launcher started the ranks (WORLD_SIZE > 1 and RANK set)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else None


class TPWorkers:
    """The worker processes of one engine (none when an external launcher started them)."""

    def __init__(self, procs: list[subprocess.Popen], init_method: str, pipes: list[int]) -> None:
        self.procs = procs
        self.init_method = init_method
        self.pipes = pipes                  # the write ends of the workers' step pipes (none under a launcher)

    @classmethod
    def start(cls, config: EngineConfig) -> TPWorkers:
        """Start ranks 1..N-1 on this machine (or, under a launcher, none: they were started with rank 0)."""
        if launched_rank() is not None:
            return cls([], "env://", [])
        with socket.socket() as probe:              # a free port for the group's rendezvous
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        init_method = f"tcp://127.0.0.1:{port}"
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        settings["kernels"] = config.kernels or llm_kernels.configured_backend()     # rank 0's, not the env's
        settings["speculative_config"] = None        # rank 0 drafts; a worker computes the drafts it is sent
        package_root = str(Path(__file__).resolve().parents[1])      # where this `engine` was imported from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                        os.environ.get("PYTHONPATH")]))}
        procs, pipes = [], []
        for rank in range(1, config.tensor_parallel_size):
            read_end, write_end = os.pipe()
            proc = subprocess.Popen([sys.executable, "-c", WORKER_CODE], stdin=subprocess.PIPE, env=env,
                                    pass_fds=(read_end,))
            os.close(read_end)
            proc.stdin.write(json.dumps({"rank": rank, "init_method": init_method, "parent": os.getpid(),
                                         "pipe": read_end, "config": settings}).encode())
            proc.stdin.close()
            procs.append(proc)
            pipes.append(write_end)
        return cls(procs, init_method, pipes)

    @classmethod
    def start_engine(cls, config: EngineConfig, model_config: ModelConfig, max_model_len: int,
                     eos_token_ids: list[int]) -> tuple[ModelRunner, TPWorkers]:
        """Rank 0 of a tensor-parallel engine: start the workers, join the group with them, load this rank's
        slices. On failure nothing is left running."""
        from engine.model_runner import ModelRunner

        check_shardable(model_config, config.tensor_parallel_size)
        workers = cls.start(config)
        try:
            tp = TensorParallel(0, config.tensor_parallel_size)
            workers.join_group(tp, config.torch_device(0))
            runner = ModelRunner(config, model_config, max_model_len, eos_token_ids, tp)
        except BaseException:
            workers.shutdown(None)
            raise
        runner.channel = (PipeChannel(workers.pipes) if workers.pipes
                          else BroadcastChannel(config.torch_device(0)))
        return runner, workers

    def join_group(self, tp: TensorParallel, device: torch.device) -> None:
        """Rank 0 joins the process group, watching the workers meanwhile: one that exits before it has joined
        (a broken environment, a bad device) is a RuntimeError within a fraction of a second, not a wait for the
        group's timeout. (The abandoned rendezvous thread ends at that timeout.)"""
        failed: list[BaseException] = []
        done = threading.Event()

        def rendezvous() -> None:
            try:
                init_group(tp, device, self.init_method, GROUP_TIMEOUT_S)
            except BaseException as exc:
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=rendezvous, name="tp-rendezvous", daemon=True).start()
        while not done.wait(0.1):
            self.check()
        if failed:
            raise failed[0]

    def shutdown(self, channel: StepChannel | None) -> None:
        """Rank 0: tell the workers to stop, wait for them (killing what hangs), leave the group. Without a
        channel (the engine failed to start) they are killed."""
        with contextlib.suppress(Exception):       # a worker that died cannot take the stop
            if channel is not None and all(proc.poll() is None for proc in self.procs):
                channel.send_stop()
        for fd in self.pipes:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipes = []
        self.stop(timeout=10.0 if channel is not None else 0.0)
        destroy_group()

    def check(self, cause: BaseException | None = None, wait_s: float = 2.0) -> None:
        """A RuntimeError naming the first worker that has exited, if one has. After a failed collective (`cause`),
        wait a little for a dying worker to be seen exiting."""
        deadline = time.monotonic() + (wait_s if cause is not None else 0)
        while True:
            for rank, proc in enumerate(self.procs, start=1):
                if proc.poll() is not None:
                    raise RuntimeError(f"tensor-parallel worker (rank {rank}, pid {proc.pid}) exited with status "
                                       f"{proc.returncode}") from cause
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` seconds for the workers to exit (after rank 0's stop), then kill the rest."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve_if_launched_worker(config: EngineConfig) -> None:
    """Under an external launcher, a rank > 0 serves rank 0's steps here and then exits the process (SystemExit
    0) when rank 0's engine closes: its `LLM(...)` never returns. Rank 0, and engines started without a
    launcher, go on."""
    rank = launched_rank()
    if rank is None or config.tensor_parallel_size == 1:
        return
    world = int(os.environ["WORLD_SIZE"])
    if world != config.tensor_parallel_size:
        raise ValueError(f"WORLD_SIZE is {world} but tensor_parallel_size is {config.tensor_parallel_size}")
    if rank > 0:
        serve_steps(config, TensorParallel(rank, world), "env://")
        raise SystemExit(0)


def serve_steps(config: EngineConfig, tp: TensorParallel, init_method: str, pipe: int | None = None) -> None:
    """A worker's life: join the group, load this rank's slices, run each step rank 0 hands over (through
    `pipe`, or by broadcast under a launcher) until it says stop."""
    from engine.model_runner import ModelRunner

    model_config = ModelConfig.from_dir(config.model)
    init_group(tp, config.torch_device(tp.rank), init_method, GROUP_TIMEOUT_S)
    try:
        runner = ModelRunner(config, model_config, config.resolved_max_model_len(model_config),
                             model_config.eos_token_ids, tp)
        channel = PipeChannel([pipe]) if pipe is not None else BroadcastChannel(config.torch_device(tp.rank))
        while (step := channel.receive()) is not None:
            runner.forward(step)
    finally:
        destroy_group()


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux); exit now if it already has."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def main() -> None:
    """A worker process's entry: its orders (rank, rendezvous, the engine's settings) come as JSON on stdin."""
    order = json.loads(sys.stdin.read())
    _die_with_parent(order["parent"])
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s tp-rank-{order['rank']} %(name)s: %(message)s")
    config = EngineConfig(**order["config"])
    serve_steps(config, TensorParallel(order["rank"], config.tensor_parallel_size), order["init_method"],
                order["pipe"])

