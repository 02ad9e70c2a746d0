"""The engine on a shared CPU: torch's fixed thread count and one thread against the engine's thread tuner
(engine/cpu_threads.py), on an idle machine and beside busy processes.

Offline, the nano-vllm-shaped workload of benchmarks/throughput.py (random prompts, temperature 0.6, ignore_eos).
For each machine state (idle, then `--contend N` busy processes) the three engines run interleaved (fixed, one,
tuned, fixed, one, tuned: the machine is shared and noisy) for `--rounds` rounds, each run on fresh prompts;
medians, spread ((max - min) / median) and the tuned engine's ratio to each. "fixed" is
`LLM(cpu_threads=<torch's default>)`, "one" `LLM(cpu_threads=1)`, "tuned" `LLM()`.

    python -m benchmarks.contention [--model PATH] [--num-seqs 32] [--input-len 21 255] [--output-len 64 64]
        [--rounds 3] [--contend 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from benchmarks import report
from benchmarks.throughput import make_workload, workload_params
from engine import DEFAULT_MODEL, LLM, SamplingParams


def rate(llm: LLM, seed: int, args: argparse.Namespace) -> float:
    """Output tokens per second on a fresh workload."""
    work = make_workload(args.num_seqs, tuple(args.input_len), tuple(args.output_len),
                         llm.get_tokenizer().vocab_size, seed=seed)
    started = time.perf_counter()
    llm.generate(work.prompts, workload_params(work), use_tqdm=False)
    return work.output_tokens / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--num-seqs", type=int, default=32)
    parser.add_argument("--input-len", type=int, nargs=2, default=[21, 255])
    parser.add_argument("--output-len", type=int, nargs=2, default=[64, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contend", type=int, default=1, metavar="N", help="busy processes in the second state")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    max_len = args.input_len[1] + args.output_len[1]
    engines = {"fixed": LLM(args.model, max_model_len=max_len, cpu_threads=threads),
               "one": LLM(args.model, max_model_len=max_len, cpu_threads=1),
               "tuned": LLM(args.model, max_model_len=max_len)}
    for llm in engines.values():
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4), use_tqdm=False)
    results, seed = [], 0
    for busy_count in (0, args.contend):
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy_count)]
        try:
            rates = {name: [] for name in engines}
            for _ in range(args.rounds):
                for name, llm in engines.items():
                    seed += 1
                    rates[name].append(rate(llm, seed, args))
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
        row = {"busy_processes": busy_count, "threads": threads,
               **report.summarize(rates),
               "tuner_probes": engines["tuned"].engine.threads.num_probes if engines["tuned"].engine.threads else 0}
        row["tuned_over_fixed"] = row["tuned_tok_s"] / row["fixed_tok_s"]
        row["tuned_over_one"] = row["tuned_tok_s"] / row["one_tok_s"]
        results.append(row)
        print(json.dumps(row), flush=True)
    report.write(args.json, args, results)


if __name__ == "__main__":
    main()
