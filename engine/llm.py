"""LLM: offline batch generation, shaped like vLLM's `LLM`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from pathlib import Path

from tqdm.auto import tqdm

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from llm_kernels import KernelSet

DEFAULT_MODEL = str(Path(__file__).parent / "assets" / "pycoder-tiny")

Prompt = str | list[int]
PromptInput = Prompt | dict          # and vLLM's {"prompt": text} or {"prompt_token_ids": ids}


class LLM:
    """Load a Hugging Face checkpoint once, then `generate` or `chat` over batches of prompts.

    model: a local checkpoint directory (default: the small code model shipped with the package). dtype: "auto" (the
    checkpoint's on a GPU, float32 on the CPU), "float32", "float16" or "bfloat16". device: "auto", "cuda", "cpu".
    max_model_len: the context length (default: the model's). block_size: tokens per KV block. kv_cache_blocks: a
    fixed number of KV blocks (default: room for max_num_seqs x max_model_len tokens, within the device's memory;
    see engine/kv_cache.py). max_num_seqs: sequences running at once. max_num_batched_tokens: tokens per step.
    enable_prefix_caching: reuse the KV of shared prompt prefixes. seed: seeds unseeded requests. cuda_graphs:
    replay decode steps from CUDA graphs; None (default) does wherever it can (CUDA with the Triton kernels), True
    requires it, False runs every step eagerly. cpu_threads: torch's intra-op threads for this engine's CPU steps,
    set before each of them (default: chosen by measuring, between the count torch has when the engine is built,
    one per physical core unless set otherwise, and one, which is faster when other processes take the cores;
    engine/cpu_threads.py). kernels: the kernels backend,
    chosen once for this engine: "auto", "triton", "cpu", "torch", a `llm_kernels.KernelSet` (one kernel swapped
    for an experiment), or None (default: what `llm_kernels.use` or LLM_KERNELS_BACKEND says when it is built).
    tensor_parallel_size: run the model over this many processes, one device each (GPUs cuda:0..N-1, or ranks
    sharing the CPU), started here and stopped with the engine (`close()`, or at exit); see engine/tp_workers.py.
    speculative_config: speculative decoding, as vLLM's: {"method": "ngram", "num_speculative_tokens": k,
    "prompt_lookup_max": n, "prompt_lookup_min": m} or {"method": "draft_model", "model": PATH,
    "num_speculative_tokens": k}; output is token-identical to decoding without it (see engine/speculative.py).
    generation_config: where default sampling parameters come from, as vLLM's: "auto" (the checkpoint's
    generation_config.json), "vllm" (none: SamplingParams' own), or a directory with a generation_config.json;
    override_generation_config: fields set on top ({"temperature": 0.5}). They apply where no SamplingParams is
    given here, and to the fields a server's request leaves out.
    """

    def __init__(self, model: str | None = None, dtype: str = "auto", device: str = "auto",
                 max_model_len: int | None = None, block_size: int = 16, kv_cache_blocks: int | None = None,
                 max_num_seqs: int = 256, max_num_batched_tokens: int = 2048, enable_prefix_caching: bool = True,
                 seed: int = 0, cuda_graphs: bool | None = None, cpu_threads: int | None = None,
                 kernels: str | KernelSet | None = None, tensor_parallel_size: int = 1,
                 speculative_config: dict | None = None, generation_config: str = "auto",
                 override_generation_config: dict | None = None) -> None:
        self.engine = LLMEngine(EngineConfig(
            model=model or DEFAULT_MODEL, dtype=dtype, device=device, max_model_len=max_model_len,
            block_size=block_size, kv_cache_blocks=kv_cache_blocks, max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens, enable_prefix_caching=enable_prefix_caching, seed=seed,
            cuda_graphs=cuda_graphs, cpu_threads=cpu_threads, kernels=kernels,
            tensor_parallel_size=tensor_parallel_size, speculative_config=speculative_config,
            generation_config=generation_config, override_generation_config=override_generation_config))
        self._ids = itertools.count()

    def close(self) -> None:
        """Stop the engine's tensor-parallel worker processes (a no-op with one rank)."""
        self.engine.close()

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the fields the checkpoint's generation_config.json sets (its temperature, top_p,
        top_k, min_p, penalties, max_new_tokens as max_tokens), as vLLM's; `generation_config="vllm"` leaves them
        out."""
        return SamplingParams(**self.engine.sampling_defaults)

    def get_tokenizer(self):
        """The checkpoint's Hugging Face tokenizer."""
        return self.engine.tokenizer.hf

    def generate(self, prompts: PromptInput | Seq[PromptInput], sampling_params: SamplingParams
                 | Seq[SamplingParams] | None = None, use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for one prompt or a batch; outputs come in prompt order. A prompt is text, token ids, or
        vLLM's prompt dicts: {"prompt": text} (TextPrompt) or {"prompt_token_ids": ids} (TokensPrompt).

        sampling_params: one for every prompt, or a list with one per prompt (default:
        `get_default_sampling_params()`).
        """
        batch = _as_batch(prompts)
        params = _per_prompt(sampling_params, len(batch), self.get_default_sampling_params())
        return self._run(batch, params, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Seq[SamplingParams] | None = None, use_tqdm: bool = False, *,
             chat_template: str | None = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, tools: list[dict] | None = None,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """Generate replies to one conversation or a batch, rendered with the checkpoint's chat template (or
        `chat_template`), which also sees `tools` and `chat_template_kwargs`; vLLM's arguments, in its order.
        continue_final_message leaves the last (assistant) message open, for the model to go on with."""
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tokenizer = self.engine.tokenizer
        texts = [tokenizer.render_chat(conv, add_generation_prompt, tools, chat_template_kwargs,
                                       continue_final_message=continue_final_message, chat_template=chat_template)
                 for conv in conversations]
        batch = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
        outputs = self._run(batch, _per_prompt(sampling_params, len(batch), self.get_default_sampling_params()),
                            use_tqdm)
        for output, text in zip(outputs, texts):
            output.prompt = text
        return outputs

    def _run(self, prompts: list[Prompt], params: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        ids = [f"offline-{next(self._ids)}" for _ in prompts]
        self.engine.closed_batch = True               # no request joins these until they finish
        try:
            for request_id, prompt, p in zip(ids, prompts, params):
                self.engine.add_request(request_id, prompt, p)
            results: dict[str, RequestOutput] = {}
            with tqdm(total=len(ids), desc="generate", disable=not use_tqdm) as bar:
                while self.engine.has_unfinished_requests():
                    for output in self.engine.step():
                        if output.finished:
                            results[output.request_id] = output
                            bar.update(1)
        finally:
            self.engine.closed_batch = False
            for request_id in ids:
                self.engine.abort_request(request_id)
        return [results[request_id] for request_id in ids]


def _as_batch(prompts: PromptInput | Seq[PromptInput]) -> list[Prompt]:
    """One prompt or a list of them, as text or token-id lists."""
    if isinstance(prompts, (str, dict)):
        return [_prompt(prompts)]
    prompts = list(prompts)
    if prompts and not isinstance(prompts[0], (str, dict, list, tuple)):     # the token ids of one prompt
        return [prompts]
    return [_prompt(prompt) for prompt in prompts]


def _prompt(prompt: PromptInput) -> Prompt:
    """A prompt as text or token ids, from vLLM's prompt dicts too; a ValueError for what they may hold that this
    engine cannot honour (multi-modal data, a cache salt)."""
    if not isinstance(prompt, dict):
        return prompt
    if set(prompt) == {"prompt"} and isinstance(prompt["prompt"], str):
        return prompt["prompt"]
    if set(prompt) == {"prompt_token_ids"} and isinstance(prompt["prompt_token_ids"], (list, tuple)):
        return list(prompt["prompt_token_ids"])
    raise ValueError(f"a prompt dict holds either 'prompt' (text) or 'prompt_token_ids' (a list of token ids), "
                     f"nothing else; got the keys {sorted(prompt)}")


def _per_prompt(params: SamplingParams | Seq[SamplingParams] | None, count: int,
                default: SamplingParams) -> list[SamplingParams]:
    if params is None:
        return [default] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(f"sampling_params has {len(params)} entries for {count} prompts")
    return params
