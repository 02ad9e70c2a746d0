"""The engine offline with and without its malloc thresholds (engine/cpu_malloc.py): one fresh process per side,
`MALLOC_TOP_PAD_` set to glibc's default turns them off (a user's own MALLOC_* setting is kept). Default model, 64
random prompts of 21-255 tokens, N new tokens each, 3 runs after a small warm-up generate; prints the time and the
minor page faults per processed token of each run.

    python benchmarks/results/cpu-malloc/faults_ab.py OUTPUT_LEN    # one side; run it with and without the variable
"""

import random
import resource
import sys
import time

from engine import LLM, SamplingParams

llm = LLM(cpu_threads=2)
rng = random.Random(0)
out = int(sys.argv[1]) if len(sys.argv) > 1 else 1
params = SamplingParams(max_tokens=out, temperature=0.6, ignore_eos=True, seed=1)


def prompts(n: int) -> list[list[int]]:
    return [[rng.randrange(10, 4000) for _ in range(rng.randint(21, 255))] for _ in range(n)]


llm.generate(prompts(8), params)
for r in range(3):
    batch = prompts(64)
    n = sum(map(len, batch))
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    llm.generate(batch, params)
    dt = time.perf_counter() - t
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    print(f"run {r}: {n} prompt tokens, {out} new each: {dt * 1000:.0f} ms, {faults} minor faults "
          f"({faults * 4 / (n + 64 * out):.1f} KiB per token)", flush=True)
