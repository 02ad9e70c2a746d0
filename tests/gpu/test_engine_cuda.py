"""The engine on the GPU (Triton kernels compiled for it) generates transformers' greedy tokens on the same GPU,
in float32, with chunked prefill, preemption and prefix-cache hits all happening, eagerly and with its decode
steps replayed from CUDA graphs."""

from __future__ import annotations

import os

import pytest
import torch

# Importing Triton here, before tests/kernels imports it under the interpreter, would break those tests
# (Triton decides at its own import whether its jit'd helpers are interpreted): skip first.
if not (torch.cuda.is_available() or os.environ.get("GPU_TESTS_DRY_RUN") == "1"):
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import transformers  # noqa: E402

from engine import LLM, SamplingParams  # noqa: E402
from kernels import triton_ops  # noqa: E402

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


@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_matches_transformers_on_the_gpu(device, checkpoint_factory, monkeypatch, arch, cuda_graphs):
    if cuda_graphs and device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU (the dry run is on the CPU)")
    path = checkpoint_factory(arch, seed=len(arch))
    expected = hf_greedy(path, device)
    calls = []
    for name in ("store_kv", "paged_attention", "sample"):
        kernel = getattr(triton_ops, name)
        monkeypatch.setattr(triton_ops, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    # A 16-token step budget chunks the prompts; 18 blocks of 8 cannot hold all six sequences at once.
    llm = LLM(path, device=device.type, dtype="float32", block_size=8, kv_cache_blocks=18,
              max_num_batched_tokens=16, max_model_len=128, cuda_graphs=cuda_graphs)
    replays = []
    if cuda_graphs:                                     # decode steps replay a captured graph
        graphs = llm.engine.runner.graphs
        run = graphs.run
        graphs.run = lambda ids, *rest: replays.append(len(ids)) or run(ids, *rest)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outputs = llm.generate(PROMPTS, params)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert bool(replays) == cuda_graphs
    assert llm.engine.stats().num_preemptions > 0
    for _ in range(2):                                  # the second time over the first one's cached blocks
        assert llm.generate(PROMPTS[4], params)[0].outputs[0].token_ids == expected[4]
    assert llm.engine.stats().prefix_cache_hits > 0
    assert {"store_kv", "paged_attention", "sample"} <= set(calls)
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks
