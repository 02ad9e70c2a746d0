import statistics
import sys

from benchmarks.speculative import code_editing_prompts, random_prompts, run
from engine import DEFAULT_MODEL, LLM, SamplingParams
from engine.speculative import can_speculate, ngram_proposal

spec_cfg = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
spec = LLM(DEFAULT_MODEL, speculative_config=spec_cfg)
work = sys.argv[1]
params = SamplingParams(temperature=0.6 if work == "random" else 0, seed=0, max_tokens=128, ignore_eos=True)
prompts = random_prompts(32, spec.get_tokenizer().vocab_size) if work == "random" else code_editing_prompts(32)
run(spec, prompts[:2], params, 32)
S = spec.engine.speculation
cov = []
orig = S.propose
def prop(running, *a, **k):
    dec = [s for s in running if can_speculate(s)]
    if len(dec) >= 16:
        found = sum(1 for s in dec if ngram_proposal(s.token_ids, 5, 2, 4))
        cov.append(found / len(dec))
    orig(running, *a, **k)
S.propose = prop
rate, _ = run(spec, prompts, params, 32)
print(work, f"{rate:.0f} tok/s; per-step coverage: median {statistics.median(cov):.2f}, quartiles "
      f"{statistics.quantiles(cov, n=4)}, steps with all found {sum(c == 1 for c in cov)} of {len(cov)}")
