"""The engine on the GPU (Triton kernels compiled for it) generates transformers' greedy tokens on the same GPU,
in float32, with chunked prefill, preemption and prefix-cache hits all happening: with its defaults there (decode
steps replayed from CUDA graphs, the fused Triton layer ops) and without either."""

from __future__ import annotations

import os

import pytest
import torch

# Importing Triton here, before tests/interpreter imports it under the interpreter, would break those tests
# (Triton decides at its own import whether its jit'd helpers are interpreted): skip first.
if not (torch.cuda.is_available() or os.environ.get("GPU_TESTS_DRY_RUN") == "1"):
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import transformers  # noqa: E402

import llm_kernels  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.models.attention import AttentionMetadata  # noqa: E402
from engine.sampler import SamplingRows  # noqa: E402
from llm_kernels import triton_ops  # noqa: E402

PROMPTS = ["The quick brown fox", "def add(a, b):\n    return", "x", "café naïve résumé 日本語",
           "import os\nimport sys\nprint('hello world')\n" * 3, "for i in range(10):\n    total += i * i\n" * 4]
NEW_TOKENS = 24



def hf_greedy(path: str, device: torch.device) -> list[list[int]]:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    outputs = []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                                 pad_token_id=tokenizer.pad_token_id)
        outputs.append(out[0, ids.shape[1]:].tolist())
    return outputs


@pytest.mark.parametrize(("cuda_graphs", "layer_ops"), [(None, True), (False, False), (True, False)])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3-moe", "mixtral", "gemma3", "mistral-window"])
def test_greedy_matches_transformers_on_the_gpu(device, checkpoint_factory, monkeypatch, arch, cuda_graphs,
                                                 layer_ops):
    """(None, True) is the engine's default on CUDA: graphs, and the fused Triton RMSNorm, SiLU-and-mul and
    rotary (captured in them). The others turn graphs off, or the fused ops (`KernelSet.with_torch_layer_ops`)."""
    if cuda_graphs and device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU (the dry run is on the CPU)")
    path = checkpoint_factory(arch, seed=len(arch))
    expected = hf_greedy(path, device)
    calls = []
    layer_names = {"rms_norm", "silu_and_mul", "rotary"}
    llm_kernels.use("auto" if device.type == "cuda" else "triton")   # conftest resets it; the CPU dry run needs Triton
    for name in {"store_kv", "paged_attention", "sample"} | layer_names:
        kernel = getattr(triton_ops, name)
        monkeypatch.setattr(triton_ops, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    kernels = None if layer_ops else llm_kernels.select(device).with_torch_layer_ops()
    # A 16-token step budget chunks the prompts; 18 blocks of 8 cannot hold all six sequences at once.
    llm = LLM(path, device=device.type, dtype="float32", block_size=8, kv_cache_blocks=18,
              max_num_batched_tokens=16, max_model_len=128, cuda_graphs=cuda_graphs, kernels=kernels)
    replays = []                                        # decode steps replay a captured graph
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda graph: replays.append(1) or replay(graph))
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outputs = llm.generate(PROMPTS, params)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert bool(replays) == (device.type == "cuda" and cuda_graphs is not False)
    assert llm.engine.stats().num_preemptions > 0
    for _ in range(2):                                  # the second time over the first one's cached blocks
        assert llm.generate(PROMPTS[4], params)[0].outputs[0].token_ids == expected[4]
    assert llm.engine.stats().prefix_cache_hits > 0
    assert {"store_kv", "paged_attention", "sample"} <= set(calls)
    used = layer_names - ({"silu_and_mul"} if arch in ("gemma3", "mixtral") else set())   # GELU; experts' own
    assert (used <= set(calls)) if layer_ops else not (layer_names & set(calls))
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks


def test_decode_graphs_replay_the_eager_forward(device, checkpoint_factory, monkeypatch):
    """bf16, contexts long enough for the decode kernel's split-and-merge path, a batch padded from 12 to 16:
    the replayed forward gives the eager forward's hidden states for the same step, and the sampling graph the
    tokens the sample kernel draws eagerly from them."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU (the dry run is on the CPU)")
    path = checkpoint_factory("llama", seed=5, hidden_size=256, intermediate_size=512, max_position_embeddings=2048)
    llm = LLM(path, device="cuda", dtype="bfloat16", block_size=16, kv_cache_blocks=512, max_model_len=2048,
              max_num_seqs=32, cuda_graphs=True)
    runner = llm.engine.runner
    runner.kv_cache.normal_()
    g = torch.Generator().manual_seed(0)
    n = 12
    seq_lens = torch.randint(1, 2049, (n,), generator=g).tolist()
    tables = torch.randint(n, 512, (n, 128), generator=g)
    for s, length in enumerate(seq_lens):            # each sequence writes into a last block of its own
        tables[s, (length - 1) // 16] = s
    slots = [s * 16 + (length - 1) % 16 for s, length in enumerate(seq_lens)]
    ids = torch.randint(0, 300, (n,), generator=g).tolist()
    positions = [length - 1 for length in seq_lens]
    with torch.inference_mode():
        meta = AttentionMetadata(torch.tensor(slots, device=device), tables.int().to(device),
                                 torch.tensor(seq_lens, dtype=torch.int32, device=device),
                                 torch.arange(n + 1, dtype=torch.int32, device=device), 1)
        eager = runner.model(torch.tensor(ids, device=device), torch.tensor(positions, device=device), meta)
        replayed = runner.graphs.run(ids, positions, slots, tables.int().numpy(), seq_lens)
        assert replayed.shape == eager.shape
        torch.testing.assert_close(replayed.float(), eager.float(), atol=5e-2, rtol=5e-2)
        # The sampling graphs draw what the sample kernel draws eagerly from the replayed forward's logits, at the
        # padded size (16: the same GEMM and sampler launch shapes, so the same rounding), padding rows greedy.
        assert runner.graphs.samples
        rows = SamplingRows(temperature=[0.0, 0.7, 1.0, 1.3] * 3, top_p=[1.0, 0.9, 1.0, 0.5] * 3,
                            min_p=[0.0, 0.0, 0.05, 0.0] * 3, top_k=[0, 0, 20, 3] * 3, seeds=list(range(-6, 6)),
                            drawn_at=[length for length in seq_lens])
        padded = torch.cat([replayed, replayed.new_zeros(4, replayed.shape[1])])
        pads = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seeds": 0, "drawn_at": 0}
        dtypes = {"temperature": torch.float32, "top_k": torch.int32, "top_p": torch.float32,
                  "min_p": torch.float32, "seeds": torch.int64, "drawn_at": torch.int64}
        params = [torch.tensor(getattr(rows, name) + [pad] * 4, dtype=dtypes[name], device=device)
                  for name, pad in pads.items()]
        expected = runner.kernels.sample(runner.model.compute_logits(padded), *params)[:n]
        replays = []
        replay = torch.cuda.CUDAGraph.replay
        monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda graph: replays.append(1) or replay(graph))
        drawn = runner.graphs.run_sampled(ids, positions, slots, tables.int().numpy(), seq_lens, rows)
        assert len(replays) == 2                         # the forward's graph, then the sampler's
        assert drawn.tolist() == expected.tolist()


@pytest.mark.parametrize("cuda_graphs", [None, False])
def test_two_gpus_generate_what_one_does(device, checkpoint_factory, cuda_graphs):
    """Tensor parallelism over cuda:0 and cuda:1 (NCCL), with and without CUDA graphs (captured per rank): the
    tokens of one GPU, with preemption and chunked prefill happening."""
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    path = checkpoint_factory("qwen3", seed=3)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    options = dict(device="cuda", dtype="float32", block_size=8, kv_cache_blocks=18, max_num_batched_tokens=16,
                   max_model_len=128, cuda_graphs=cuda_graphs, kernels="auto")
    expected = [o.outputs[0].token_ids for o in LLM(path, **options).generate(PROMPTS, params)]
    llm = LLM(path, tensor_parallel_size=2, **options)
    try:
        assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)] == expected
        assert llm.engine.stats().num_preemptions > 0
        assert (llm.engine.runner.graphs is not None) == (cuda_graphs is None)
    finally:
        llm.close()


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_speculative_decoding_changes_no_token_on_the_gpu(device, checkpoint_factory, monkeypatch, method):
    """Drafts verified by the Triton prefill kernel (a decode step with drafts is no graph replay) and drawn by the
    Triton sampler at their positions: greedy and seeded sampling give the tokens of no speculation."""
    from engine.speculation_gate import SpeculationGate

    monkeypatch.setattr(SpeculationGate, "allowed", lambda self, batch, running=None: batch)     # draft on every step
    path = checkpoint_factory("qwen3", seed=5, initializer_range=0.05)            # repeats itself: drafts hold
    config = ({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
              if method == "ngram" else {"method": "draft_model", "model": path, "num_speculative_tokens": 3})
    options = dict(device=device.type, dtype="float32", block_size=8, kv_cache_blocks=18, max_num_batched_tokens=16,
                   max_model_len=128, kernels="triton" if device.type == "cpu" else "auto")
    plain, spec = LLM(path, **options), LLM(path, speculative_config=config, **options)
    for params in (SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True),
                   SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=NEW_TOKENS, ignore_eos=True)):
        expected = [o.outputs[0].token_ids for o in plain.generate(PROMPTS, params)]
        assert [o.outputs[0].token_ids for o in spec.generate(PROMPTS, params)] == expected
    stats = spec.engine.stats()
    assert stats.spec_num_accepted_tokens > 0 and stats.num_preemptions > 0
    assert spec.engine.blocks.num_free_blocks == spec.engine.blocks.num_blocks


def test_a_thinking_budget_on_the_gpu(device, checkpoint_factory):
    """A spent thinking budget's `</think>` is forced on the eager sampling path (a step with a force due is no
    graph draw), then the graphs draw again: the tokens before and after it are the free run's and those of the
    prompt that ends with the forced `</think>`."""
    path = checkpoint_factory("qwen3", seed=7, thinking=True)
    llm = LLM(path, device=device.type, dtype="float32", max_model_len=128,
              kernels="triton" if device.type == "cpu" else "auto")
    try:
        vocab = llm.engine.tokenizer.hf.get_vocab()
        start, end = vocab["<think>"], vocab["</think>"]
        prompts = [[(5 * i + 11 * j) % 300 + 1 for j in range(9)] + [start] for i in range(4)]
        greedy = dict(temperature=0, ignore_eos=True)
        free = [o.outputs[0].token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=6, **greedy))]
        params = SamplingParams(max_tokens=12, thinking_token_budget=4, **greedy)
        budgeted = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        for prompt, alone, got in zip(prompts, free, budgeted):
            if end in alone[:4]:
                continue                                    # the model closed it itself
            assert got[:4] == alone[:4] and got[4] == end
            after = llm.generate([prompt + got[:5]], SamplingParams(max_tokens=7, **greedy))[0].outputs[0].token_ids
            assert got[5:] == after
        assert any(end not in alone[:4] for alone in free)
    finally:
        llm.close()
