"""What structured outputs cost per engine step: B sequences constrained by a JSON schema against B unconstrained
ones, in steady decode, the real model (wall time per step, runs interleaved A, B, A, B). On a GPU, also our mask
kernel against xgrammar's own `apply_token_bitmask_inplace`.

    python -m benchmarks.structured [--model PATH] [--seqs 64] [--steps 40] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine import DEFAULT_MODEL, LLMEngine, SamplingParams, StructuredOutputsParams
from engine.config import EngineConfig

# A record whose text is long enough that no sequence can finish within the steps timed.
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "text"],
          "properties": {"id": {"type": "integer"}, "text": {"type": "string", "minLength": 1000}}}


def step_ms(llm_engine: LLMEngine, num_seqs: int, steps: int, constrained: bool, tag: str) -> float:
    """Mean wall milliseconds per decode step with `num_seqs` sequences running."""
    so = StructuredOutputsParams(json=SCHEMA) if constrained else None
    params = SamplingParams(temperature=1.0, max_tokens=steps + 16, ignore_eos=True, seed=0, structured_outputs=so)
    for i in range(num_seqs):
        llm_engine.add_request(f"{tag}-{i}", f"record {i}:", params)
    while len(llm_engine.scheduler.running) < num_seqs:       # compiled, admitted, prefilled
        llm_engine.step()
    llm_engine.step()
    start = time.perf_counter()
    for _ in range(steps):
        llm_engine.step()
    elapsed = (time.perf_counter() - start) / steps * 1e3
    assert len(llm_engine.scheduler.running) == num_seqs, "sequences finished early"
    for i in range(num_seqs):
        llm_engine.abort_request(f"{tag}-{i}")
    return elapsed


def kernel_us(vocab: int, batch: int) -> tuple[float, float]:
    """On CUDA: microseconds of our apply_token_bitmask against xgrammar's, for [batch, vocab] logits."""
    import xgrammar

    import llm_kernels

    logits = torch.randn(batch, vocab, device="cuda")
    bitmask = torch.randint(-(2 ** 31), 2 ** 31 - 1, (batch, (vocab + 31) // 32), dtype=torch.int64,
                            device="cuda").to(torch.int32)
    rows = torch.arange(batch, device="cuda")
    kernels = llm_kernels.select("cuda")
    timings = []
    for fn in (lambda: kernels.apply_token_bitmask(logits, bitmask, rows),
               lambda: xgrammar.apply_token_bitmask_inplace(logits, bitmask)):
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        timings.append((time.perf_counter() - start) / 200 * 1e6)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    llm_engine = LLMEngine(EngineConfig(model=args.model, max_num_seqs=args.seqs, max_num_batched_tokens=8192))
    plain, constrained = [], []
    for r in range(args.rounds):
        plain.append(step_ms(llm_engine, args.seqs, args.steps, False, f"p{r}"))
        constrained.append(step_ms(llm_engine, args.seqs, args.steps, True, f"c{r}"))
    print(f"{args.seqs} sequences, {args.steps} decode steps a run, {args.rounds} rounds interleaved, "
          f"{llm_engine.runner.device}, {torch.get_num_threads()} threads")
    print(f"unconstrained: {', '.join(f'{t:.2f}' for t in plain)} ms/step")
    print(f"json schema:   {', '.join(f'{t:.2f}' for t in constrained)} ms/step")
    ratios = [c / p for c, p in zip(constrained, plain)]       # each round's pair ran back to back
    print(f"constrained / unconstrained, per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.3f}")
    if torch.cuda.is_available():
        for vocab in (32000, 151936):
            ours, theirs = kernel_us(vocab, args.seqs)
            print(f"mask kernel, [{args.seqs}, {vocab}]: ours {ours:.1f} us, xgrammar {theirs:.1f} us")


if __name__ == "__main__":
    main()
