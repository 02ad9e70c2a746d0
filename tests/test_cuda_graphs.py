"""The decode-graph path (engine/cuda_graphs.py) without the capture, on the CPU: its static buffers and padding
rows give the eager engine's tokens while decode batches shrink and grow through the padded sizes. (The capture
itself needs a GPU: tests/gpu/test_engine_cuda.py.)"""

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
