"""Owns the model and its KV cache: turns a scheduled step into tensors, runs the forward, samples.

One step packs the new tokens of every scheduled sequence into flat tensors (no padding): token ids,
positions, and the cache slot each token's key and value go to. The attention metadata says, per sequence,
where its tokens start in the pack, how long its cached context is and which blocks hold it.

Under tensor parallelism every rank has a runner over its slices of the model and its own KV heads; rank 0's
`execute` builds the step's `StepInputs`, broadcasts them (engine/step_inputs.py), and every rank runs `forward`
on them; rank 0 alone samples.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

import llm_kernels
from engine import kv_cache
from engine.config import EngineConfig, ModelConfig
from engine.cpu_malloc import keep_freed_memory
from engine.cuda_graphs import DecodeGraphs
from engine.loader import load_model
from engine.models.attention import AttentionMetadata
from engine.parallel_state import SINGLE, TensorParallel
from engine.sampler import Sampler, SamplerOutput, TopLogprobs, top_logprobs
from engine.scheduler import SchedulerOutput
from engine.sequence import Sequence
from engine.speculative import accepted_length
from engine.step_inputs import StepChannel, StepInputs
from engine.transfer import tensor_to_device, to_device
from llm_kernels import backend as kernel_backends
from llm_kernels.cpu.linear import bound_caches

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class StepOutput:
    """What one forward produced: next tokens for the sequences that reached the end of their known tokens (for
    each, the rows drawn: one, or one per draft token plus one; the first `1 + num_accepted` of them are its new
    tokens), the draft tokens each scheduled sequence had rejected (for the scheduler), and prompt logprobs for the
    prompt positions computed this step."""

    sampled_seqs: list[Sequence] = field(default_factory=list)
    sampled: SamplerOutput | None = None
    first_rows: list[int] = field(default_factory=list)           # per sampled_seqs entry: its first row
    num_accepted: list[int] = field(default_factory=list)         # ... and how many of its drafts it accepted
    drafts: list[list[int]] = field(default_factory=list)         # ... of these
    rejected: list[int] = field(default_factory=list)             # per scheduled sequence, in the step's order
    prompt_seqs: list[Sequence] = field(default_factory=list)
    prompt_positions: list[range] = field(default_factory=list)   # prompt token indices, per prompt_seqs entry
    prompt_logprobs: TopLogprobs | None = None


class ModelRunner:
    """Loads the checkpoint onto the device, allocates the paged KV cache and executes steps."""

    def __init__(self, config: EngineConfig, model_config: ModelConfig, max_model_len: int,
                 eos_token_ids: list[int], tp: TensorParallel = SINGLE, kv_share: float = 1.0) -> None:
        self.config = config
        self.tp = tp
        self.channel: StepChannel | None = None     # rank 0 of several: how it hands each step to the others
        self.model_config = model_config
        if config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)      # on the thread that will run the steps
        elif tp.size > 1 and config.torch_device().type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp.size))    # the ranks share the cores
        logger.info("torch runs CPU work on %d threads", torch.get_num_threads())
        self.device = config.torch_device(tp.rank)
        if self.device.type == "cpu":
            keep_freed_memory()            # each step's activations reuse resident pages (engine/cpu_malloc.py)
            bound_caches()                 # oneDNN's compiled products, one per step shape (llm_kernels/cpu/linear.py)
        self.dtype = config.torch_dtype(model_config, self.device)
        self.block_size = config.block_size
        self.max_model_len = max_model_len
        self.kernels = self._select_kernels()         # before anything is loaded: a refusal leaves nothing behind
        use_graphs = self._use_cuda_graphs()
        self.model = load_model(config.model, model_config, max_model_len, self.dtype, self.device, self.kernels,
                                tp)
        self.sampler = Sampler(eos_token_ids, self.kernels, model_config.vocab_size, self.device)
        cfg = model_config
        kv_heads = self.model.attention_layers()[0].num_kv_heads        # this rank's
        shape = kv_cache.KVCacheShape(cfg.num_layers, self.block_size, kv_heads, cfg.head_dim, self.dtype)
        graphs_sample = use_graphs and tp.size == 1   # on one rank the graphs also sample (a gather is not captured)
        budget = int(self._memory_budget(graphs_sample) * kv_share) if config.kv_cache_blocks is None else 0
        self.num_blocks = self._agreed(kv_cache.choose_num_blocks(shape, max_model_len, config.max_num_seqs, budget,
                                                                  config.kv_cache_blocks))
        self.kv_cache = kv_cache.allocate(shape, self.num_blocks, self.device)
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
        self.draft = None        # a speculative draft model (engine/draft_model.py), mirrored after each forward
        self.graphs: DecodeGraphs | None = None
        if use_graphs:
            self.graphs = DecodeGraphs(self.model, min(config.max_num_seqs, config.max_num_batched_tokens),
                                       -(-max_model_len // self.block_size), self.device,
                                       logits=self.model.compute_logits if graphs_sample else None,
                                       sample=self.kernels.sample if graphs_sample else None)

    def _agreed(self, num_blocks: int) -> int:
        """The fewest KV blocks any rank can hold: every rank allocates that many (one block table for all)."""
        if self.tp.size == 1:
            return num_blocks
        least = to_device([num_blocks], torch.int64, self.device)
        torch.distributed.all_reduce(least, op=torch.distributed.ReduceOp.MIN)
        return int(least.item())

    def _select_kernels(self) -> llm_kernels.KernelSet:
        """The engine's kernels, chosen once: `kernels` if it is a KernelSet, else `llm_kernels.select` for the
        device and that backend (None: what `llm_kernels.use` or LLM_KERNELS_BACKEND says now). Eager steps and
        CUDA graphs run the same ones, whatever `use` says later. A backend that cannot run on the device is refused."""
        chosen = self.config.kernels
        try:
            if isinstance(chosen, llm_kernels.KernelSet):      # its backends must run here (a set for "cuda" on a CPU)
                kernel_backends.resolve(self.device, chosen.backend)
                kernel_backends.resolve_layer_ops(self.device, chosen.layer_ops)
                kernels = chosen
            else:
                kernels = llm_kernels.select(self.device, chosen)
        except RuntimeError as exc:
            raise ValueError(f"device {self.device}: {exc}") from exc
        logger.info("kernels: %s (layer ops: %s)", kernels.backend, kernels.layer_ops)
        return kernels

    def _use_cuda_graphs(self) -> bool:
        """Whether decode steps replay CUDA graphs: `cuda_graphs` if set, else wherever they can run (a CUDA
        device with the Triton kernels)."""
        backend = self.kernels.backend
        possible = self.device.type == "cuda" and backend == "triton"
        if self.config.cuda_graphs and not possible:
            raise ValueError(f"cuda_graphs=True needs a CUDA device and the Triton kernels, not {self.device} "
                             f"and the {backend!r} kernels backend")
        return possible if self.config.cuda_graphs is None else self.config.cuda_graphs

    def _memory_budget(self, graphs_sample: bool = False) -> int:
        """Bytes the KV cache may take: on a GPU, what `gpu_memory_utilization` leaves after the activations of a
        full step, the sampler's logits and workspace, and (`graphs_sample`) the sampling graphs' own (the largest
        one's logits, their bf16 product and its workspace stay in the graphs' pool)."""
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            cfg = self.model_config
            tokens = self.config.max_num_batched_tokens
            activations = tokens * (6 * cfg.hidden_size + 3 * cfg.intermediate_size) * 4
            logits = self.config.max_num_seqs * cfg.vocab_size * (16 + (10 if graphs_sample else 0))
            return int(free - (1 - self.config.gpu_memory_utilization) * total - activations - logits)
        return kv_cache.cpu_budget()

    def execute(self, step: SchedulerOutput) -> StepOutput:
        """Rank 0: run one scheduled step (on every rank) and sample the sequences that need a next token. On a
        GPU, with the runner's device current: Triton launches on the current device, which need not be this one
        (cuda:1)."""
        if self.device.type != "cuda":
            return self._execute(step)
        with torch.cuda.device(self.device):
            return self._execute(step)

    @torch.inference_mode()
    def _execute(self, step: SchedulerOutput) -> StepOutput:
        out = StepOutput()
        inputs = self._inputs(step, out)
        if self.channel is not None:
            self.channel.send(inputs)
        if self._graph_samples(inputs, out):
            rows = self.sampler.kernel_rows(out.sampled_seqs)
            drawn = self.graphs.run_sampled(inputs.input_ids, inputs.positions, inputs.slots, inputs.block_tables,
                                            inputs.seq_lens, rows)
            if self.draft is not None:
                self.draft.mirror(inputs)
            out.sampled = SamplerOutput(drawn.tolist(), None, [])
            out.num_accepted = [0] * len(out.sampled_seqs)
            return out
        sample_logits, prompt_logits = self._forward(inputs)
        if self.draft is not None:
            self.draft.mirror(inputs)
        if sample_logits is not None:       # on a GPU, the forward may still be running: the sampler's host work
            row_seqs, offsets = [], []      # (token masks) overlaps it
            for seq, drafts in zip(out.sampled_seqs, out.drafts):
                row_seqs += [seq] * (len(drafts) + 1)
                offsets += range(len(drafts) + 1)
            out.sampled = self.sampler(sample_logits, row_seqs, offsets if len(offsets) > len(out.sampled_seqs)
                                       else None)
            self._accept(step, out)
        if prompt_logits is not None:
            out.prompt_logprobs = self._prompt_logprobs(prompt_logits, out)
        return out

    def _graph_samples(self, x: StepInputs, out: StepOutput) -> bool:
        """Whether the decode graphs both run this step and draw its tokens: a decode step that fits them, whose
        every sequence draws a token with nothing but the sample kernel."""
        return (self.graphs is not None and self.graphs.samples and x.max_seqlen_q == 1
                and len(x.sample_rows) == len(x.seq_lens) <= self.graphs.max_batch and not x.prompt_rows
                and self.sampler.kernel_only(out.sampled_seqs))

    def _accept(self, step: SchedulerOutput, out: StepOutput) -> None:
        """Each sampled sequence keeps its drafts up to the first that differs from the token drawn in its place
        (engine/speculative.py says why that is exact)."""
        if not any(out.drafts):
            out.num_accepted = [0] * len(out.sampled_seqs)
            return
        drawn = out.sampled.token_ids
        rejected = {}
        for seq, row, drafts in zip(out.sampled_seqs, out.first_rows, out.drafts):
            n = accepted_length(drafts, drawn[row:row + len(drafts) + 1])
            out.num_accepted.append(n)
            rejected[seq.seq_id] = len(drafts) - n
        out.rejected = [rejected.get(seq.seq_id, 0) for seq in step.seqs]

    def _inputs(self, step: SchedulerOutput, out: StepOutput) -> StepInputs:
        """The step's device work as plain lists; `out` learns which sequences are sampled or get prompt logprobs."""
        if len(step.seqs) == sum(step.num_new_tokens) and not any(step.prompt_logprob_positions):
            return self._decode_inputs(step, out)
        return self._mixed_inputs(step, out)

    def _mixed_inputs(self, step: SchedulerOutput, out: StepOutput) -> StepInputs:
        """`_inputs` of any step: prefill chunks, decodes, draft tokens to verify and prompt logprobs mixed."""
        x = StepInputs([], [], [], [0], [], step.block_tables, [], [])
        bs = self.block_size
        cu = 0
        for seq, count, wanted, drafts in zip(step.seqs, step.num_new_tokens, step.prompt_logprob_positions,
                                              step.draft_token_ids):
            start = seq.num_computed_tokens
            end = start + count
            table = seq.block_table
            if count == 1:                                  # a decode: the common case, kept cheap
                x.input_ids.append(seq.token_ids[start])
                x.positions.append(start)
                x.slots.append(table[start // bs] * bs + start % bs)
            else:
                x.input_ids += seq.token_ids[start:end - len(drafts)]
                x.input_ids += drafts
                x.positions += range(start, end)
                x.slots += [table[t // bs] * bs + t % bs for t in range(start, end)]
            if wanted:              # row t predicts prompt token t + 1
                row0 = cu - start - 1
                x.prompt_rows += range(row0 + wanted.start, row0 + wanted.stop)
                out.prompt_seqs.append(seq)
                out.prompt_positions.append(wanted)
            cu += count
            x.cu_seqlens.append(cu)
            x.seq_lens.append(end)
            if end - len(drafts) == len(seq.token_ids):     # a row for each draft token and one after them
                out.first_rows.append(len(x.sample_rows))
                x.sample_rows += range(cu - 1 - len(drafts), cu)
                out.sampled_seqs.append(seq)
                out.drafts.append(drafts)
        return x

    def _decode_inputs(self, step: SchedulerOutput, out: StepOutput) -> StepInputs:
        """`_inputs` of a step in which every sequence computes one token (so none verifies drafts) and none
        wants prompt logprobs: the steady state of decoding, built a field at a time."""
        bs = self.block_size
        seqs = step.seqs
        starts = [seq.num_computed_tokens for seq in seqs]
        sampled = [i for i, (seq, start) in enumerate(zip(seqs, starts)) if start + 1 == len(seq.token_ids)]
        out.sampled_seqs = [seqs[i] for i in sampled]
        out.first_rows = list(range(len(sampled)))
        out.drafts = [[] for _ in sampled]
        return StepInputs(
            input_ids=[seq.token_ids[start] for seq, start in zip(seqs, starts)],
            positions=starts,
            slots=[seq.block_table[start // bs] * bs + start % bs for seq, start in zip(seqs, starts)],
            cu_seqlens=list(range(len(seqs) + 1)),
            seq_lens=[start + 1 for start in starts],
            block_tables=step.block_tables,
            sample_rows=sampled,
            prompt_rows=[],
        )

    @torch.inference_mode()
    def forward(self, x: StepInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Ranks > 0 (rank 0 comes through `execute`): the forward of one step, then the logits of its sampled
        rows and of its prompt-logprob rows (float32 on rank 0; None elsewhere, and where there are no such
        rows)."""
        if self.device.type != "cuda":
            return self._forward(x)
        with torch.cuda.device(self.device):
            return self._forward(x)

    def _forward(self, x: StepInputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.graphs is not None and x.max_seqlen_q == 1 and len(x.seq_lens) <= self.graphs.max_batch:
            hidden = self.graphs.run(x.input_ids, x.positions, x.slots, x.block_tables, x.seq_lens)   # a decode
        else:
            dev = self.device
            meta = AttentionMetadata(
                slot_mapping=to_device(x.slots, torch.int64, dev),
                block_tables=tensor_to_device(torch.from_numpy(x.block_tables), dev),
                seq_lens=to_device(x.seq_lens, torch.int32, dev),
                cu_seqlens_q=to_device(x.cu_seqlens, torch.int32, dev),
                max_seqlen_q=x.max_seqlen_q,
            )
            hidden = self.model(to_device(x.input_ids, torch.int64, dev), to_device(x.positions, torch.int64, dev),
                                meta)
        logits = [self.model.compute_logits(_select_rows(hidden, rows)) if rows else None
                  for rows in (x.sample_rows, x.prompt_rows)]
        return logits[0], logits[1]

    def _prompt_logprobs(self, logits: torch.Tensor, out: StepOutput) -> TopLogprobs:
        targets: list[int] = []
        ks: list[int] = []
        for seq, span in zip(out.prompt_seqs, out.prompt_positions):
            targets += seq.request.prompt_token_ids[span.start:span.stop]
            ks += [seq.params.prompt_logprobs] * len(span)
        logprobs = torch.log_softmax(logits, dim=-1)
        return top_logprobs(logprobs, to_device(targets, torch.int64, self.device), ks)


def _select_rows(hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The `rows` (increasing) of `hidden`: `hidden` itself when they are all of its rows, as in a decode step."""
    if len(rows) == hidden.shape[0]:
        return hidden
    return hidden[to_device(rows, torch.int64, hidden.device)]
