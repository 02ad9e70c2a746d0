"""n-gram speculation, closed batch of 32 (default model, 128 tokens each; code workload greedy, random workload at
T 0.6): per run, tok/s, steps, draft tokens, how many steps the gate drafted because it pays, probed or idled,
and its probes (step, slowest sequences). Run from a checkout: PYTHONPATH=. python <this file> code random [runs]
"""
import sys

from benchmarks.speculative import code_editing_prompts, random_prompts, run
from engine import DEFAULT_MODEL, LLM, SamplingParams

spec_cfg = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
spec = LLM(DEFAULT_MODEL, speculative_config=spec_cfg)
speculation, gate = spec.engine.speculation, spec.engine.speculation.gate
log = []
allowed, closed_idle = gate.allowed, gate.closed_idle


def logged_allowed(batch, running=None, closed=False):
    pays = gate.fixed_s is not None and gate.pays(batch, running, closed)
    n = allowed(batch, running, closed)
    log.append(("pays" if pays else "probe" if n else "idle", len(speculation._slowest or ())))
    return n


def logged_idle():
    idle = closed_idle()
    if idle:
        log.append(("idle", 0))
    return idle


gate.allowed, gate.closed_idle = logged_allowed, logged_idle
steps = [0]
step = spec.engine.step


def counted_step():
    steps[0] += 1
    return step()


spec.engine.step = counted_step
runs = int(sys.argv[-1]) if sys.argv[-1].isdigit() else 4
for work in [a for a in sys.argv[1:] if not a.isdigit()]:
    params = SamplingParams(temperature=0.6 if work == "random" else 0, seed=0, max_tokens=128, ignore_eos=True)
    prompts = random_prompts(32, spec.get_tokenizer().vocab_size) if work == "random" else code_editing_prompts(32)
    run(spec, prompts[:2], params, 32)
    for _ in range(runs):
        log.clear()
        steps[0] = 0
        before = spec.engine.stats()
        rate, _ = run(spec, prompts, params, 32)
        drafted = spec.engine.stats().spec_num_draft_tokens - before.spec_num_draft_tokens
        modes = {m: sum(1 for x, _ in log if x == m) for m in ("pays", "probe", "idle")}
        probes = [(i, n) for i, (m, n) in enumerate(log) if m == "probe"]
        print(f"{work}: {rate:.0f} tok/s, {steps[0]} steps, drafts {drafted}, modes {modes}, probes (step, "
              f"slowest) {probes}", flush=True)
