"""transformers' continuous batching as an offline peer: its `ContinuousBatchingManager` (a paged KV cache, requests
joining and leaving the batch every step, CUDA graphs where it captures them), the strongest engine on the GPU image,
which has no vLLM. It runs the workload of `benchmarks.throughput` as that benchmark runs ours: every request with its
own output length and no end-of-sequence token, sampled at temperature 0.6, timed from the first request added to
the last one finished, after a warm-up request. One manager serves all of a run's workloads, so its start (cache
allocation, graph warm-up) is not timed, as our engine's is not.

The attention is the one transformers picks for continuous batching (flash attention where it finds it, else its
paged SDPA); `attention` overrides the model's `attn_implementation`. `run_without_flash` keeps SDPA: transformers
may count flash attention available through the `kernels` package, whose kernels come from a hub that a lent GPU
machine cannot reach.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch
import transformers
from transformers.generation import ContinuousBatchingConfig, GenerationConfig

NO_EOS = -1             # an end-of-sequence id no token has: transformers' requests ignore negative ids


def _finish(manager, request_ids: set[str], timeout_s: float) -> dict[str, list[int]]:
    """The generated tokens of each of `request_ids`, as each finishes (an error raises)."""
    tokens: dict[str, list[int]] = {}
    deadline = time.monotonic() + timeout_s
    while len(tokens) < len(request_ids):
        if time.monotonic() > deadline or not manager.is_running():
            raise RuntimeError(f"transformers finished {len(tokens)} of {len(request_ids)} requests")
        result = manager.get_result(timeout=1)
        if result is None or result.request_id not in request_ids or not result.is_finished():
            continue
        if result.error is not None:
            raise RuntimeError(f"transformers request {result.request_id}: {result.error}")
        tokens[result.request_id] = list(result.generated_tokens)
    return tokens


def run(model: str, workloads: Sequence, device: torch.device, dtype: torch.dtype, attention: str | None = None,
        cb_config: object | None = None, timeout_s: float = 3600.0) -> tuple[list[float], str]:
    """Output tokens/s of transformers' continuous batching on each of `workloads` (`benchmarks.throughput.Workload`:
    `prompts`, `output_lens`), and the attention implementation it ran. Each request must produce exactly the
    tokens it asks for, or this raises. `cb_config`, a `ContinuousBatchingConfig`, overrides transformers' sizing
    (by default it takes a share of the device's free memory for its cache)."""
    options = {"attn_implementation": attention} if attention else {}
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **options).to(device).eval()
    pad = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
    longest_output = max(max(work.output_lens) for work in workloads)
    config = GenerationConfig(do_sample=True, temperature=0.6, top_k=0, top_p=1.0, pad_token_id=pad,
                              eos_token_id=NO_EOS, max_new_tokens=longest_output)
    hints = None
    try:                # sizes the cache and the captured graphs for the workload (transformers >= 5.10)
        from transformers.generation.continuous_batching.utils import WorkloadHints

        hints = WorkloadHints(max_prompt_length=max(len(p) for work in workloads for p in work.prompts),
                              max_generated_length=longest_output,
                              num_requests=max(len(work.prompts) for work in workloads))
    except ImportError:
        pass
    rates = []
    with hf.continuous_batching_context_manager(generation_config=config, block=True, timeout=30,
                                                continuous_batching_config=cb_config,
                                                workload_hints=hints) as manager:
        warm = manager.add_request([1, 2, 3], request_id="warm-up", max_new_tokens=4, eos_token_id=NO_EOS)
        _finish(manager, {warm}, timeout_s)
        attention = hf.config._attn_implementation        # while the manager runs: it may switch it, then back
        for r, work in enumerate(workloads):
            start = time.perf_counter()
            ids = [manager.add_request(prompt, request_id=f"{r}-{i}", max_new_tokens=n, eos_token_id=NO_EOS)
                   for i, (prompt, n) in enumerate(zip(work.prompts, work.output_lens))]
            tokens = _finish(manager, set(ids), timeout_s)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rates.append(work.output_tokens / (time.perf_counter() - start))
            made = [len(tokens[i]) for i in ids]
            if made != list(work.output_lens):
                raise RuntimeError(f"transformers made {sum(made)} tokens, the requests asked for {work.output_tokens}")
    return rates, attention


def run_without_flash(model: str, workloads: Sequence, device: torch.device, dtype: torch.dtype,
                      **cb_options) -> tuple[list[float], str]:
    """`run` with transformers' paged SDPA, never switched to flash attention: by `auto_switch_to_flash=False`
    where the config has it (transformers >= 5.18 or so), else by asking for "paged|sdpa" (which older releases
    do not switch). `cb_options`: more `ContinuousBatchingConfig` fields."""
    if "auto_switch_to_flash" in {field.name for field in dataclasses.fields(ContinuousBatchingConfig)}:
        config = ContinuousBatchingConfig(auto_switch_to_flash=False, **cb_options)
        return run(model, workloads, device, dtype, "sdpa", config)
    return run(model, workloads, device, dtype, "paged|sdpa", ContinuousBatchingConfig(**cb_options))
