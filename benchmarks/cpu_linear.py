"""The CPU's linear layers: `F.linear` against oneDNN with the weight packed once (llm_kernels/cpu/linear.py).

For each shape (rows M of a step, in K, out N; float32, torch's threads), the two alternate (A, B, A, B) over
`--rounds` rounds of `--calls` calls each; medians per call and the ratio.

    python -m benchmarks.cpu_linear [--rounds 5] [--calls 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks import report
from llm_kernels.cpu import linear as cpu_linear

SHAPES = [(m, k, n) for k, n in ((512, 1536), (1536, 512), (256, 768), (512, 4096)) for m in (1, 8, 64, 512, 2048)]


def per_call_ms(fn, calls: int) -> float:
    """Milliseconds per call of `fn` over `calls` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = []
    for m, k, n in SHAPES:
        torch.manual_seed(0)
        weight, x = torch.randn(n, k), torch.randn(m, k)
        packed = cpu_linear.pack(weight)
        sides = {"f_linear": lambda x=x, w=weight: F.linear(x, w),
                 "packed": lambda x=x, p=packed: cpu_linear.linear(x, p)}
        times = {name: [] for name in sides}
        for fn in sides.values():
            fn()
        for _ in range(args.rounds):
            for name, fn in sides.items():
                times[name].append(per_call_ms(fn, args.calls))
        row = {"m": m, "k": k, "n": n, "threads": torch.get_num_threads(),
               **{f"{name}_ms": statistics.median(t) for name, t in times.items()},
               "speedup": statistics.median(times["f_linear"]) / statistics.median(times["packed"])}
        results.append(row)
        print(json.dumps(row), flush=True)
    report.write(args.json, args, results)


if __name__ == "__main__":
    main()
