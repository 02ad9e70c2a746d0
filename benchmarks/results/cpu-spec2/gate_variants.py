"""Gate variants at batch 32 against plain decoding, interleaved (8 rounds), run at commit bf5aa15 (with its
thread-tuner fix, and a gate that reads `MARGIN`, which a0b4bc8 removed): the gate before bf5aa15 (decoding
sequences only, the n-gram search not timed), bf5aa15's (the whole batch, the search timed, a 10% margin) and the
same without the margin (what a0b4bc8 keeps). Output: gate_variants.log.

    python benchmarks/results/cpu-spec2/gate_variants.py     # from the repository root, at bf5aa15
"""

import collections
import statistics

from benchmarks.speculative import code_editing_prompts, random_prompts, run
from engine import LLM, SamplingParams

CONFIG = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def main() -> None:
    plain = LLM()
    old = LLM(speculative_config=CONFIG)
    gate = old.engine.speculation.gate
    gate.MARGIN = 1.0
    gate.observe_proposal = lambda *args: None
    allowed = gate.allowed
    gate.allowed = lambda batch, running=None: allowed(batch, batch)
    margin = LLM(speculative_config=CONFIG)
    margin.engine.speculation.gate.MARGIN = 1.1
    no_margin = LLM(speculative_config=CONFIG)
    no_margin.engine.speculation.gate.MARGIN = 1.0
    engines = {"plain": plain, "old gate": old, "margin 1.1": margin, "margin 1.0": no_margin}
    for workload, temperature in (("code", 0.0), ("random", 0.6)):
        params = SamplingParams(temperature=temperature, seed=0, max_tokens=128, ignore_eos=True)
        prompts = (code_editing_prompts(32) if workload == "code"
                   else random_prompts(32, plain.get_tokenizer().vocab_size))
        for llm in engines.values():
            run(llm, prompts[:2], params, 32)
            run(llm, prompts, params, 32)
        rates = collections.defaultdict(list)
        for _ in range(8):
            for name, llm in engines.items():
                rates[name].append(run(llm, prompts, params, 32)[0])
        for name, values in rates.items():
            ratios = [b / a for a, b in zip(rates["plain"], values)]
            print(f"{workload} {name:11s} median {statistics.median(values):.0f}  pair ratios "
                  f"{[round(x, 2) for x in ratios]} median {statistics.median(ratios):.3f}", flush=True)


if __name__ == "__main__":
    main()
