"""Offline throughput: engine.LLM against Hugging Face transformers' `generate`, same checkpoint, device, dtype.

The workload is nano-vllm's: N sequences of random token ids with random input and output lengths in a
range, `ignore_eos`, sampled at temperature 0.6. transformers runs it the way people use it: the prompts
left-padded into batches, each batch generating as many tokens as its longest request asks for. Both sides
are credited with the output tokens the requests asked for, so the figure is useful tokens per second.

    python -m benchmarks.throughput [--model PATH | --model qwen3-tiny] [--num-seqs 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from engine import DEFAULT_MODEL, LLM, SamplingParams


@dataclass
class Workload:
    """Prompts (token ids) and the number of new tokens each asks for."""

    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def output_tokens(self) -> int:
        """Total new tokens asked for."""
        return sum(self.output_lens)


def make_workload(num_seqs: int, input_range: tuple[int, int], output_range: tuple[int, int], vocab: int,
                  seed: int = 0) -> Workload:
    """nano-vllm's benchmark shape: uniform random lengths and token ids."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(*input_range))] for _ in range(num_seqs)]
    return Workload(prompts, [rng.randint(*output_range) for _ in range(num_seqs)])


def qwen3_tiny(tokenizer_dir: str, out_dir: Path) -> str:
    """A Qwen3-shaped random-weight checkpoint the size of the default model, with its tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = transformers.Qwen3Config(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def run_engine(model: str, workloads: list[Workload], max_model_len: int) -> list[float]:
    """engine.LLM's output tokens/s on each workload (after a warm-up request). Each workload has prompts of
    its own, so the prefix cache never serves one run from an earlier one."""
    llm = LLM(model, max_model_len=max_model_len)
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4))
    rates = []
    for work in workloads:
        params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n, seed=i)
                  for i, n in enumerate(work.output_lens)]
        start = time.perf_counter()
        outputs = llm.generate(work.prompts, params)
        rates.append(work.output_tokens / (time.perf_counter() - start))
        assert sum(len(o.outputs[0].token_ids) for o in outputs) == work.output_tokens
    return rates


def run_transformers(model: str, workloads: list[Workload], batch_size: int, dtype: torch.dtype) -> list[float]:
    """transformers' output tokens/s on each workload: padded, batched `generate`, each batch producing at
    least what each of its requests asks for (credited with what they ask for)."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval()
    pad = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
    hf.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=pad)
    rates = []
    for work in workloads:
        start = time.perf_counter()
        for i in range(0, len(work.prompts), batch_size):
            prompts, lens = work.prompts[i:i + batch_size], work.output_lens[i:i + batch_size]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=mask, max_new_tokens=max(lens), min_new_tokens=max(lens),
                                  do_sample=True, temperature=0.6, top_k=0, pad_token_id=pad, eos_token_id=None)
            assert out.shape[1] - width >= max(lens)
        rates.append(work.output_tokens / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="checkpoint directory, or 'qwen3-tiny' for a random Qwen3-shaped one")
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--input-len", type=int, nargs=2, default=[32, 256])
    parser.add_argument("--output-len", type=int, nargs=2, default=[32, 256])
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="workloads (fresh prompts each) run by both sides; medians are reported")
    parser.add_argument("--quick", action="store_true", help="a small workload for CI")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.num_seqs, args.input_len, args.output_len, args.repeats = 8, [16, 48], [8, 24], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = qwen3_tiny(DEFAULT_MODEL, Path(tmp)) if args.model == "qwen3-tiny" else args.model
        vocab = transformers.AutoConfig.from_pretrained(model).vocab_size
        workloads = [make_workload(args.num_seqs, tuple(args.input_len), tuple(args.output_len), vocab, seed=r)
                     for r in range(args.repeats)]
        max_len = args.input_len[1] + args.output_len[1]
        engine_rates = run_engine(model, workloads, max_len)
        hf_rates = run_transformers(model, workloads, args.hf_batch_size, torch.float32)
    result = {
        "model": args.model, "num_seqs": args.num_seqs, "input_len": args.input_len,
        "output_len": args.output_len, "output_tokens": [w.output_tokens for w in workloads],
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "engine_tok_s_runs": engine_rates, "transformers_tok_s_runs": hf_rates,
        "engine_tok_s": statistics.median(engine_rates), "transformers_tok_s": statistics.median(hf_rates),
    }
    result["ratio"] = result["engine_tok_s"] / result["transformers_tok_s"]
    print(f"workload: {args.num_seqs} seqs, input {args.input_len}, output {args.output_len}, ignore_eos, "
          f"temperature 0.6, float32 on the CPU, {result['threads']} threads; median of {args.repeats} runs, "
          "each on fresh random prompts")
    runs = lambda rates: ", ".join(f"{r:.0f}" for r in rates)
    print(f"engine.LLM:              {result['engine_tok_s']:9.1f} tok/s  (runs: {runs(engine_rates)})")
    print(f"transformers.generate:   {result['transformers_tok_s']:9.1f} tok/s  (runs: {runs(hf_rates)})")
    print(f"ratio:                   {result['ratio']:9.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
