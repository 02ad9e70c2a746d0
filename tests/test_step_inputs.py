"""The runner's decode-only input builder (`_decode_inputs`, every sequence computes one token) gives exactly what
the general one (`_mixed_inputs`) gives for the same step, including a sequence whose one token is a prefill chunk
in the middle of its prompt (computed, not sampled)."""

from __future__ import annotations

from engine import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_runner import StepOutput


def test_decode_inputs_equal_the_general_builder(llama_path):
    engine = LLMEngine(EngineConfig(model=llama_path, max_num_seqs=4, max_num_batched_tokens=4, device="cpu"))
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    for i in range(3):
        engine.add_request(f"r{i}", list(range(5 + 3 * i, 12 + 5 * i)), params)
    for _ in range(12):             # the three prompts are computed, in chunks of 4 tokens, and decode
        engine.step()
    engine.add_request("late", list(range(40, 60)), params)
    compared = unsampled = 0
    for _ in range(8):
        step = engine.scheduler.schedule()
        if len(step.seqs) == sum(step.num_new_tokens):
            fast, general = StepOutput(), StepOutput()
            assert engine.runner._decode_inputs(step, fast) == engine.runner._mixed_inputs(step, general)
            assert (fast.sampled_seqs, fast.first_rows, fast.drafts) == \
                (general.sampled_seqs, general.first_rows, general.drafts)
            compared += 1
            unsampled += len(step.seqs) - len(fast.sampled_seqs)
        result = engine.runner.execute(step)
        engine.scheduler.update(step, result.rejected)
        for seq in engine.processor.process(result, 0.0):
            engine.scheduler.finish(seq)
    assert compared == 8 and unsampled == 8         # "late" computed its prompt one token a step
