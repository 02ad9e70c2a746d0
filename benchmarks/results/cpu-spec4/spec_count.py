"""Closed batch of 32: steps, draft tokens and accepted tokens per run, plain and speculating, code and random."""
from benchmarks.speculative import code_editing_prompts, random_prompts, run
from engine import DEFAULT_MODEL, LLM, SamplingParams

spec_cfg = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
plain, spec = LLM(DEFAULT_MODEL), LLM(DEFAULT_MODEL, speculative_config=spec_cfg)
for work in ("code", "random"):
    params = SamplingParams(temperature=0.6 if work == "random" else 0, seed=0, max_tokens=128, ignore_eos=True)
    prompts = random_prompts(32, plain.get_tokenizer().vocab_size) if work == "random" else code_editing_prompts(32)
    run(plain, prompts[:2], params, 32)
    run(spec, prompts[:2], params, 32)
    for _round in range(3):
        for name, llm in (("plain", plain), ("spec", spec)):
            e = llm.engine
            steps = [0]
            orig = e.step
            def counted(steps=steps, orig=orig):
                steps[0] += 1
                return orig()
            e.step = counted
            before = e.stats()
            rate, _ = run(llm, prompts, params, 32)
            del e.step
            after = e.stats()
            drafted = after.spec_num_draft_tokens - before.spec_num_draft_tokens
            print(f"{work} {name}: {rate:.0f} tok/s steps {steps[0]} drafts {drafted} "
                  f"accepted {after.spec_num_accepted_tokens - before.spec_num_accepted_tokens}", flush=True)
