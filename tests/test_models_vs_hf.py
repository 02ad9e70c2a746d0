"""Greedy generation equals Hugging Face transformers' on every supported architecture, also when the
prefix cache hits, when prefills are chunked and when sequences are preempted."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers

from engine import LLM, SamplingParams

PROMPTS = [
    "The quick brown fox",
    "def add(a, b):\n    return",
    "x",
    "Paged attention keeps the KV cache in fixed-size blocks. Continuous batching adds and removes",
    "import os\nimport sys\nprint('hello world')\n" * 3,
    "café naïve résumé 日本語",
    "for i in range(10):\n    total += i * i\n" * 5,
    "Continuous batching adds and removes sequences at every step. The quick brown fox jumps over",
    "😀🎉",
]
NEW_TOKENS = 24


@functools.cache
def hf_greedy(path: str, prompt: str | tuple[int, ...], new_tokens: int = NEW_TOKENS) -> list[int]:
    """transformers' greedy continuation of one prompt (no padding, EOS not special), in float32."""
    model = _hf_model(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ids = list(prompt) if isinstance(prompt, tuple) else tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


@functools.cache
def _hf_model(path: str) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def greedy(max_tokens: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def assert_all_blocks_free(llm: LLM) -> None:
    blocks = llm.engine.blocks
    assert blocks.num_free_blocks == blocks.num_blocks
    assert all(block.ref_count == 0 for block in blocks.blocks)


def assert_matches_hf(llm: LLM, path: str, prompts: list[str]) -> None:
    outputs = llm.generate(prompts, greedy())
    assert [o.prompt for o in outputs] == prompts
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == hf_greedy(path, prompt), prompt
        assert output.outputs[0].finish_reason == "length"
    assert_all_blocks_free(llm)


@pytest.mark.parametrize("arch", ["llama", "llama3", "mistral", "qwen2", "qwen3", "qwen3-yarn", "llama-dynamic",
                                  "mistral-window", "gemma3", "mixtral", "qwen3-moe"])
def test_greedy_matches_transformers(checkpoint_factory, arch):
    path = checkpoint_factory(arch, seed=len(arch))
    assert_matches_hf(LLM(path), path, PROMPTS)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tied_embeddings(checkpoint_factory, arch):
    path = checkpoint_factory(arch, tie=True)
    llm = LLM(path)
    head = llm.engine.runner.model.lm_head.weight
    assert head.data_ptr() == llm.engine.runner.model.model.embed_tokens.weight.data_ptr()
    assert_matches_hf(llm, path, PROMPTS[:4])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints(checkpoint_factory, dtype):
    # dtype="auto" computes in float32 on the CPU: the same as transformers loading the half weights in float32.
    path = checkpoint_factory("qwen3", dtype=dtype)
    llm = LLM(path)
    assert llm.engine.runner.dtype == torch.float32
    assert llm.engine.model_config.dtype == dtype
    assert_matches_hf(llm, path, PROMPTS[:4])


def test_half_precision_compute(checkpoint_factory):
    # Computing in bfloat16 drifts from float32 after a while, but the first tokens must agree.
    path = checkpoint_factory("llama")
    outputs = LLM(path, dtype="bfloat16").generate(PROMPTS, greedy(4))
    agree = sum(o.outputs[0].token_ids[0] == hf_greedy(path, p)[0] for p, o in zip(PROMPTS, outputs))
    assert agree >= len(PROMPTS) - 2


def test_sharded_checkpoint(checkpoint_factory, tmp_path):
    path = checkpoint_factory("llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    transformers.AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    outputs = LLM(str(tmp_path)).generate(PROMPTS[:3], greedy())
    assert [o.outputs[0].token_ids for o in outputs] == [hf_greedy(path, p) for p in PROMPTS[:3]]


def test_token_id_prompts(llama_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama_path)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    outputs = LLM(llama_path).generate(ids, greedy())
    for prompt_ids, output in zip(ids, outputs):
        assert output.prompt is None and output.prompt_token_ids == prompt_ids
        assert output.outputs[0].token_ids == hf_greedy(llama_path, tuple(prompt_ids))


def test_prefix_cache_hits(llama_path):
    shared = "Paged attention keeps the KV cache in fixed-size blocks. " * 4
    prompts = [shared + tail for tail in ("The quick", "import os", "for i in", "x")]
    llm = LLM(llama_path, block_size=8)
    first = llm.generate(prompts[0], greedy())[0]
    assert first.num_cached_tokens == 0
    outputs = llm.generate(prompts[1:], greedy())
    assert all(o.num_cached_tokens >= 8 * 4 for o in outputs)   # the shared prefix spans several blocks
    assert llm.engine.stats().prefix_cache_hits > 0
    for prompt, output in zip(prompts, [first] + outputs):
        assert output.outputs[0].token_ids == hf_greedy(llama_path, prompt)
    assert_all_blocks_free(llm)
    # Running the same prompt again takes everything but the last token from the cache.
    again = llm.generate(prompts[0], greedy())[0]
    n_prompt = len(again.prompt_token_ids)
    assert again.num_cached_tokens == (n_prompt - 1) // 8 * 8
    assert again.outputs[0].token_ids == first.outputs[0].token_ids


def test_prefix_cache_disabled(llama_path):
    llm = LLM(llama_path, block_size=8, enable_prefix_caching=False)
    prompt = PROMPTS[4]
    llm.generate(prompt, greedy())
    again = llm.generate(prompt, greedy())[0]
    assert again.num_cached_tokens == 0 and llm.engine.stats().prefix_cache_hits == 0
    assert again.outputs[0].token_ids == hf_greedy(llama_path, prompt)


def test_chunked_prefill(llama_path):
    llm = LLM(llama_path, max_num_batched_tokens=7, block_size=4)
    chunks = []
    schedule = llm.engine.scheduler.schedule

    def spy():
        out = schedule()
        chunks.extend(n < s.num_tokens - s.num_computed_tokens for s, n in zip(out.seqs, out.num_new_tokens))
        assert out.num_tokens <= 7
        return out

    llm.engine.scheduler.schedule = spy
    assert_matches_hf(llm, llama_path, PROMPTS)
    assert any(chunks), "no prefill was split into chunks"


def test_preemption(llama_path):
    # 12 blocks of 8 tokens: two long sequences cannot both keep growing, so one is preempted and recomputed.
    llm = LLM(llama_path, block_size=8, kv_cache_blocks=16, max_model_len=128, max_num_batched_tokens=64)
    assert_matches_hf(llm, llama_path, PROMPTS)
    assert llm.engine.stats().num_preemptions > 0


@pytest.mark.parametrize("arch", ["llama", "qwen3-yarn", "mistral-window", "gemma3", "qwen3-moe", "mixtral"])
def test_everything_at_once(llama_path, checkpoint_factory, arch):
    """Prefix-cache hits, chunked prefills and preemption in one run (with YaRN too: its scaled cos/sin reach
    the cached keys of every chunk; and with a sliding window of 16 tokens, narrower than the prompts, which
    chunks of 16 cross)."""
    path = llama_path if arch == "llama" else checkpoint_factory(arch)
    llm = LLM(path, block_size=4, kv_cache_blocks=32, max_model_len=128, max_num_batched_tokens=16, max_num_seqs=5)
    shared = "Continuous batching adds and removes sequences at every step. "
    prompts = PROMPTS + [shared + p for p in PROMPTS[:4]]
    assert_matches_hf(llm, path, prompts)
    stats = llm.engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0


def test_unsupported_architecture(checkpoint_factory, tmp_path):
    import json
    import shutil

    shutil.copytree(checkpoint_factory("llama"), tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*supported: Gemma3ForCausalLM, LlamaForCausalLM, "
                                         "MistralForCausalLM, MixtralForCausalLM"):
        LLM(str(tmp_path))


def test_a_sequence_that_fills_the_whole_cache(llama_path):
    # 100 blocks of 2 tokens and a 199-token prompt: its first chunk needs every block, so the blocks kept in
    # reserve for admissions while others run must not stop it when nothing else runs.
    llm = LLM(llama_path, block_size=2, kv_cache_blocks=100, max_model_len=200, max_num_batched_tokens=256)
    prompt = [(7 * i) % 300 + 3 for i in range(199)]
    output = llm.generate([prompt], greedy(8))[0]
    assert output.outputs[0].token_ids == hf_greedy(llama_path, tuple(prompt), 1)
    assert output.outputs[0].finish_reason == "length"
    assert_all_blocks_free(llm)


def test_a_sliding_window_does_not_cap_the_context(checkpoint_factory):
    """Mistral with a window of 16 serves its 512 positions (the window once capped the context at 16), and a
    prompt of about 450 tokens decodes as transformers does."""
    path = checkpoint_factory("mistral-window")
    llm = LLM(path, max_num_batched_tokens=128)
    assert llm.engine.max_model_len == 512
    prompt = tuple(range(3, 400)) + tuple(range(3, 60))
    out = llm.generate([list(prompt)], greedy())[0]
    assert out.outputs[0].token_ids == hf_greedy(path, prompt)


def test_linear_rope_scaling_extends_the_context(checkpoint_factory):
    """Linear RoPE interpolates positions by its factor, so the context is max_position_embeddings x factor (vLLM's
    rule): 128 positions scaled by 2 serve a 230-token prompt as transformers does. Dynamic NTK does not extend it."""
    linear = checkpoint_factory("llama", max_position_embeddings=128,
                                rope_scaling={"rope_type": "linear", "factor": 2.0})
    llm = LLM(linear, max_num_batched_tokens=64)
    assert llm.engine.max_model_len == 256
    prompt = tuple(range(3, 233))
    assert llm.generate([list(prompt)], greedy())[0].outputs[0].token_ids == hf_greedy(linear, prompt)
    dynamic = checkpoint_factory("llama", max_position_embeddings=128,
                                 rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert LLM(dynamic, max_num_batched_tokens=64).engine.max_model_len == 128
    with pytest.raises(ValueError, match="exceeds the model's limit of 128"):
        LLM(dynamic, max_model_len=256)


@pytest.mark.parametrize("arch", ["gemma3", "mistral-window", "qwen3-yarn", "mixtral", "qwen3-moe"])
def test_prompt_logprobs_match_transformers(checkpoint_factory, arch):
    """The model's log-probabilities themselves, not only its argmax: every prompt position's logprob of the next
    prompt token against transformers' (a long prompt, past every sliding window; Gemma 3's soft-capping, scales
    and local RoPE change these values even where they leave the greedy tokens alone)."""
    assert_prompt_logprobs_match(checkpoint_factory(arch))


def assert_prompt_logprobs_match(path: str) -> None:
    """Every position's logprob of the next token of a long prompt equals transformers' (within 1e-4)."""
    prompt = list(range(3, 300, 2)) + list(range(4, 120, 3))
    out = LLM(path, max_num_batched_tokens=64).generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    with torch.no_grad():
        logits = _hf_model(path)(torch.tensor([prompt])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)[:-1].gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    got = torch.tensor([entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], prompt[1:])])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_gemma_rms_norm_rounds_as_transformers_in_bfloat16():
    """Gemma's (1 + weight) norm in bf16 equals transformers' bit for bit (its weight plus one in float32, the
    product rounded once), with a residual too."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    from engine.models.gemma3 import GemmaRMSNorm
    from llm_kernels import select

    g = torch.Generator().manual_seed(0)
    weight, x, residual = (torch.randn(*shape, generator=g) for shape in ((64,), (5, 64), (5, 64)))
    theirs = Gemma3RMSNorm(64, eps=1e-6).to(torch.bfloat16)
    ours = GemmaRMSNorm(64, 1e-6, select("cpu"))
    with torch.no_grad():
        theirs.weight.copy_(weight)
        ours.load(ours.weight, weight.to(torch.bfloat16))
    x, residual = x.to(torch.bfloat16), residual.to(torch.bfloat16)
    assert torch.equal(ours(x), theirs(x))
    out, summed = ours(x, residual)
    assert torch.equal(summed, x + residual) and torch.equal(out, theirs(x + residual))


def _edited(source: str, target, drop: tuple[str, ...] = (), **add) -> str:
    """A copy of the checkpoint at `source` in `target` whose config.json lacks the keys `drop` and has `add`."""
    import json
    import shutil

    shutil.copytree(source, target, dirs_exist_ok=True)
    config = json.loads((target / "config.json").read_text())
    for key in drop:
        config.pop(key, None)
    config.update(add)
    (target / "config.json").write_text(json.dumps(config))
    return str(target)


GEMMA_LOCAL_LINEAR = {"sliding_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                      "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}


@pytest.mark.parametrize("arch, options, drop, add", [
    ("gemma3", {"rope_parameters": GEMMA_LOCAL_LINEAR}, (), {}),          # the local layers' own RoPE scaling
    ("gemma3", {"attention_bias": True}, (), {}),
    ("gemma3", {}, ("sliding_window", "query_pre_attn_scalar"), {}),      # transformers' defaults: 4096, 256
    ("mixtral", {}, ("rope_theta", "rope_parameters", "rope_scaling"), {}),      # Mixtral's base is 1e6
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8}, ("max_window_layers", "layer_types"), {}),
    ("llama3", {}, (), {"original_max_position_embeddings": 16}),         # a top-level value wins (Phi-3's layout)
], ids=["gemma3-local-rope-scaling", "gemma3-attention-bias", "gemma3-default-window-and-scale",
        "mixtral-default-rope-base", "qwen2-default-max-window-layers", "llama3-top-level-original-length"])
def test_config_variants_match_transformers(checkpoint_factory, tmp_path, arch, options, drop, add):
    """Config fields a checkpoint leaves out take the defaults of transformers' class for its model_type, and
    fields the tests' tiny models do not set are honoured (each of these gave other tokens before)."""
    path = _edited(checkpoint_factory(arch, **options), tmp_path, drop, **add)
    assert_matches_hf(LLM(path), path, PROMPTS[:4])
    assert_prompt_logprobs_match(path)


@pytest.mark.parametrize("arch, options, field", [
    ("llama", {"hidden_act": "gelu_pytorch_tanh"}, "hidden_act 'gelu_pytorch_tanh'"),
    ("qwen3-moe", {"hidden_act": "relu"}, "hidden_act 'relu'"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
])
def test_config_values_the_models_cannot_honour_are_refused(checkpoint_factory, arch, options, field):
    with pytest.raises(ValueError, match=field):
        LLM(checkpoint_factory(arch, **options))
