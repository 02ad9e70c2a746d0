"""Structured outputs through LLM.generate on a random-weight checkpoint: every output matches its constraint
(checked with jsonschema and re, oracles nobody here wrote), with n, seeds, preemption, chunked prefill, the
prefix cache, stop strings, logprobs and abort; invalid constraints are refused before anything is queued; a slow
compile does not hold up other requests."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest

import engine.structured_output as so_module
from engine import LLM, SamplingParams, StructuredOutputsParams
from engine.llm_engine import LLMEngine

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}}}
PROMPTS = ["The quick brown fox", "def add(a, b):\n    return", "x", "import os\nimport sys\n" * 3]


@pytest.fixture(scope="module")
def llm(checkpoint_factory) -> LLM:
    # 40 blocks of 8 tokens cannot hold everything at once (preemption); a 16-token budget chunks prefills.
    return LLM(checkpoint_factory("llama"), device="cpu", block_size=8, kv_cache_blocks=40, max_num_batched_tokens=16,
               max_model_len=256)


def _texts(llm: LLM, so: StructuredOutputsParams, **params) -> list[str]:
    """The texts of the prompts' choices, all ended by their grammar ("stop")."""
    params = {"temperature": 1.0, "seed": 5, "max_tokens": 200, "n": 2, **params}
    outputs = llm.generate(PROMPTS, SamplingParams(structured_outputs=so, **params))
    choices = [c for o in outputs for c in o.outputs]
    assert all(c.finish_reason == "stop" for c in choices), [(c.text, c.finish_reason) for c in choices]
    return [c.text for c in choices]


def test_json_schema_outputs_validate_and_are_compact(llm):
    for text in _texts(llm, StructuredOutputsParams(json=PERSON)):
        value = json.loads(text)
        jsonschema.validate(value, PERSON)
        assert list(value) == ["name", "age", "tags"]                        # the schema's order
        assert text == json.dumps(value, ensure_ascii=False)                # compact: no optional whitespace
    assert llm.engine.stats().num_preemptions > 0


@pytest.mark.parametrize(("so", "check"), [
    (StructuredOutputsParams(regex=r"[a-z]{3}-\d{2}"), lambda t: re.fullmatch(r"[a-z]{3}-\d{2}", t)),
    (StructuredOutputsParams(choice=["yes", "no", "maybe later"]), lambda t: t in ("yes", "no", "maybe later")),
    (StructuredOutputsParams(grammar='root ::= "a" ("b" | "c")* "d"'), lambda t: re.fullmatch("a[bc]*d", t)),
])
def test_regex_choice_grammar_and_json_object(llm, so, check):
    texts = _texts(llm, so, max_tokens=256 - 40)
    assert all(check(t) for t in texts), texts


def test_json_object_outputs_are_objects(llm):
    """Any JSON object: unbounded, so a random model may run out of tokens ("length"); what ends is an object."""
    outputs = llm.generate(PROMPTS, SamplingParams(structured_outputs=StructuredOutputsParams(json_object=True),
                                                   temperature=1.0, seed=5, max_tokens=200, n=2))
    ended = [c.text for o in outputs for c in o.outputs if c.finish_reason == "stop"]
    assert ended and all(isinstance(json.loads(t), dict) for t in ended)


def test_seeded_outputs_repeat_and_sequences_of_one_prompt_differ(llm):
    so = StructuredOutputsParams(json=PERSON)
    assert _texts(llm, so) == _texts(llm, so)                           # the second time from the prefix cache
    assert llm.engine.stats().prefix_cache_hits > 0


def test_logprobs_are_the_raw_models_and_ignore_eos_still_ends(llm):
    """A forced output ('zz' of a one-choice grammar) is unlikely for the model: its logprobs are the raw
    distribution's, not the masked one's (which would be 0)."""
    so = StructuredOutputsParams(choice=["zz zz zz"])
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=50, logprobs=0, ignore_eos=True,
                                                  structured_outputs=so))[0].outputs[0]
    assert out.text == "zz zz zz" and out.finish_reason == "stop"
    prompt_ids = llm.get_tokenizer()(PROMPTS[0])["input_ids"]
    plain = llm.generate([prompt_ids + out.token_ids[:-1]], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
    raw = [row[t].logprob for row, t in zip(plain.prompt_logprobs[len(prompt_ids):], out.token_ids)]
    got = [row[t].logprob for row, t in zip(out.logprobs, out.token_ids)]
    assert got[:-1] == pytest.approx(raw, abs=1e-4) and min(got) < -1


def test_stop_strings_still_cut(llm):
    so = StructuredOutputsParams(grammar='root ::= "ab" "c"* "STOP" "de"')
    texts = _texts(llm, so, stop=["STOP"])
    assert all(re.fullmatch("abc*", t) for t in texts), texts


@pytest.mark.parametrize(("so", "message"), [
    (dict(json='{"type": "object", "properties": {"a": {"type": "nope"}}}'), "structured_outputs.json"),
    (dict(json="{not json"), "structured_outputs.json"),
    (dict(regex="([a-z]"), "structured_outputs.regex: not a valid regex: Regex parsing error at position 7"),
    (dict(grammar="root ::= ("), "structured_outputs.grammar"),
    (dict(structural_tag='{"structures": [{"begin": "x"}], "triggers": ["x"]}'), "missing 'schema'"),
    # What xgrammar would leave out (with a warning on stderr) is refused, not ignored:
    (dict(json={"type": "object", "properties": {"s": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5}}}),
     "at properties.s, maxLength beside a pattern, which the grammar cannot enforce"),
    (dict(json={"type": "string", "format": "email", "minLength": 3}), "minLength beside a format"),
    (dict(json={"type": "array", "items": {"type": "number", "multipleOf": 0.5}}), "at items, multipleOf"),
    (dict(regex="(?=a)[a-z]+"), "a lookaround assertion"),
])
def test_invalid_constraints_are_refused_before_queueing(llm, so, message):
    """Refused with what was wrong in a line: xgrammar's reason, without its log prefix (time, C++ file, line)."""
    with pytest.raises(ValueError, match=message) as caught:
        llm.engine.add_request("bad", "x", SamplingParams(structured_outputs=so))
    assert ".cc:" not in str(caught.value) and "\n" not in str(caught.value)
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(structured_outputs=dict(regex="a", choice=["b"])), "exactly one of"),
    (dict(structured_outputs=dict(choice=[])), "non-empty list"),
    (dict(structured_outputs=dict(regex="a"), min_tokens=2), "min_tokens cannot be combined"),
])
def test_parameters_that_cannot_be_honoured(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_a_slow_compile_holds_up_no_other_request(llm, monkeypatch):
    """While one request's grammar compiles (held here until released), another request runs to its end; an
    abort of a request still compiling ends it cleanly."""
    release = threading.Event()
    compile_grammar = so_module.GrammarCompiler._compile
    monkeypatch.setattr(so_module.GrammarCompiler, "_compile",
                        lambda self, *args: release.wait(60) and compile_grammar(self, *args))
    engine: LLMEngine = llm.engine
    unique = StructuredOutputsParams(regex="[0-9]{4}")          # not cached by the tests before
    engine.add_request("slow", "x", SamplingParams(structured_outputs=unique, max_tokens=10))
    engine.add_request("gone", "y", SamplingParams(structured_outputs=StructuredOutputsParams(regex="[0-9]{5}")))
    engine.add_request("plain", "x", SamplingParams(max_tokens=5, ignore_eos=True))
    engine.abort_request("gone")
    finished = {}
    while "plain" not in finished:
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert "slow" not in finished and "slow" in engine.requests
    release.set()
    while engine.has_unfinished_requests():
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert re.fullmatch("[0-9]{4}", finished["slow"].outputs[0].text)
    assert "gone" not in finished
    blocks = engine.blocks
    assert blocks.num_free_blocks == blocks.num_blocks


def test_a_structural_tag_constrains_what_each_trigger_opens(llm):
    """Free text in which "x" (which the logit bias makes the model write wherever it may) opens an object of the
    schema, closed by ";": the text is such objects, one after another, never "xxx..."."""
    hf = llm.get_tokenizer()
    x = hf.convert_tokens_to_ids("x")
    tag = {"type": "structural_tag", "triggers": ["x"],
           "structures": [{"begin": "x", "schema": {"type": "object", "additionalProperties": False,
                                                    "required": ["n"], "properties": {"n": {"type": "integer"}}},
                           "end": ";"}]}
    so = StructuredOutputsParams(structural_tag=json.dumps(tag))
    blank = {i: -100.0 for i in range(len(hf)) if not hf.decode([i]).strip()}    # JSON's optional whitespace
    outputs = llm.generate(PROMPTS[:2], SamplingParams(structured_outputs=so, logit_bias={x: 30.0, **blank},
                                                       temperature=1.0, seed=1, max_tokens=60, n=2))
    for choice in (c for o in outputs for c in o.outputs):
        calls = re.findall(r"x(\{.*?\});", choice.text)
        assert calls and choice.text.startswith("x"), choice.text
        for call in calls:
            jsonschema.validate(json.loads(call), tag["structures"][0]["schema"])
        assert re.fullmatch(r"(x\{[^;]*\};)*(x\{[^;]*)?", choice.text), choice.text
    with pytest.raises(ValueError, match="structural_tag"):
        llm.generate("x", SamplingParams(structured_outputs=StructuredOutputsParams(structural_tag="{not json")))


def test_only_the_engines_bounded_cache_keeps_compiled_grammars(llm, monkeypatch):
    """Compiled grammars are kept by constraint in the engine's cache of CACHE_SIZE (the oldest go first), and
    nowhere else: xgrammar's compiler keeps every grammar it compiled unless told not to (a server's memory grew
    with each distinct schema in a soak run)."""
    grammars = llm.engine.grammars
    monkeypatch.setattr(so_module, "CACHE_SIZE", 2)
    for i in range(4):
        schema = {"type": "object", "properties": {f"field{i}": {"type": "integer"}}, "required": [f"field{i}"]}
        grammars.submit(StructuredOutputsParams(json=schema)).result()
    assert len(grammars._cache) == 2
    assert grammars._compiler.get_cache_size_bytes() == 0
