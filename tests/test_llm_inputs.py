"""What `LLM.generate` and `LLM.chat` take, as vLLM's do: prompts as text, token ids or vLLM's prompt dicts (one or
a list), and chat's arguments in vLLM's order; what they cannot honour is a ValueError, never a silent guess."""

from __future__ import annotations

import numpy as np
import pytest

from engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
CONVERSATION = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def llm(llama_path) -> LLM:
    return LLM(llama_path, max_num_seqs=4)


def test_prompt_dicts_are_the_text_or_ids_they_hold(llm):
    text = "def f(x):"
    ids = llm.get_tokenizer()(text)["input_ids"]
    expected = llm.generate(text, GREEDY)[0].outputs[0].token_ids
    for prompts in ({"prompt": text}, {"prompt_token_ids": ids}, [{"prompt_token_ids": ids}, {"prompt": text}],
                    [ids, text], ids, [np.array(ids, dtype=np.int64).tolist()], list(np.array(ids))):
        outputs = llm.generate(prompts, GREEDY)
        assert [o.outputs[0].token_ids for o in outputs] == [expected] * len(outputs), prompts
    assert llm.generate({"prompt_token_ids": ids}, GREEDY)[0].prompt_token_ids == ids


@pytest.mark.parametrize("prompt", [{"prompt": "x", "multi_modal_data": {}}, {"prompt_token_ids": "abc"}, {},
                                    [[1, "2"]], [[1, 2.5]], [[True, 2]], [None]])
def test_prompts_that_cannot_be_honoured_are_value_errors(llm, prompt):
    with pytest.raises(ValueError, match="prompt"):
        llm.generate(prompt, GREEDY)


def test_chat_takes_vllms_arguments_in_vllms_order(llm):
    """vLLM's chat(messages, sampling_params, use_tqdm, ...): a third positional argument is use_tqdm, not
    add_generation_prompt; the rest are keywords."""
    hf = llm.get_tokenizer()
    opened = hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert llm.chat(CONVERSATION, GREEDY, False)[0].prompt == opened
    closed = llm.chat(CONVERSATION, GREEDY, add_generation_prompt=False)[0]
    assert closed.prompt == hf.apply_chat_template(CONVERSATION, tokenize=False) != opened
    assert closed.prompt_token_ids == hf(closed.prompt, add_special_tokens=False)["input_ids"]
    going_on = CONVERSATION + [{"role": "assistant", "content": "Hi, I"}]
    continued = llm.chat(going_on, GREEDY, add_generation_prompt=False, continue_final_message=True)[0].prompt
    assert continued.endswith("Hi, I")
    own = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}{{ extra }}"
    assert llm.chat(CONVERSATION, GREEDY, chat_template=own, chat_template_kwargs={"extra": "!"})[0].prompt == \
        "[user] Hello there!"
    with pytest.raises(ValueError, match="continue_final_message"):
        llm.chat(going_on, GREEDY, continue_final_message=True)
