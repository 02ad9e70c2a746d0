"""Speculative decoding's speed-up on a code-editing workload: prompts that hold the code to be rewritten.

Each prompt is a function from Python's own standard library (so every machine has the same ones), followed by
a request to write it again and the start of the rewrite; a model that copies much of it lets n-gram drafts hold.
Runs the default model (or --model) without and with `speculative_config`, interleaved (A, B, A, B: the machine
is shared and noisy) for --pairs pairs, at batch 1 (requests one after another) and at batch 32 (all at once),
and prints medians, spread, the ratio (of the medians; and the median of the pairs' ratios, each pair run back
to back), and the acceptance rate and mean accepted length of the speculative runs.
Greedy by default; --temperature samples (seeded). The two engines' tokens are compared too: they must agree.
`--workload random` gives prompts of random tokens instead (little to copy: the gate should switch drafting off).
`--method draft_model` drafts with `--draft PATH`, or by default with the model's first `--draft-layers` layers
(its norm and head kept: an early-exit draft, written to a temporary checkpoint), instead of n-grams.

    python -m benchmarks.speculative [--model PATH] [--k 5] [--lookup-max 4] [--lookup-min 2] [--max-tokens 128]
        [--batches 1,32] [--pairs 3] [--temperature 0] [--workload code|random] [--json OUT]
        [--method ngram|draft_model] [--draft PATH] [--draft-layers 2]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

from benchmarks import report
from engine import DEFAULT_MODEL, LLM, SamplingParams

_MODULES = ("textwrap", "json.encoder", "string", "shlex", "fnmatch", "posixpath", "csv", "difflib", "calendar",
            "heapq", "bisect", "colorsys", "base64", "copy", "glob", "ipaddress")


def code_editing_prompts(count: int, max_chars: int = 1200) -> list[str]:
    """`count` prompts, each a standard-library function of at most `max_chars` characters to be rewritten."""
    functions = []
    for name in _MODULES:
        source = inspect.getsource(importlib.import_module(name))
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef):
                text = ast.get_source_segment(source, node)
                if text and 200 <= len(text) <= max_chars:
                    functions.append(text)
    if len(functions) < count:
        functions = functions * -(-count // len(functions))
    prompts = []
    for text in functions[:count]:
        first_line = text.splitlines()[0]
        prompts.append(f"# Original version:\n{text}\n\n\n# The same function, cleaned up:\n{first_line}\n")
    return prompts


def early_exit_draft(model: str, layers: int, directory: str) -> str:
    """A copy of checkpoint `model` with only its first `layers` decoder layers, in `directory`."""
    config = json.loads((Path(model) / "config.json").read_text())
    config["num_hidden_layers"] = layers
    weights = load_file(str(Path(model) / "model.safetensors"))
    kept = {name: tensor for name, tensor in weights.items()
            if not name.startswith("model.layers.") or int(name.split(".")[2]) < layers}
    out = Path(directory)
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    for name in Path(model).iterdir():
        if name.name.startswith(("tokenizer", "generation_config")):
            shutil.copy(name, out / name.name)
    return str(out)


def random_prompts(count: int, vocab: int, length: int = 256) -> list[list[int]]:
    """`count` prompts of `length` random token ids (seeded)."""
    rng = random.Random(0)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def run(llm: LLM, prompts: list, params: SamplingParams, batch: int) -> tuple[float, list[list[int]]]:
    """Tokens per second over `prompts`, `batch` at a time, and the tokens generated."""
    tokens, started = [], time.perf_counter()
    for i in range(0, len(prompts), batch):
        tokens += [o.outputs[0].token_ids for o in llm.generate(prompts[i:i + batch], params, use_tqdm=False)]
    seconds = time.perf_counter() - started
    return sum(map(len, tokens)) / seconds, tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--k", type=int, default=5, help="num_speculative_tokens")
    parser.add_argument("--lookup-max", type=int, default=4)
    parser.add_argument("--lookup-min", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--requests-at-batch-1", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--workload", choices=("code", "random"), default="code")
    parser.add_argument("--method", choices=("ngram", "draft_model"), default="ngram")
    parser.add_argument("--draft", default=None, help="the draft model's checkpoint (default: an early-exit draft)")
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.method == "ngram":
        spec_config = {"method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_max": args.lookup_max,
                       "prompt_lookup_min": args.lookup_min}
    else:
        draft = args.draft or early_exit_draft(args.model, args.draft_layers, tempfile.mkdtemp(prefix="draft-"))
        spec_config = {"method": "draft_model", "model": draft, "num_speculative_tokens": args.k}
    plain, spec = LLM(args.model), LLM(args.model, speculative_config=spec_config)
    params = SamplingParams(temperature=args.temperature, seed=0, max_tokens=args.max_tokens, ignore_eos=True)
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        count = args.requests_at_batch_1 if batch == 1 else batch
        prompts = (code_editing_prompts(count) if args.workload == "code"
                   else random_prompts(count, plain.get_tokenizer().vocab_size))
        run(plain, prompts[:2], params, batch)                 # warm both up
        run(spec, prompts[:2], params, batch)
        rates = {"plain": [], "spec": []}
        before = spec.engine.stats()
        same = True
        for _ in range(args.pairs):
            a, plain_tokens = run(plain, prompts, params, batch)
            b, spec_tokens = run(spec, prompts, params, batch)
            rates["plain"].append(a)
            rates["spec"].append(b)
            same &= plain_tokens == spec_tokens
        after = spec.engine.stats()
        drafts = after.spec_num_drafts - before.spec_num_drafts
        drafted = after.spec_num_draft_tokens - before.spec_num_draft_tokens
        accepted = after.spec_num_accepted_tokens - before.spec_num_accepted_tokens
        row = {"batch": batch, "requests": len(prompts), "same_tokens": same,
               **report.summarize(rates),
               "acceptance_rate": accepted / drafted if drafted else None,
               "mean_accepted_length": 1 + accepted / drafts if drafts else None,
               "draft_tokens": drafted}
        row["ratio"] = row["spec_tok_s"] / row["plain_tok_s"]
        pairs = [b / a for a, b in zip(rates["plain"], rates["spec"])]      # each pair ran back to back
        row["pair_ratio_median"] = statistics.median(pairs)
        row["pairs_below_1"] = sum(r < 1 for r in pairs)
        results.append(row)
        print(json.dumps(row), flush=True)
    report.write(args.json, args, results)


if __name__ == "__main__":
    main()
