"""Is the batch-32 random workload's pair ratio biased by the order within a pair? Two engines per invocation,
16 pairs, the first named engine first in each pair: `plain plain` (two identical engines without speculation),
`plain spec` (the benchmark's order) or `spec plain`. Prints the ratio of medians and the median pair ratio
(second over first), and how many pairs were below 1. Run from a checkout: PYTHONPATH=. python <this file> A B
"""
import statistics
import sys

from benchmarks.speculative import random_prompts, run
from engine import DEFAULT_MODEL, LLM, SamplingParams

SPEC = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
names = sys.argv[1:3]
engines = [LLM(DEFAULT_MODEL, speculative_config=SPEC if name == "spec" else None) for name in names]
params = SamplingParams(temperature=0.6, seed=0, max_tokens=128, ignore_eos=True)
prompts = random_prompts(32, engines[0].get_tokenizer().vocab_size)
for llm in engines:
    run(llm, prompts[:2], params, 32)
rates: list[list[float]] = [[], []]
for _ in range(16):
    for i, llm in enumerate(engines):
        rates[i].append(run(llm, prompts, params, 32)[0])
pairs = [b / a for a, b in zip(*rates)]
print(f"{names[0]} then {names[1]}: medians {statistics.median(rates[0]):.1f} and {statistics.median(rates[1]):.1f} "
      f"tok/s, ratio {statistics.median(rates[1]) / statistics.median(rates[0]):.3f}, median pair ratio "
      f"{statistics.median(pairs):.3f}, {sum(r < 1 for r in pairs)} of 16 pairs below 1", flush=True)
