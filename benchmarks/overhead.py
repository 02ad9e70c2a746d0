"""Scheduler/runner overhead: CPU time per engine step spent outside the model's forward.

The model is replaced by a stub that costs nothing (it returns precomputed hidden states and logits), so
what is timed is everything else a step does: scheduling, block management, input preparation, sampling
bookkeeping, detokenization and output processing, for 1, 64 and 256 running sequences in steady decode.
The requests are not streamed, so their text is detokenized when they finish (which the timed steps never see);
with `--stream` they are, and every step detokenizes every new token.

With `--tensor-parallel-size N` the model cannot be stubbed (the workers run theirs): the real model runs over N
ranks, its forward (collectives included) is timed apart as `forward_ms`, and the overhead is what rank 0 does
outside it (handing the step to the workers included). Compare with `--tensor-parallel-size 1`, which then also
runs the real model.
The sampling kernel itself (the engine's `sample` kernel, the torch reference on the CPU; on a GPU it would be device
work) is timed apart and reported beside the overhead, not in it.

    python -m benchmarks.overhead [--model PATH] [--seqs 1 64 256] [--steps 200] [--stream] [--prompt-len N]
        [--tensor-parallel-size N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import torch

from engine import DEFAULT_MODEL, LLMEngine, SamplingParams
from engine.config import EngineConfig
from engine.sampler import Sampler


class StubModel(torch.nn.Module):
    """Stands in for the transformer: constant hidden states and logits, no compute worth measuring."""

    def __init__(self, hidden_size: int, vocab_size: int, max_tokens: int, max_rows: int = 8192) -> None:
        super().__init__()
        self.hidden = torch.zeros(max_tokens, hidden_size)
        self.logits = torch.randn(max_rows, vocab_size, generator=torch.Generator().manual_seed(0))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta) -> torch.Tensor:
        return self.hidden[: input_ids.shape[0]]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.logits[: hidden.shape[0]]      # no penalties, bias or min_tokens here: never written


class KernelClock:
    """Wraps the sampling kernel of the engine's sampler (its KernelSet's `sample`) to add up the CPU time spent
    inside it."""

    def __init__(self, sampler: Sampler) -> None:
        self.seconds = 0.0
        self.sampler = sampler
        self._kernels = sampler.kernels

    def __enter__(self) -> KernelClock:
        sample = self._kernels.sample

        def timed(*args):
            start = time.process_time()
            try:
                return sample(*args)
            finally:
                self.seconds += time.process_time() - start
        self.sampler.kernels = dataclasses.replace(self._kernels, sample=timed)
        return self

    def __exit__(self, *exc) -> None:
        self.sampler.kernels = self._kernels


class ForwardClock:
    """Wraps rank 0's forward (`ModelRunner._forward`) to add up the CPU time spent inside it."""

    def __init__(self, runner) -> None:
        self.seconds = 0.0
        forward = runner._forward

        def timed(inputs):
            start = time.process_time()
            try:
                return forward(inputs)
            finally:
                self.seconds += time.process_time() - start
        runner._forward = timed


def measure(model: str, num_seqs: int, steps: int, temperature: float, tensor_parallel_size: int | None,
            stream: bool = False, prompt_len: int | None = None) -> dict:
    """CPU milliseconds per decode step with `num_seqs` sequences running: outside the model and the sampling
    kernel (mean, p50, p90), and inside the sampling kernel (mean). With `tensor_parallel_size`, the real model
    over that many ranks, and its forward's mean too. `prompt_len`: prompts of that many token ids (distinct per
    sequence, so nothing is shared), in place of the short text prompts, for the per-step cost of long contexts."""
    batched = max(8192, num_seqs * (prompt_len or 0))
    llm_engine = LLMEngine(EngineConfig(model=model, max_num_seqs=max(num_seqs, 1), max_num_batched_tokens=batched,
                                        max_model_len=prompt_len + steps + 64 if prompt_len else None,
                                        device="cpu", tensor_parallel_size=tensor_parallel_size or 1))
    cfg = llm_engine.model_config
    forward = ForwardClock(llm_engine.runner) if tensor_parallel_size else None
    if forward is None:
        llm_engine.runner.model = StubModel(cfg.hidden_size, cfg.vocab_size, batched)
    params = SamplingParams(temperature=temperature, max_tokens=steps + 8, ignore_eos=True, seed=1)
    for i in range(num_seqs):
        prompt = ([(i * prompt_len + j) % (cfg.vocab_size - 1) + 1 for j in range(prompt_len)] if prompt_len
                  else f"def function_number_{i}(argument):\n    return")
        llm_engine.add_request(f"r{i}", prompt, params, stream=stream)
    llm_engine.step()                                   # the prefill step, not counted
    overhead, sampling, forwards, wall = [], [], [], 0.0
    with KernelClock(llm_engine.runner.sampler) as clock:
        for _ in range(steps):
            inside, forward_before = clock.seconds, forward.seconds if forward else 0.0
            start, wall_start = time.process_time(), time.perf_counter()
            llm_engine.step()
            wall += time.perf_counter() - wall_start
            sampling.append(clock.seconds - inside)
            forwards.append((forward.seconds if forward else 0.0) - forward_before)
            overhead.append(time.process_time() - start - sampling[-1] - forwards[-1])
    assert len(llm_engine.scheduler.running) == num_seqs, "sequences finished early"
    llm_engine.close()
    overhead.sort()
    return {"num_seqs": num_seqs, "mean_ms": 1e3 * sum(overhead) / steps, "p50_ms": 1e3 * overhead[steps // 2],
            "p90_ms": 1e3 * overhead[int(steps * 0.9)], "sample_kernel_ms": 1e3 * sum(sampling) / steps,
            "forward_ms": 1e3 * sum(forwards) / steps, "step_wall_ms": 1e3 * wall / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--seqs", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--tensor-parallel-size", type=int, default=None,
                        help="run the real model over this many ranks and time its forward apart (1: one process)")
    parser.add_argument("--stream", action="store_true", help="stream the requests (text detokenized every step)")
    parser.add_argument("--prompt-len", type=int, default=None,
                        help="prompts of this many token ids (long contexts), not short text prompts")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [measure(args.model, n, args.steps, args.temperature, args.tensor_parallel_size, args.stream,
                       args.prompt_len) for n in args.seqs]
    model = (f"the real model over {args.tensor_parallel_size} rank(s), forward apart" if args.tensor_parallel_size
             else "model stubbed")
    print(f"engine step overhead ({model}, sampling kernel apart), {platform.machine()}, "
          f"temperature {args.temperature}, {'streamed' if args.stream else 'not streamed'}, rank 0's CPU time, "
          f"prompts of {args.prompt_len or 'about 15'} tokens")
    print(f"{'seqs':>6} {'mean ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'sample kernel ms':>17} {'forward ms':>11} "
          f"{'step wall ms':>13}")
    for r in results:
        print(f"{r['num_seqs']:>6} {r['mean_ms']:>9.3f} {r['p50_ms']:>9.3f} {r['p90_ms']:>9.3f} "
              f"{r['sample_kernel_ms']:>17.3f} {r['forward_ms']:>11.3f} {r['step_wall_ms']:>13.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
