"""The decode-graph path (engine/cuda_graphs.py) without the capture, on the CPU: its static buffers and padding
rows give the eager engine's tokens while decode batches shrink and grow through the padded sizes, also where the
graphs draw the tokens. (The capture itself needs a GPU: tests/gpu/test_engine_cuda.py.)"""

from __future__ import annotations

import pytest
import torch
from test_models_vs_hf import PROMPTS, assert_all_blocks_free

import llm_kernels
from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.cuda_graphs import DecodeGraphs


def test_padded_decode_steps_give_the_eager_tokens(llama_path):
    # Five sequences at most (padded sizes 1, 2, 4, 5) and different lengths: batches of 5, 4, 3, 2 and 1 occur,
    # so padding rows follow rows that held live sequences a step before.
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 9, 17, 24, 5, 12, 20, 7, 14)]
    expected = [o.outputs[0].token_ids for o in LLM(llama_path, block_size=8, max_num_seqs=5).generate(PROMPTS, params)]
    llm = LLM(llama_path, block_size=8, max_num_seqs=5)
    runner = llm.engine.runner
    graphs = DecodeGraphs(runner.model, 5, -(-runner.max_model_len // runner.block_size), runner.device,
                          capture=False)
    sizes = []
    run = graphs.run
    graphs.run = lambda ids, *rest: sizes.append(len(ids)) or run(ids, *rest)
    runner.graphs = graphs
    assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)] == expected
    assert {1, 3, 5} <= set(sizes)
    assert_all_blocks_free(llm)


def test_decode_graphs_draw_the_eager_sampler_tokens(llama_path):
    """Sampling in the decode graphs: seeded and unseeded draws with temperature, top-k, top-p and min-p give the
    eager sampler's tokens, padding rows included; a step with a sequence that wants logprobs, a penalty or a logit
    bias, or is under min_tokens, is drawn eagerly from the graph's hidden states (both paths run here)."""
    params = [SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=3, max_tokens=17, ignore_eos=True),
              SamplingParams(temperature=1.0, top_k=5, max_tokens=24, ignore_eos=True),
              SamplingParams(temperature=0.7, top_p=0.8, seed=11, max_tokens=5, ignore_eos=True),
              SamplingParams(temperature=1.2, min_p=0.05, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.9, top_k=50, top_p=0.95, min_p=0.01, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0.8, logprobs=2, max_tokens=7, ignore_eos=True),
              SamplingParams(temperature=0.8, repetition_penalty=1.3, max_tokens=4, ignore_eos=True),
              SamplingParams(temperature=0.8, min_tokens=6, max_tokens=14, seed=5),
              SamplingParams(temperature=0.8, logit_bias={7: 3.0}, max_tokens=3, ignore_eos=True)]
    prompts = [*PROMPTS, "One more prompt, for the tenth request."][:len(params)]
    eager = LLM(llama_path, block_size=8, max_num_seqs=5).generate(prompts, params)
    llm = LLM(llama_path, block_size=8, max_num_seqs=5)
    runner = llm.engine.runner
    graphs = DecodeGraphs(runner.model, 5, -(-runner.max_model_len // runner.block_size), runner.device,
                          capture=False, logits=runner.model.compute_logits, sample=runner.kernels.sample)
    assert graphs.samples
    calls = {"run": [], "run_sampled": []}
    for name, sizes in calls.items():
        method = getattr(graphs, name)
        setattr(graphs, name, lambda ids, *rest, method=method, sizes=sizes: sizes.append(len(ids))
                or method(ids, *rest))
    runner.graphs = graphs
    got = llm.generate(prompts, params)
    for mine, theirs in zip(got, eager):
        assert mine.outputs[0].token_ids == theirs.outputs[0].token_ids
        if theirs.outputs[0].logprobs is not None:     # the same tokens and ranks; padded batches round apart
            for a, b in zip(mine.outputs[0].logprobs, theirs.outputs[0].logprobs, strict=True):
                assert {t: (lp.rank, lp.decoded_token) for t, lp in a.items()} == \
                    {t: (lp.rank, lp.decoded_token) for t, lp in b.items()}
                assert [lp.logprob for lp in a.values()] == pytest.approx([lp.logprob for lp in b.values()], abs=1e-4)
    assert {1, 3} <= set(calls["run_sampled"]) and calls["run"]
    assert_all_blocks_free(llm)


def test_cuda_graphs_need_a_gpu(llama_path, monkeypatch):
    """True requires them, refused before the weights are loaded or the KV cache allocated; the default (None)
    uses them only where they can run, so not on the CPU. A kernels backend that cannot run on the device is a
    ValueError up front too."""
    import engine.model_runner

    loads = []
    load_model = engine.model_runner.load_model
    monkeypatch.setattr(engine.model_runner, "load_model", lambda *a: loads.append(1) or load_model(*a))
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device and the Triton kernels"):
        LLM(llama_path, device="cpu", cuda_graphs=True)
    assert loads == []
    monkeypatch.setattr(llm_kernels.backend, "_forced", "triton")                 # restored after the test
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="device cpu: kernels backend 'triton' on a cpu tensor needs TRITON_INTERP"):
        LLM(llama_path, device="cpu", cuda_graphs=False)
    assert loads == []
    monkeypatch.setattr(llm_kernels.backend, "_forced", None)
    assert LLM(llama_path, device="cpu", kv_cache_blocks=64).engine.runner.graphs is None
    with pytest.raises(ValueError, match=r"cuda_graphs must be True, False or None \(auto\)"):
        EngineConfig(model=llama_path, device="cpu", cuda_graphs="yes")
    if not torch.cuda.is_available():                       # a clear error, not torch's assertion
        with pytest.raises(ValueError, match="no CUDA device is available"):
            EngineConfig(model=llama_path, device="cuda")
