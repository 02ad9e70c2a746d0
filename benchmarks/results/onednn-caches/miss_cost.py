"""Cost of a oneDNN primitive-cache miss in llm_kernels.cpu.linear: time per call with M cycling over many distinct
values (every call a miss under a small cap) vs the same under the default cap (all hits after the first pass)."""
import os
import sys
import time

import torch

from llm_kernels.cpu.linear import linear, pack

torch.set_num_threads(2)
K, N = int(sys.argv[1]), int(sys.argv[2])
w = pack(torch.randn(N, K))
Ms = list(range(1, 65)) + list(range(200, 264))
xs = {m: torch.randn(m, K) for m in Ms}
for m in Ms:
    linear(xs[m], w)
for _rep in range(3):
    t = time.perf_counter()
    for m in Ms:
        linear(xs[m], w)
    dt = (time.perf_counter() - t) / len(Ms) * 1e6
    cap = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "default")
    print(f"cap={cap} K={K} N={N}: {dt:.0f} us/call", flush=True)
