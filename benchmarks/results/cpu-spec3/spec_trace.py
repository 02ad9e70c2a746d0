"""One closed batch of 32 random prompts, T=0.6, with and without n-gram speculation: steps, step time, drafting
sequences per step, proposal time."""
import statistics
import time

from benchmarks.speculative import random_prompts, run
from engine import DEFAULT_MODEL, LLM, SamplingParams

spec_cfg = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
plain, spec = LLM(DEFAULT_MODEL), LLM(DEFAULT_MODEL, speculative_config=spec_cfg)
params = SamplingParams(temperature=0.6, seed=0, max_tokens=128, ignore_eos=True)
prompts = random_prompts(32, plain.get_tokenizer().vocab_size)
run(plain, prompts[:2], params, 32)
run(spec, prompts[:2], params, 32)
def trace(llm):
    e = llm.engine
    log = []
    step = e.step
    def traced():
        t = time.perf_counter()
        out = step()
        log.append((time.perf_counter() - t, len(e.scheduler.running)))
        return out
    e.step = traced
    return log
for _round in range(2):
    for name, llm in (("plain", plain), ("spec", spec)):
        log = trace(llm)
        sp = llm.engine.speculation
        before = sp.counters() if sp else None
        rate, _ = run(llm, prompts, params, 32)
        del llm.engine.step
        extra = ""
        if sp:
            after = sp.counters()
            extra = " ".join(f"{k}={after[k]-before[k]}" for k in after)
        print(f"{name}: {rate:.0f} tok/s, steps {len(log)}, total {sum(s for s,_ in log):.3f} s, "
              f"median step {1e3*statistics.median(s for s,_ in log):.2f} ms, running at end-phase: "
              f"{[r for _, r in log[-12:]]} {extra}", flush=True)
