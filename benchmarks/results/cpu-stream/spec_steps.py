"""n-gram speculation at batch 32 on the random workload (closed batch, 128 tokens each, T 0.6): each runner step's
wall time, with and without drafts, beside a plain engine; and the time the speculating engine spends in
`Speculation.propose` and `observe`. Run from a checkout:
PYTHONPATH=. python benchmarks/results/cpu-stream/spec_steps.py
"""
import time

from benchmarks.speculative import random_prompts, run
from engine import DEFAULT_MODEL, LLM, SamplingParams

SPEC = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
spec, plain = LLM(DEFAULT_MODEL, speculative_config=SPEC), LLM(DEFAULT_MODEL)
params = SamplingParams(temperature=0.6, seed=0, max_tokens=128, ignore_eos=True)
prompts = random_prompts(32, spec.get_tokenizer().vocab_size)
spent = {"propose": 0.0, "observe": 0.0}


def timed_method(name: str):
    method = getattr(spec.engine.speculation, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = method(*args, **kwargs)
        spent[name] += time.perf_counter() - started
        return result

    return timed


for name in spent:
    setattr(spec.engine.speculation, name, timed_method(name))
for llm in (plain, spec):
    run(llm, prompts[:2], params, 32)
for _round in range(3):
    for label, llm in (("plain", plain), ("spec", spec)):
        runner, log = llm.engine.runner, []
        execute = runner.execute

        def timed_execute(step, execute=execute, log=log):
            started = time.perf_counter()
            out = execute(step)
            log.append((sum(map(len, step.draft_token_ids)), sum(map(bool, step.draft_token_ids)),
                        step.num_tokens, time.perf_counter() - started))
            return out

        runner.execute = timed_execute
        spent.update(propose=0.0, observe=0.0)
        rate, _ = run(llm, prompts, params, 32)
        del runner.execute
        drafting = [(i, x) for i, x in enumerate(log) if x[0]]
        decode = [x[3] for x in log if not x[0] and x[2] <= 32]
        extra = "" if llm is plain else (f"; propose {spent['propose'] * 1e3:.1f} ms, observe "
                                         f"{spent['observe'] * 1e3:.1f} ms")
        print(f"{label}: {rate:.0f} tok/s, {len(log)} steps, runner {sum(x[3] for x in log) * 1e3:.0f} ms; "
              f"{len(decode)} decode-only steps, mean {1e3 * sum(decode) / len(decode):.2f} ms; drafting steps: "
              + (", ".join(f"#{i} ({n} seqs, {d} drafts) {s * 1e3:.1f} ms" for i, (d, n, _, s) in drafting)
                 or "none") + extra, flush=True)
