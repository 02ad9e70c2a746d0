"""thinking_token_budget (engine/thinking.py): a model that thinks between `<think>` and `</think>` tokens draws
`</think>` once it has thought for the budget, and nothing else changes. The oracle is the engine without a
budget: the same greedy tokens up to the budget, and after the forced `</think>` the tokens it draws for the prompt
that ends with them."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.thinking import ThinkingBudget


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


@pytest.fixture(scope="module")
def repeater(checkpoint_factory):
    """A thinker that repeats itself (n-gram drafts hold), a roomy engine without speculation as the oracle, its
    `<think>` / `</think>` ids, prompts that open the thinking and prompts that do not."""
    path = checkpoint_factory("qwen3", thinking=True, initializer_range=0.05)
    roomy = LLM(path, max_model_len=128)
    vocab = roomy.engine.tokenizer.hf.get_vocab()
    start, end = vocab["<think>"], vocab["</think>"]
    closed = [[(7 * i + 3 * j) % 300 + 1 for j in range(12)] for i in range(6)]
    return path, roomy, start, end, [p + [start] for p in closed], closed


def _draft_model(path: str) -> dict:
    """The target as its own draft model: every guess is its greedy token, so a row drawn unforced where the budget
    forces `</think>` would be accepted and show."""
    return {"method": "draft_model", "model": path, "num_speculative_tokens": 3}


def test_with_preemption_and_speculation(repeater):
    """Sequences preempted and resumed, an n-gram speculator or a draft model: the same tokens as a roomy engine
    without speculation, for prompts that open the thinking (cut at each budget) and prompts that do not."""
    path, roomy, start, end, opening, closed = repeater
    tight = LLM(path, max_model_len=64, block_size=4, kv_cache_blocks=20, max_num_batched_tokens=16)
    ngram = LLM(path, max_model_len=128,
                speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2})
    drafting = LLM(path, max_model_len=128, speculative_config=_draft_model(path))
    for budget in range(0, 9):
        params = SamplingParams(max_tokens=24, thinking_token_budget=budget, **GREEDY)
        expected = [list(o.outputs[0].token_ids) for o in roomy.generate(opening + closed, params)]
        assert all(tokens[budget] == end for tokens in expected[:len(opening)])
        for llm in (tight, ngram, drafting):
            assert [list(o.outputs[0].token_ids) for o in llm.generate(opening + closed, params)] == expected, budget
    assert tight.engine.stats().num_preemptions > 0
    assert ngram.engine.stats().spec_num_accepted_tokens > 0


def test_a_budget_leaves_room_for_drafts(repeater):
    """A budgeted sequence speculates before its thinking opens and while it is open, as far as the budget allows:
    drafts are accepted where the thinking never closes within max_tokens, with the tokens of the engine without
    speculation."""
    path, roomy, start, end, opening, closed = repeater
    drafting = LLM(path, max_model_len=128, speculative_config=_draft_model(path))
    for prompts, budget in ((closed, 0), (opening, 40)):
        params = SamplingParams(max_tokens=16, thinking_token_budget=budget, **GREEDY)
        expected = [list(o.outputs[0].token_ids) for o in roomy.generate(prompts, params)]
        assert not any(end in tokens for tokens in expected)        # the thinking never closed
        before = drafting.engine.stats().spec_num_accepted_tokens
        assert [list(o.outputs[0].token_ids) for o in drafting.generate(prompts, params)] == expected
        assert drafting.engine.stats().spec_num_accepted_tokens > before, budget


@pytest.mark.parametrize("used, budget, drafts, verifiable", [
    (None, 4, [9, 1, 8], [9, 1, 8]),        # not thinking: all of them,
    (None, 4, [9, 1, 2, 8], [9, 1]),        # up to a <think> (2), which would open it
    (0, 4, [9, 3, 8, 7, 6], [9, 3, 8]),     # thinking: the rows up to the budget's end
    (3, 4, [9, 3], []),
    (5, 4, [9], []),
    ("done", 0, [2, 9, 2], [2, 9, 2]),      # closed: all of them
])
def test_the_drafts_a_budget_lets_a_step_verify(used, budget, drafts, verifiable):
    thinking = ThinkingBudget(2, 3, budget, done=used == "done", used=None if used == "done" else used)
    assert thinking.verifiable(drafts) == verifiable
    # How many a proposer need guess: all while the thinking is not open, else the rows short of the budget.
    assert thinking.room(len(drafts)) == (len(drafts) if not isinstance(used, int) else len(verifiable))


def test_refusals(thinker, llama_path):
    llm, _, _ = thinker
    with pytest.raises(ValueError, match="thinking_token_budget"):
        SamplingParams(thinking_token_budget=-1)
    with pytest.raises(ValueError, match="thinking_token_budget.*structured_outputs"):
        SamplingParams(thinking_token_budget=4, structured_outputs={"regex": "a+"})
    with pytest.raises(ValueError, match="thinking_token_budget needs a model that thinks"):
        LLM(llama_path, max_model_len=64).generate([PROMPT], SamplingParams(thinking_token_budget=4))
