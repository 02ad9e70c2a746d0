"""Step time at batch 32 (default model): decode only, vs 1 / 8 / 32 sequences verifying 5 drafts."""
import random
import statistics
import time

import torch

from engine import DEFAULT_MODEL, SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine

e = LLMEngine(EngineConfig(model=DEFAULT_MODEL, max_num_seqs=32, device="cpu"))
e.threads = None
torch.set_num_threads(2)
p = SamplingParams(temperature=0.6, max_tokens=2000, ignore_eos=True, seed=1)
rng = random.Random(0)
for i in range(32):
    e.add_request(f"r{i}", [rng.randrange(100, 2000) for _ in range(200)], p)
for _ in range(6):
    e.step()
def run(ndraft):
    for seq in e.scheduler.running[:ndraft]:
        seq.draft_token_ids = [5, 6, 7, 8, 9]
    t = time.perf_counter()
    e.step()
    return time.perf_counter() - t
res = {n: [] for n in (0, 1, 8, 32)}
for _rep in range(12):
    for n in res:
        res[n].append(run(n))
for n, v in res.items():
    print(f"drafting seqs {n:>2}: median step {1e3*statistics.median(v):.2f} ms  tokens {32 + 5*n}")
