"""Idle machine: per run of the offline workload (64 sequences, prompts 21-255, 128 new tokens; default model),
tok/s, the thread tuner's probes and the steps it ran on one thread outside its probes. Run from a checkout:
PYTHONPATH=. python <this file> [runs]"""
import sys
import time

from benchmarks.throughput import make_workload, workload_params
from engine import DEFAULT_MODEL, LLM

llm = LLM(DEFAULT_MODEL)
tuner = llm.engine.threads
steps = []
after_step = tuner.after_step


def logged(tokens: int, seconds: float) -> None:
    steps.append((tokens, seconds, tuner.current, tuner.probing))
    after_step(tokens, seconds)


tuner.after_step = logged
for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    work = make_workload(64, (21, 255), (128, 128), llm.get_tokenizer().vocab_size, seed=rnd)
    steps.clear()
    probes = tuner.num_probes
    started = time.perf_counter()
    outs = llm.generate(work.prompts, workload_params(work), use_tqdm=False)
    elapsed = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    one = sum(1 for _, _, cur, probing in steps if cur == 1 and not probing)
    print(f"run {rnd}: {tokens / elapsed:7.1f} tok/s, {len(steps)} steps, probes {tuner.num_probes - probes}, "
          f"steps on 1 thread outside probes {one}", flush=True)
