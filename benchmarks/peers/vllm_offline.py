"""Run by the vLLM peer venv's python (benchmarks/peers/setup_vllm_cpu.sh), not by ours: one workload through
vLLM's offline `LLM`, as benchmarks.throughput runs ours (the same prompts and lengths, temperature 0.6,
ignore_eos), after a warm-up request. Reads a JSON job from argv[1]; prints one JSON line with the output tokens
per second.

    python benchmarks/peers/vllm_offline.py JOB.json
"""

import json
import sys
import time

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    llm = LLM(job["model"], dtype="float32", max_model_len=job["max_model_len"], max_num_seqs=job["max_num_seqs"],
              seed=0)
    llm.generate([TokensPrompt(prompt_token_ids=[1, 2, 3])], SamplingParams(max_tokens=4), use_tqdm=False)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in job["prompts"]]
    # No per-request seeds: vLLM 0.32's CPU build fails a seeded request ("CPU Generator does not use offset");
    # the engine's seed (LLM(seed=0)) makes the run reproducible, and the draws do not change the work.
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in job["output_lens"]]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert tokens == sum(job["output_lens"]), (tokens, sum(job["output_lens"]))
    print(json.dumps({"tok_s": tokens / elapsed}))


if __name__ == "__main__":
    main()
