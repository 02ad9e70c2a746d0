"""thinking_token_budget (engine/thinking.py): a model that thinks between `<think>` and `</think>` tokens draws
`</think>` once it has thought for the budget, and nothing else changes. The oracle is the engine without a
budget: the same greedy tokens up to the budget, and after the forced `</think>` the tokens it draws for the prompt
that ends with them."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams


@pytest.fixture(scope="module")
def thinker(checkpoint_factory):
    path = checkpoint_factory("qwen3", thinking=True)
    llm = LLM(path, max_model_len=128)
    vocab = llm.engine.tokenizer.hf.get_vocab()
    return llm, vocab["<think>"], vocab["</think>"]


def _tokens(llm: LLM, prompt: list[int], params: SamplingParams) -> list[list[int]]:
    return [list(c.token_ids) for c in llm.generate([prompt], params)[0].outputs]


PROMPT = [5, 17, 42, 99, 3, 64, 250]
GREEDY = dict(temperature=0, ignore_eos=True)


def test_a_prompt_that_opens_the_thinking_is_cut_at_the_budget(thinker):
    llm, start, end = thinker
    prompt = PROMPT + [start]
    free = _tokens(llm, prompt, SamplingParams(max_tokens=6, **GREEDY))[0]
    assert end not in free                          # the model alone would not close it so soon
    for budget in (0, 1, 4):
        got = _tokens(llm, prompt, SamplingParams(max_tokens=10, thinking_token_budget=budget, **GREEDY))[0]
        assert got[:budget] == free[:budget]
        assert got[budget] == end
        after = _tokens(llm, prompt + got[:budget + 1], SamplingParams(max_tokens=9 - budget, **GREEDY))[0]
        assert got[budget + 1:] == after            # the reply goes on as the model would after that </think>


def test_thinking_opened_by_a_drawn_think_token(thinker):
    """A bias makes the model draw `<think>` every time: the first opens the thinking, the next ones count, and
    after the forced `</think>` nothing is forced again."""
    llm, start, end = thinker
    params = SamplingParams(max_tokens=7, thinking_token_budget=2, logit_bias={start: 100}, **GREEDY)
    assert _tokens(llm, PROMPT, params)[0] == [start, start, start, end, start, start, start]


def test_closed_thinking_and_no_thinking_are_left_alone(thinker):
    """No `<think>`, a closed one, and an open one that the prompt goes on after (a user's message that mentions
    it): nothing is forced."""
    llm, start, end = thinker
    mention = PROMPT[:3] + [start] + PROMPT[3:]
    assert llm.engine.tokenizer.decode(PROMPT[3:], skip_special_tokens=False).strip()      # not just whitespace
    for prompt in (PROMPT, PROMPT[:3] + [start, 7, end] + PROMPT[3:], mention):
        budgeted = _tokens(llm, prompt, SamplingParams(max_tokens=8, thinking_token_budget=0, **GREEDY))
        assert budgeted == _tokens(llm, prompt, SamplingParams(max_tokens=8, **GREEDY))


def test_every_choice_has_its_own_budget(thinker):
    llm, start, end = thinker
    params = SamplingParams(n=3, max_tokens=6, seed=1, temperature=1.0, ignore_eos=True, thinking_token_budget=2)
    for tokens in _tokens(llm, PROMPT + [start], params):
        if end not in tokens[:2]:
            assert tokens[2] == end
        else:           # the model closed it itself: nothing forced after
            assert tokens.index(end) < 2


def test_with_preemption_and_speculation(checkpoint_factory):
    """Sequences preempted and resumed, or an n-gram speculator (which skips a sequence until its thinking has
    closed; drafts accepted across the budget were seen to skip the forced token): the same tokens as a roomy
    engine without speculation."""
    path = checkpoint_factory("qwen3", thinking=True, initializer_range=0.05)     # repeats itself: drafts hold
    roomy = LLM(path, max_model_len=128)
    vocab = roomy.engine.tokenizer.hf.get_vocab()
    start, end = vocab["<think>"], vocab["</think>"]
    prompts = [[(7 * i + 3 * j) % 300 + 1 for j in range(12)] + [start] for i in range(6)]
    tight = LLM(path, max_model_len=64, block_size=4, kv_cache_blocks=20, max_num_batched_tokens=16)
    speculating = LLM(path, max_model_len=128,
                      speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2})
    for budget in range(1, 12):
        params = SamplingParams(max_tokens=24, thinking_token_budget=budget, **GREEDY)
        expected = [list(o.outputs[0].token_ids) for o in roomy.generate(prompts, params)]
        assert all(tokens[budget] == end for tokens in expected)
        for llm in (tight, speculating):
            assert [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)] == expected, budget
    assert tight.engine.stats().num_preemptions > 0
    assert speculating.engine.stats().spec_num_accepted_tokens > 0


def test_refusals(thinker, llama_path):
    llm, _, _ = thinker
    with pytest.raises(ValueError, match="thinking_token_budget"):
        SamplingParams(thinking_token_budget=-1)
    with pytest.raises(ValueError, match="thinking_token_budget.*structured_outputs"):
        SamplingParams(thinking_token_budget=4, structured_outputs={"regex": "a+"})
    with pytest.raises(ValueError, match="thinking_token_budget needs a model that thinks"):
        LLM(llama_path, max_model_len=64).generate([PROMPT], SamplingParams(thinking_token_budget=4))
