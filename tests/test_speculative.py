"""Speculative decoding (engine/speculative.py): n-gram drafts verified in one forward give the tokens decoding
without them gives, greedy and sampled, on every architecture, through preemption and prefix caching."""

from __future__ import annotations

import json
from array import array

import pytest
import torch

from engine import LLM, SamplingParams
from engine.cpu_threads import ThreadTuner
from engine.speculation_gate import SpeculationGate
from engine.speculative import SpeculativeConfig, ngram_proposal

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return", "The quick brown fox jumps over the",
           "for i in range(10):\n    total += i * i\nfor i in range(10):\n", "x"]


@pytest.fixture(autouse=True)
def always_draft(monkeypatch):
    """Every decoding sequence drafts: the gate would switch drafting off for these models, whose steps cost
    almost nothing, and the tests are about what verification does with drafts."""
    monkeypatch.setattr(SpeculationGate, "allowed", lambda self, batch, running=None, closed=False: batch)


def repetitive(checkpoint_factory, arch: str = "llama") -> str:
    """A tiny checkpoint whose greedy output repeats itself often (smaller random weights), so drafts often hold."""
    return checkpoint_factory(arch, initializer_range=0.05)


def outputs(llm: LLM, prompts: list, params: SamplingParams) -> list[list[tuple]]:
    """Per prompt, per choice: tokens, text, finish and stop reasons, and the logprobs (rounded)."""
    result = []
    for out in llm.generate(prompts, params, use_tqdm=False):
        result.append([(c.token_ids, c.text, c.finish_reason, c.stop_reason,
                        None if c.logprobs is None else [{t: round(lp.logprob, 3) for t, lp in pos.items()}
                                                         for pos in c.logprobs])
                       for c in out.outputs])
    return result


def test_proposals_from_kept_token_bytes_are_those_from_the_whole_list():
    """Speculation keeps each sequence's tokens as bytes and extends them as the sequence grows (a token or
    several, accepted drafts, a step without a search between); its drafts are those of a fresh conversion, and it
    drops the bytes of sequences that stopped running."""
    import random

    from engine.sequence import Request, Sequence
    from engine.speculative import Speculation

    config = SpeculativeConfig.parse(NGRAM)
    rng = random.Random(1)
    prompt = [rng.randrange(6) for _ in range(12)]
    request = Request("r", None, prompt, SamplingParams(max_tokens=200), stream=False)
    seq = Sequence(0, request, 0, list(prompt), seed=0, max_tokens=200, detokenizer=None)
    speculation = Speculation(config)
    for _ in range(40):
        seq.num_computed_tokens = seq.num_tokens - 1
        speculation.propose([seq], lambda s, n: True)
        k = min(config.num_speculative_tokens, seq.max_tokens - seq.num_output_tokens - 1)
        assert seq.draft_token_ids == ngram_proposal(seq.token_ids, k, config.prompt_lookup_min,
                                                     config.prompt_lookup_max)
        searched = list(seq.token_ids)
        seq.token_ids += [rng.randrange(6) for _ in range(rng.choice([1, 1, 3, 7]))]
    assert bytes(speculation._token_bytes[0]) == array("i", searched).tobytes()
    others = [Sequence(i, request, 0, list(prompt), seed=0, max_tokens=200, detokenizer=None) for i in range(1, 80)]
    for other in others:
        other.num_computed_tokens = other.num_tokens - 1
        speculation.propose([other], lambda s, n: True)
    assert set(speculation._token_bytes) <= {o.seq_id for o in others}


def test_ngram_proposal_takes_the_longest_suffix_at_its_latest_occurrence():
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]
    assert ngram_proposal(tokens, 2, 1, 3) == [7, 8]          # "2 3" occurs twice: the later one
    assert ngram_proposal(tokens, 5, 1, 3) == [7, 8, 5, 2, 3]  # up to the end of the context
    assert ngram_proposal([4, 5, 6, 4, 5, 6, 4, 5], 3, 3, 3) == [6, 4, 5]     # overlapping its own suffix
    assert ngram_proposal([4, 5, 6, 4, 5, 6, 4], 3, 2, 2) == [5, 6, 4]
    assert ngram_proposal([1, 2, 3, 4], 3, 1, 2) == []                        # no earlier occurrence
    assert ngram_proposal([7], 3, 1, 2) == []
    # Byte patterns that match across token boundaries are not matches: 256 = 00 01 00 00, 1 = 01 00 00 00.
    assert ngram_proposal([256, 1, 0, 0, 9, 1], 2, 1, 1) == [0, 0]
    assert ngram_proposal([65536, 5, 256], 2, 1, 1) == []


def test_config_is_vllms_and_refuses_what_it_cannot_honour():
    assert SpeculativeConfig.parse({"method": "ngram", "num_speculative_tokens": 3}) == \
        SpeculativeConfig("ngram", 3, 5, 5)
    assert SpeculativeConfig.parse({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2}) == \
        SpeculativeConfig("ngram", 3, 2, 2)
    assert SpeculativeConfig.parse(None) is None
    assert SpeculativeConfig.parse({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2}) == \
        SpeculativeConfig("ngram", 3, 2, 2)
    for bad, match in (({"method": "eagle", "num_speculative_tokens": 3}, "method"),
                       ({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 0}, "lookup_max"),
                       ({"method": "ngram", "num_speculative_tokens": 3, "model": "x"}, "keys"),
                       ({"method": "draft_model", "num_speculative_tokens": 3, "prompt_lookup_max": 2}, "keys"),
                       ({"method": "draft_model", "num_speculative_tokens": 3, "model": "/nonexistent"}, "model"),
                       ({"method": "draft_model", "num_speculative_tokens": 3}, "model"),
                       ({"method": "ngram"}, "num_speculative_tokens"),
                       ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
                       ({"method": "ngram", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 1}, "keys"),
                       ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2,
                         "prompt_lookup_min": 3}, "prompt_lookup_min"),
                       ("ngram", "dict")):
        with pytest.raises(ValueError, match=match):
            SpeculativeConfig.parse(bad)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "qwen3-moe"])
def test_greedy_tokens_are_the_same_with_preemption_and_prefix_caching(checkpoint_factory, arch):
    """A KV cache too small for the batch (sequences are preempted and resumed), 8-token steps (drafts compete with
    prefill chunks), repeated prompts (prefix-cache hits), stops that end a sequence inside its accepted drafts."""
    path = repetitive(checkpoint_factory, arch)
    settings = dict(max_model_len=128, block_size=4, kv_cache_blocks=40, max_num_batched_tokens=8)
    plain = LLM(path, **settings)
    spec = LLM(path, speculative_config=NGRAM, **settings)
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=30, stop=["a", "\n"], logprobs=2)]
    for p in params:
        prompts = PROMPTS + PROMPTS[:2]
        assert outputs(spec, prompts, p) == outputs(plain, prompts, p)
    stats = spec.engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert stats.spec_num_accepted_tokens > 0                    # speculation really ran, and some drafts held
    assert stats.spec_num_draft_tokens > stats.spec_num_accepted_tokens


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "qwen3-moe"])
def test_a_draft_model_that_is_the_target_has_every_draft_accepted(checkpoint_factory, arch):
    """The draft's KV cache mirrors the target's block for block: with the target itself as the draft, every guess
    is the target's own greedy token, through chunked prefill, preemption and prefix-cache hits (whose blocks hold
    the draft's KV too). A stale or misplaced draft KV row would show as rejected guesses."""
    path = repetitive(checkpoint_factory, arch)
    settings = dict(max_model_len=128, block_size=4, kv_cache_blocks=40, max_num_batched_tokens=8)
    plain = LLM(path, **settings)
    spec = LLM(path, speculative_config={"method": "draft_model", "model": path, "num_speculative_tokens": 3},
               **settings)
    for params in (SamplingParams(temperature=0, max_tokens=80, ignore_eos=True),
                   SamplingParams(temperature=0, max_tokens=30, stop=["a", "\n"], logprobs=2)):
        prompts = PROMPTS + PROMPTS[:2]
        assert outputs(spec, prompts, params) == outputs(plain, prompts, params)
    stats = spec.engine.stats()
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0 and stats.spec_num_draft_tokens > 50
    assert stats.spec_num_accepted_tokens >= 0.97 * stats.spec_num_draft_tokens     # all but float near-ties


def test_a_smaller_draft_model_changes_no_token(checkpoint_factory):
    """A one-layer draft with other weights: some guesses hold, many do not; greedy and sampled output are the
    target's alone."""
    path = repetitive(checkpoint_factory)
    draft = checkpoint_factory("llama", initializer_range=0.05, num_hidden_layers=1, seed=1)
    plain = LLM(path, max_model_len=128, block_size=4)
    spec = LLM(path, max_model_len=128, block_size=4,
               speculative_config={"method": "draft_model", "model": draft, "num_speculative_tokens": 4})
    for params in (SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=1),
                   SamplingParams(temperature=0.8, seed=3, n=2, max_tokens=40, stop=["\n"])):
        assert outputs(spec, PROMPTS, params) == outputs(plain, PROMPTS, params)
    stats = spec.engine.stats()
    assert 0 < stats.spec_num_accepted_tokens < stats.spec_num_draft_tokens


def test_draft_models_that_cannot_serve_are_refused(checkpoint_factory):
    path = checkpoint_factory("llama")
    other_vocab = checkpoint_factory("llama", vocab_size=500)
    short = checkpoint_factory("llama", max_position_embeddings=64)
    for draft, match in ((other_vocab, "vocabulary"), (short, "positions")):
        with pytest.raises(ValueError, match=match):
            LLM(path, max_model_len=128, speculative_config={"method": "draft_model", "model": draft,
                                                             "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        LLM(path, tensor_parallel_size=2, speculative_config={"method": "draft_model", "model": path,
                                                              "num_speculative_tokens": 2})


def test_sampled_tokens_are_the_same(checkpoint_factory):
    """Seeded sampling draws each token from (seed, position): speculation changes nothing, for every choice."""
    path = repetitive(checkpoint_factory)
    plain, spec = LLM(path, max_model_len=128), LLM(path, max_model_len=128, speculative_config=NGRAM)
    for params in (SamplingParams(temperature=0.8, top_p=0.9, seed=5, n=3, max_tokens=48, logprobs=1),
                   SamplingParams(temperature=1.5, top_k=5, min_p=0.05, seed=7, max_tokens=48, ignore_eos=True),
                   SamplingParams(temperature=0.6, seed=1, max_tokens=48, logit_bias={10: 3.0})):
        assert outputs(spec, PROMPTS, params) == outputs(plain, PROMPTS, params)
    assert spec.engine.stats().spec_num_accepted_tokens > 0


def test_sequences_whose_sampling_needs_each_token_do_not_draft(checkpoint_factory):
    """Penalties, bad_words and min_tokens depend on the tokens before each position: those sequences decode one
    by one. allowed_token_ids does not: those sequences draft."""
    path = repetitive(checkpoint_factory)
    plain, spec = LLM(path, max_model_len=128), LLM(path, max_model_len=128, speculative_config=NGRAM)
    for params in (SamplingParams(temperature=0, max_tokens=24, presence_penalty=0.5),
                   SamplingParams(temperature=0, max_tokens=24, repetition_penalty=1.2),
                   SamplingParams(temperature=0, max_tokens=24, bad_words=["the", "def"]),
                   SamplingParams(temperature=0, max_tokens=24, min_tokens=24)):
        assert outputs(spec, PROMPTS, params) == outputs(plain, PROMPTS, params)
        assert spec.engine.stats().spec_num_drafts == 0
    common = sorted({t for out in outputs(plain, PROMPTS, SamplingParams(temperature=0, max_tokens=24))
                     for t in out[0][0]})
    allowed = SamplingParams(temperature=0, max_tokens=24, allowed_token_ids=common[::2])
    assert outputs(spec, PROMPTS, allowed) == outputs(plain, PROMPTS, allowed)
    assert spec.engine.stats().spec_num_drafts > 0


def test_max_tokens_and_context_bound_the_drafts(checkpoint_factory):
    """Drafts never run past max_tokens or the context (positions beyond it would not exist)."""
    path = repetitive(checkpoint_factory)
    plain, spec = LLM(path, max_model_len=40), LLM(path, max_model_len=40, speculative_config=NGRAM)
    params = SamplingParams(temperature=0, ignore_eos=True)            # max_tokens: up to the context's end
    prompt = PROMPTS[0]
    got = outputs(spec, [prompt], params)
    assert got == outputs(plain, [prompt], params)
    assert len(got[0][0][0]) == 40 - len(spec.get_tokenizer()(prompt).input_ids)
    assert spec.engine.stats().spec_num_accepted_tokens > 0


def test_gate_speculates_where_it_pays(monkeypatch):
    monkeypatch.undo()                              # the real gate
    gate = SpeculationGate()
    allowed = [gate.allowed(32) for _ in range(SpeculationGate.PROBE_EVERY)]
    assert allowed == [32] * (SpeculationGate.PROBE_EVERY - 1) + [0]      # unfitted: a step of another size
    for tokens in (1, 6, 2, 5):                     # 10 ms a step, 0.1 ms a token
        gate.observe_step(tokens, tokens, 0.010 + 0.0001 * tokens)
    gate.observe_step(100, 1, 0.5)                  # a prefill chunk: not what a draft token costs
    assert gate.fixed_s == pytest.approx(0.010) and gate.per_token_s == pytest.approx(0.0001)
    for _ in range(100):
        gate.observe_acceptance(2, 10, 1)           # 10% of drafts accepted, 5 drafts a sequence
    assert gate.acceptance == pytest.approx(0.1, abs=0.01) and gate.drafts_per_seq == pytest.approx(5)
    assert gate.pays(1)                             # batch 1: the fixed cost dominates
    assert not gate.pays(32)                        # 0.1 * (10 + 3.2) ms < 32 * 0.1 ms
    # One sequence decoding while 31 compute their prompts: drafting must beat the rate of 32 decoding ones.
    assert not gate.pays(1, running=32) and gate.allowed(1, 32) in (0, 1)
    allowed = [gate.allowed(32) for _ in range(256)]
    probes = [i for i, n in enumerate(allowed) if n]              # keep r current, ever more rarely
    assert set(allowed) == {0, 1} and 4 <= len(probes) <= 256 // SpeculationGate.PROBE_EVERY
    assert probes[-1] - probes[-2] == SpeculationGate.MAX_PROBE_EVERY
    for _ in range(100):
        gate.observe_acceptance(2, 10, 10)
    assert gate.pays(32)
    for _ in range(50):
        gate.observe_proposal(4, 0.400)             # a draft model that takes 100 ms a sequence to propose
    assert not gate.pays(1) and not gate.pays(32)


def test_gate_in_a_closed_batch_weighs_the_steps_its_slowest_sequences_gain(monkeypatch):
    """In a closed batch, accepted drafts of sequences other than the slowest save nothing: drafting pays when the
    steps the slowest gain save more fixed cost than the rejected drafts and the proposing cost, as measured."""
    monkeypatch.undo()
    gate = SpeculationGate()
    for tokens in (32, 64, 40, 96):                 # 10 ms a step, 0.1 ms a token
        gate.observe_step(tokens, tokens, 0.010 + 0.0001 * tokens)
    for _ in range(100):
        gate.observe_acceptance(32, 160, 80)        # half the drafts accepted, 5 a sequence
    assert gate.pays(32)                            # open: 0.5 * 160 * 13.2 ms > 32 * 16 ms
    for _ in range(50):
        gate.observe_closed_step(0, 20, 0.001)      # ... but the slowest sequences never gained
    assert not gate.pays(32, closed=True)           # 0 * 10 ms < 20 * 0.1 ms + 1 ms
    allowed = [gate.allowed(32, closed=True) for _ in range(1024)]
    assert set(allowed) == {0, 32}                  # a probe drafts for all of them: only that can move the batch
    probes = [i for i, n in enumerate(allowed) if n]
    assert probes[-1] - probes[-2] == SpeculationGate.MAX_CLOSED_PROBE_EVERY > SpeculationGate.MAX_PROBE_EVERY
    for _ in range(50):
        gate.observe_closed_step(1, 40, 0.001)
    assert gate.pays(32, closed=True)               # 1 * 10 ms > 40 * 0.1 ms + 1 ms
    for _ in range(50):
        gate.observe_closed_step(1, 100, 0.001)
    assert not gate.pays(32, closed=True)           # 10 ms < 100 * 0.1 ms + 1 ms


def test_gate_fits_its_window_of_steps_as_least_squares_does(monkeypatch):
    """The time model is refitted every step from running sums: after many steps (the window slid and summed
    afresh several times) it is the least-squares line through the last WINDOW steps."""
    import random

    monkeypatch.undo()
    gate, rng = SpeculationGate(), random.Random(0)
    steps = [(rng.randrange(1, 200), 0.0) for _ in range(3 * SpeculationGate.WINDOW + 17)]
    steps = [(t, 0.003 + 0.0002 * t + rng.uniform(0, 0.002)) for t, _ in steps]
    for t, s in steps:
        gate.observe_step(t, t, s)
    window = torch.tensor(steps[-SpeculationGate.WINDOW:], dtype=torch.float64)
    design = torch.stack([torch.ones(len(window), dtype=torch.float64), window[:, 0]], dim=1)
    fixed, per_token = torch.linalg.lstsq(design, window[:, 1:]).solution.flatten().tolist()
    assert gate.fixed_s == pytest.approx(fixed, rel=1e-9) and gate.per_token_s == pytest.approx(per_token, rel=1e-9)
    gate = SpeculationGate()
    for _ in range(2 * SpeculationGate.WINDOW):     # steps of one size: nothing to fit a slope on
        gate.observe_step(32, 32, 0.05 + rng.uniform(0, 0.002))
    assert gate.fixed_s is None and gate.per_token_s is None


def test_gate_skips_the_search_of_idle_closed_steps_without_changing_its_decisions(monkeypatch):
    """`closed_idle` says a closed batch's step drafts nothing exactly when `allowed` would have said 0 to it,
    and counts the step as `allowed` does: the probes come at the same steps."""
    monkeypatch.undo()
    gates = SpeculationGate(), SpeculationGate()
    decisions: tuple[list[int], list[int]] = ([], [])
    for i in range(300):
        paying = i < 40 or 120 <= i < 130           # unfitted at first, then a stretch where drafting pays
        gains = (2, 5, 0.0) if paying else (0, 20, 0.001)
        for gate in gates:
            if i < 4:
                gate.observe_step(32 + 8 * i, 32 + 8 * i, 0.010 + 0.0001 * (32 + 8 * i))
            gate.observe_closed_step(*gains)
        decisions[0].append(gates[0].allowed(32, closed=True))
        decisions[1].append(0 if gates[1].closed_idle() else gates[1].allowed(32, closed=True))
    assert decisions[0] == decisions[1]
    assert decisions[0].count(0) > 200 and 32 in decisions[0][200:]     # mostly idle, still probing


def test_in_a_closed_batch_only_the_slowest_sequences_draft(monkeypatch):
    """LLM.generate's batch is closed: a sequence more than num_speculative_tokens ahead of the slowest (waiting
    ones included) does not draft, and the gate learns the fewest tokens the slowest accepted, or while some do not
    move, the chance that the least likely of them moves; a server's batch is never closed."""
    from engine.sequence import Request, Sequence
    from engine.speculative import Speculation

    config = SpeculativeConfig.parse(NGRAM)
    tokens = [1, 2, 3, 4] * 6

    def seq(outputs: int, seq_id: int | None = None) -> Sequence:
        request = Request("r", None, tokens[:8], SamplingParams(max_tokens=30), stream=False)
        s = Sequence(outputs if seq_id is None else seq_id, request, 0, tokens[:8 + outputs], seed=0, max_tokens=30,
                     detokenizer=None)
        s.num_computed_tokens = len(s.token_ids) - 1
        return s

    behind, near, ahead = seq(2), seq(4), seq(10)      # 28, 26 and 20 tokens left
    for closed, drafting in ((True, [behind, near]), (False, [behind, near, ahead])):
        speculation = Speculation(config)
        speculation.propose([behind, near, ahead], lambda s, n: True, closed=closed)
        assert [s for s in (behind, near, ahead) if s.draft_token_ids] == drafting
    waiting = seq(0)                                      # not admitted yet: 30 tokens left
    speculation.propose([behind, near, ahead], lambda s, n: True, [waiting], closed=True)
    assert [s for s in (behind, near, ahead) if s.draft_token_ids] == [behind]
    speculation = Speculation(config)
    speculation.propose([behind, near, ahead], lambda s, n: True, closed=True)
    gate = speculation.gate
    before = gate.steps_gained, gate.rejected_per_step
    speculation.observe(9, 0.01, [behind, near], [[3, 4, 1, 2]] * 2, [3, 1])
    assert gate.steps_gained == pytest.approx(0.8 * before[0] + 0.2 * 3)          # only `behind` is slowest
    assert gate.rejected_per_step == pytest.approx(0.8 * before[1] + 0.2 * 4)     # 8 drafted, 4 accepted
    level = [seq(2, 100 + i) for i in range(4)]           # four slowest, 28 tokens left each
    speculation = Speculation(config)
    speculation.propose(level, lambda s, n: True, closed=True)
    gate = speculation.gate
    before = gate.steps_gained
    for chance in (0.5, 0.25, 0.125):                     # the second of them never moves: it bounds the batch
        speculation.propose(level, lambda s, n: True, closed=True)
        before = gate.steps_gained
        speculation.observe(20, 0.01, level, [[3, 4, 1, 2]] * 4, [2, 0, 4, 1])
        assert gate.steps_gained == pytest.approx(0.8 * before + 0.2 * chance)
    speculation.propose(level, lambda s, n: True, closed=True)
    before = gate.steps_gained
    speculation.observe(20, 0.01, level, [[3, 4, 1, 2]] * 4, [2, 3, 4, 1])
    assert gate.steps_gained == pytest.approx(0.8 * before + 0.2 * 1)            # all moved: a whole step


def test_through_the_server_with_the_openai_client(checkpoint_factory):
    """`--speculative-config` reaches the engine; a streamed completion is the one without it; /metrics counts
    the drafts with vLLM's names."""
    import asyncio

    import httpx
    import openai

    from api import ServerSettings, create_app
    from api.cli import build_parser, engine_options
    from engine import AsyncLLM

    args = build_parser("x").parse_args(["--speculative-config", json.dumps(NGRAM)])
    options = engine_options(args)
    assert options["speculative_config"] == NGRAM
    with pytest.raises(SystemExit):
        build_parser("x").parse_args(["--speculative-config", "[1]"])

    async def run(speculative_config: dict | None) -> tuple[str, list[int], str]:
        llm = AsyncLLM(repetitive(checkpoint_factory), speculative_config=speculative_config)
        try:
            app = create_app(llm, ServerSettings("tiny"))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
                client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http)
                stream = await client.completions.create(
                    model="tiny", prompt=PROMPTS[0], max_tokens=40, temperature=0, stream=True,
                    extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True}, logprobs=0)
                text, tokens = "", []
                async for chunk in stream:
                    text += chunk.choices[0].text
                    tokens += [int(t.split(":")[1]) for t in chunk.choices[0].logprobs.tokens]
                return text, tokens, (await http.get("/metrics")).text
        finally:
            llm.shutdown()

    plain_text, plain_tokens, _ = asyncio.run(run(None))
    text, tokens, metrics = asyncio.run(run(options["speculative_config"]))
    assert (text, tokens) == (plain_text, plain_tokens) and len(tokens) == 40
    counts = {line.split("{")[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("triton_serve_spec_decode_")}
    assert counts["triton_serve_spec_decode_num_accepted_tokens_total"] > 0
    assert counts["triton_serve_spec_decode_num_draft_tokens_total"] >= counts[
        "triton_serve_spec_decode_num_accepted_tokens_total"]
    assert counts["triton_serve_spec_decode_num_drafts_total"] > 0


def test_two_tensor_parallel_ranks_verify_drafts_as_one_does(checkpoint_factory):
    """Rank 0 drafts and verifies; the workers compute the draft tokens they are sent like any others."""
    path = repetitive(checkpoint_factory)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    expected = outputs(LLM(path, max_model_len=128), PROMPTS, params)
    llm = LLM(path, max_model_len=128, tensor_parallel_size=2, speculative_config=NGRAM)
    try:
        assert outputs(llm, PROMPTS, params) == expected
        assert llm.engine.stats().spec_num_accepted_tokens > 0
    finally:
        llm.close()


def test_the_thread_tuner_learns_only_from_steps_without_drafts(checkpoint_factory):
    """A step that verifies drafts computes several times the tokens of its neighbours in about their time: fed to
    the thread tuner, such steps made it choose one thread on an idle machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spec = LLM(repetitive(checkpoint_factory), speculative_config=NGRAM)
    finally:
        torch.set_num_threads(threads)
    engine = spec.engine
    assert isinstance(engine.threads, ThreadTuner)
    seen, steps = [], []
    after_step, execute = engine.threads.after_step, engine.runner.execute
    engine.threads.after_step = lambda tokens, seconds: seen.append(tokens) or after_step(tokens, seconds)
    engine.runner.execute = lambda step: steps.append((step.num_tokens, any(step.draft_token_ids))) or execute(step)
    spec.generate(PROMPTS, SamplingParams(max_tokens=24, temperature=0), use_tqdm=False)
    assert any(drafted for _, drafted in steps) and not all(drafted for _, drafted in steps)
    assert seen == [tokens for tokens, drafted in steps if not drafted]
