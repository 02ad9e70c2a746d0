"""Milliseconds in Speculation.propose and observe per run (closed batch of 32, random workload, T 0.6, 128 tokens
each), and the run's draft tokens. Run from a checkout: PYTHONPATH=. python <this file>
"""
import time

from benchmarks.speculative import random_prompts, run
from engine import DEFAULT_MODEL, LLM, SamplingParams

SPEC = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
spec = LLM(DEFAULT_MODEL, speculative_config=SPEC)
params = SamplingParams(temperature=0.6, seed=0, max_tokens=128, ignore_eos=True)
prompts = random_prompts(32, spec.get_tokenizer().vocab_size)
run(spec, prompts[:2], params, 32)
s = spec.engine.speculation
spent = {"propose": 0.0, "observe": 0.0}
for name in spent:
    m = getattr(s, name)
    def timed(*a, m=m, name=name, **k):
        t = time.perf_counter()
        r = m(*a, **k)
        spent[name] += time.perf_counter() - t
        return r
    setattr(s, name, timed)
for _run in range(3):
    spent.update(propose=0.0, observe=0.0)
    before = spec.engine.stats()
    rate, _ = run(spec, prompts, params, 32)
    drafts = spec.engine.stats().spec_num_draft_tokens - before.spec_num_draft_tokens
    print(f"{rate:.0f} tok/s drafts {drafts} propose {spent['propose'] * 1e3:.2f} ms observe "
          f"{spent['observe'] * 1e3:.2f} ms", flush=True)
