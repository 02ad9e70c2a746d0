"""LLMEngine: requests in, one step at a time, outputs out. `LLM` and `AsyncLLM` are its two faces."""

from __future__ import annotations

import concurrent.futures
import logging
import operator
import random
import time
import weakref
from dataclasses import dataclass

import torch

from engine import structured_output, thinking
from engine.block_manager import BlockManager
from engine.config import EngineConfig, ModelConfig
from engine.cpu_threads import FixedThreads, ThreadTuner, thread_policy
from engine.draft_model import DraftModel, kv_share
from engine.model_runner import ModelRunner
from engine.output_processor import OutputProcessor
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams, generation_cap, generation_defaults
from engine.scheduler import Scheduler
from engine.sequence import Request, Sequence, SequenceStatus, derive_seed
from engine.speculative import Speculation
from engine.structured_output import GrammarCompiler
from engine.thinking import ThinkingBudget
from engine.tokenizer import PromptTooLongError, Tokenizer
from engine.tp_workers import TPWorkers, serve_if_launched_worker

logger = logging.getLogger(__name__)

# The engine's warm-up (LLMEngine._warm_up): prompts of this many tokens, then this many decode steps (as many as
# the thread tuner's probe takes).
WARM_UP_PROMPT_LEN = 256
WARM_UP_DECODES = ThreadTuner.PROBE_STEPS


@dataclass(slots=True)
class EngineStats:
    """Counters and gauges for metrics and tests."""

    num_running: int
    num_waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    spec_num_drafts: int = 0              # verifications of one sequence's drafts
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0


class LLMEngine:
    """Holds the tokenizer, the model runner, the scheduler and the requests in flight."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        threads = torch.get_num_threads()      # the process's count now: the most this engine's steps take
        self.model_config = ModelConfig.from_dir(config.model)
        self.max_model_len = config.resolved_max_model_len(self.model_config)
        self.tokenizer = Tokenizer(config.model, self.model_config.eos_token_ids)
        # Default SamplingParams fields from generation_config.json (vLLM's --generation-config): the API's for
        # fields a request leaves out, and LLM.get_default_sampling_params.
        self.sampling_defaults = generation_defaults(config.model, config.generation_config,
                                                     config.override_generation_config)
        self.max_tokens_cap = generation_cap(config.generation_config, config.override_generation_config,
                                             self.sampling_defaults)
        if self.sampling_defaults:
            logger.info("sampling defaults from the generation config: %s (server requests generate at most %s "
                        "tokens)", self.sampling_defaults, self.max_tokens_cap or "their max_tokens")
        eos = self.tokenizer.eos_token_ids
        serve_if_launched_worker(config)
        self.workers: TPWorkers | None = None
        spec = config.speculative_config
        draft_config = ModelConfig.from_dir(spec.model) if spec is not None and spec.model else None
        if config.tensor_parallel_size == 1:
            share = kv_share(self.model_config, draft_config) if draft_config is not None else 1.0
            self.runner = ModelRunner(config, self.model_config, self.max_model_len, eos, kv_share=share)
        else:
            self.runner, self.workers = TPWorkers.start_engine(config, self.model_config, self.max_model_len, eos)
        # Stops the workers with the engine: on close(), when it is collected, or at interpreter exit.
        self._close = weakref.finalize(self, self.workers.shutdown, self.runner.channel) if self.workers else None
        self.processor = OutputProcessor(self.tokenizer)
        self.requests: dict[str, Request] = {}
        # Whether the requests in the engine are all it gets until they finish (LLM.generate sets it; a server's
        # engine never knows that): speculative decoding then drafts only where it shortens the whole batch.
        self.closed_batch = False
        self._rng = random.Random(config.seed)
        self._fresh_queues()
        self.grammars = GrammarCompiler(self.tokenizer.hf, self.model_config.vocab_size, eos,
                                        sorted(self.tokenizer.special_ids))
        self._compiling: list[Request] = []      # structured-output requests whose grammar is being compiled
        # The engine's count is set before each of its steps, so loading leaves the process's as it found it. The
        # ranks of a CPU tensor-parallel engine keep the count their runners set (they share the cores).
        single = config.tensor_parallel_size == 1
        policy = thread_policy(self.runner.device, config.cpu_threads if single else torch.get_num_threads(), threads)
        self.threads = FixedThreads(policy.current) if policy is not None else None
        self.speculation = None
        if spec is not None:
            self.runner.draft = DraftModel(config, draft_config, self.runner, eos) if draft_config else None
        self._warm_up(policy)
        torch.set_num_threads(threads)
        if spec is not None:
            self.speculation = Speculation(spec, self.runner.draft)

    def _fresh_queues(self) -> None:
        """An empty KV cache (as the block manager sees it), scheduler and counters."""
        self.blocks = BlockManager(self.runner.num_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, self.config.max_num_seqs, self.config.max_num_batched_tokens)
        self._next_seq_id = 0
        self._prefix_queries = 0       # summed over the scheduler's outputs
        self._prefix_hits = 0

    def _warm_up(self, policy: ThreadTuner | FixedThreads | None) -> None:
        """Run dummy requests through the engine before the first real one, then forget them: a step of
        max_num_batched_tokens prompt tokens and WARM_UP_DECODES decode steps. One-time costs (loading the C
        kernels, oneDNN's and Triton's kernels for new shapes, the heap growing to a step's peak, the first pages of
        the KV cache) were otherwise paid by a fresh server's first requests. On the CPU the decode steps run under
        the engine's thread policy (`policy`, which takes over from here), so the thread tuner's first probe
        (engine/cpu_threads.py) alternates its thread counts on them rather than on those requests."""
        budget = self.config.max_num_batched_tokens
        capacity = self.blocks.num_blocks * self.config.block_size
        decodes = WARM_UP_DECODES
        length = max(1, min(WARM_UP_PROMPT_LEN, budget, self.max_model_len - decodes - 1, capacity - decodes - 1))
        count = max(1, min(self.config.max_num_seqs, -(-budget // length), capacity // (length + decodes + 1)))
        vocab = self.model_config.vocab_size
        params = SamplingParams(max_tokens=decodes + 1, temperature=1.0, seed=0, ignore_eos=True)
        for i in range(count):
            self.add_request(f"warm-up-{i}", [(7 * i + 3 * j + 1) % vocab for j in range(length)], params)
        while any(seq.num_computed_tokens < seq.num_prompt_tokens for r in self.requests.values() for seq in r.seqs):
            self.step()
        self.threads = policy
        while self.requests:
            self.step()
        self._fresh_queues()

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    stream: bool = False) -> None:
        """Queue a prompt (text or token ids). Streamed requests get delta outputs from every step."""
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if isinstance(prompt, str):
            try:
                text, token_ids = prompt, self.tokenizer.encode(prompt, limit=self.max_model_len - 1)
            except PromptTooLongError as exc:
                raise ValueError(f"{exc}: the context length is {self.max_model_len}, so no token could be "
                                 "generated") from None
        else:
            text, token_ids = None, _token_ids(prompt)
        self._validate(token_ids, params)
        thinking_ids = self._thinking_ids(params)
        opened = thinking_ids is not None and thinking.is_open(token_ids, thinking_ids[0], self.tokenizer)
        request = Request(request_id, text, token_ids, params, stream)
        if params.bad_words:
            request.bad_words_token_ids = self._bad_words(params.bad_words)
        self._check_drawable(params, request.bad_words_token_ids)
        if params.structured_outputs is not None:
            request.grammar = self.grammars.submit(params.structured_outputs)      # a ValueError if invalid
        if params.prompt_logprobs is not None:
            request.prompt_logprobs = [None]        # the first prompt token has no logprob
        room = self.max_model_len - len(token_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(64)
        for index in range(params.n):
            detok = self.tokenizer.detokenizer(token_ids, params.skip_special_tokens)
            seq = Sequence(self._next_seq_id, request, index, list(token_ids), derive_seed(base_seed, index),
                           max_tokens, detok)
            if thinking_ids is not None:
                seq.thinking = ThinkingBudget.starting(thinking_ids, params.thinking_token_budget, opened)
            self._next_seq_id += 1
            request.seqs.append(seq)
        self.requests[request_id] = request
        if request.grammar is None:
            for seq in request.seqs:
                self.scheduler.add(seq)
        else:
            self._compiling.append(request)       # scheduled once its grammar is compiled (`_admit_compiled`)

    def _admit_compiled(self, wait_s: float) -> list[Request]:
        """Schedule the structured-output requests whose grammar has compiled (waiting up to `wait_s` for the
        first when nothing else can run); a grammar that failed to compile ends its request ("abort"): those are
        returned."""
        failed = []
        if self._compiling and wait_s:
            concurrent.futures.wait([r.grammar for r in self._compiling], wait_s, concurrent.futures.FIRST_COMPLETED)
        for request in [r for r in self._compiling if r.grammar.done()]:
            self._compiling.remove(request)
            error = request.grammar.exception()
            for seq in request.seqs:
                if error is not None:
                    seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
                else:
                    seq.matcher = structured_output.GrammarState(request.grammar.result())
                    self.scheduler.add(seq)
            if error is not None:
                logger.error("request %s: its grammar failed to compile: %s", request.request_id, error)
                failed.append(request)
        return failed

    def _validate(self, token_ids: list[int], params: SamplingParams) -> None:
        vocab = self.model_config.vocab_size
        if not token_ids:
            raise ValueError("prompt must not be empty")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(token_ids)} tokens; the context length is {self.max_model_len}, "
                             "so no token could be generated")
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        for name, ids in (("logit_bias", params.logit_bias or {}), ("stop_token_ids", params.stop_token_ids),
                          ("allowed_token_ids", params.allowed_token_ids or [])):
            if any(t >= vocab for t in ids):
                raise ValueError(f"{name} has token ids outside the vocabulary [0, {vocab})")

    def _check_drawable(self, params: SamplingParams, bad_words: list[list[int]]) -> None:
        """A ValueError where the bans leave no token to draw from the first step on: one-token bad words (banned
        always) and, before min_tokens, the stop tokens, against allowed_token_ids (or the vocabulary)."""
        vocab = self.model_config.vocab_size
        allowed = params.allowed_token_ids

        def covers(banned: set[int]) -> bool:       # (the ids are known to be inside the vocabulary)
            return set(allowed) <= banned if allowed is not None else len(banned) >= vocab

        always = {ids[0] for ids in bad_words if len(ids) == 1}
        if covers(always):
            raise ValueError("bad_words leave no token to draw: they ban every token allowed_token_ids allows")
        if params.min_tokens:           # the sampler bans the stop tokens until then: something must be left
            stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.tokenizer.eos_token_ids))
            if covers(always | stops):
                raise ValueError("min_tokens leaves no token to draw: every token allowed is a stop token "
                                 "(stop_token_ids or EOS), which cannot be drawn before min_tokens tokens, or a "
                                 "bad word")

    def _thinking_ids(self, params: SamplingParams) -> tuple[int, int] | None:
        """The `<think>` and `</think>` ids a thinking_token_budget needs (None without one); a ValueError where the
        model's vocabulary lacks them."""
        if params.thinking_token_budget is None:
            return None
        ids = thinking.markers(self.tokenizer)
        if ids is None or max(ids) >= self.model_config.vocab_size:
            raise ValueError(f"thinking_token_budget needs a model that thinks between {thinking.START} and "
                             f"{thinking.END} tokens; this model's vocabulary has no such tokens")
        return ids

    def _bad_words(self, words: list[str]) -> list[list[int]]:
        sequences = self.tokenizer.word_token_ids(words)
        if any(t >= self.model_config.vocab_size for ids in sequences for t in ids):
            raise ValueError(f"bad_words tokenize to token ids outside the model's vocabulary "
                             f"[0, {self.model_config.vocab_size})")
        return sequences

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (also done when the engine is collected or at exit)."""
        if self._close is not None:
            self._close()

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its blocks; it produces no further output."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        if request in self._compiling:                # never scheduled
            self._compiling.remove(request)
            for seq in request.seqs:
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
            return
        for seq in request.seqs:
            if not seq.finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)

    def has_unfinished_requests(self) -> bool:
        """Whether any request is still waiting or running."""
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, apply the results; return the outputs this step produced. If the forward
        raises, the exception propagates and the step's results are not applied: nothing entered the prefix
        cache; its scheduling, admissions and preemptions stand, so the caller may step again (the same tokens
        are computed) or abort the requests (`LLM.generate` aborts them)."""
        outputs = []
        for request in self._admit_compiled(0 if self.scheduler.has_work else 0.05):
            outputs.append(self.processor.make_output(request))
            del self.requests[request.request_id]
        if self.speculation is not None:
            self.speculation.propose(self.scheduler.running, self.scheduler.reserve, self.scheduler.waiting,
                                     self.scheduler.max_num_seqs, self.closed_batch)
        scheduled = self.scheduler.schedule()
        self._prefix_queries += scheduled.prefix_queries
        self._prefix_hits += scheduled.prefix_hits
        if not scheduled.seqs:
            if self.scheduler.has_work:     # cannot happen: an empty cache always fits one sequence's chunk
                raise RuntimeError("the scheduler made no progress with requests waiting")
            return [o for o in outputs if o is not None]
        if self.threads is not None:
            self.threads.before_step()
        started = time.perf_counter()
        try:
            result = self.runner.execute(scheduled)   # if it raises, nothing was registered: nothing to undo
        except Exception as exc:
            if self.workers is not None:
                self.workers.check(cause=exc)             # a worker that died is the error to report
            raise
        elapsed = time.perf_counter() - started
        # The thread tuner compares neighbouring steps as alike; one that verified drafts is not (many more tokens
        # for its time), and such steps had it settle on one thread on an idle machine.
        if self.threads is not None and not any(scheduled.draft_token_ids):
            self.threads.after_step(scheduled.num_tokens, elapsed)
        if self.speculation is not None:
            self.speculation.observe(scheduled.num_tokens, elapsed, result.sampled_seqs, result.drafts,
                                     result.num_accepted)
        self.scheduler.update(scheduled, result.rejected)
        finished = self.processor.process(result, time.monotonic())
        for seq in finished:
            self.scheduler.finish(seq)
        # Only streamed requests and those with a finished choice have anything to report.
        reporting = {seq.request.request_id: seq.request for seq in scheduled.seqs
                     if seq.request.stream or seq.finished}
        outputs = [o for o in outputs if o is not None]
        for request_id, request in reporting.items():
            output = self.processor.make_output(request)
            if output is not None:
                outputs.append(output)
            if request.finished:
                del self.requests[request_id]
        return outputs

    def stats(self) -> EngineStats:
        """A snapshot of the queues and the KV cache."""
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_blocks_total=self.blocks.num_blocks,
            kv_blocks_used=self.blocks.num_blocks - self.blocks.num_free_blocks,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_queries=self._prefix_queries,
            prefix_cache_hits=self._prefix_hits,
            **(self.speculation.counters() if self.speculation is not None else {}),
        )


def _token_ids(prompt: object) -> list[int]:
    """A prompt's token ids as ints (numpy's and torch's integers too); a ValueError for anything else."""
    try:
        items = list(prompt)
        token_ids = [operator.index(t) for t in items if not isinstance(t, bool)]
    except TypeError:
        items, token_ids = None, None
    if token_ids is None or len(token_ids) != len(items):
        raise ValueError(f"a prompt is a string or a list of token ids (ints), got {type(prompt).__name__} "
                         f"{str(prompt)[:80]}")
    return token_ids
