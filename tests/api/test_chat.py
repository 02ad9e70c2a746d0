"""/v1/chat/completions: template rendering checked against the HF tokenizer's own chat template, logprobs
against the HF model, bytes against the tokenizer's own encoding of text, and the 400s for what is not
supported."""

from __future__ import annotations

import openai
import pytest
from api_helpers import hf_logprobs

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say 日本語 😀"}]


def _chat(client, model, messages=MESSAGES, **kwargs):
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=messages, **kwargs)


def _template_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if not isinstance(ids, list) else ids)


def test_prompt_is_the_chat_template_and_content_forms_agree(server, client, hf_tokenizer):
    expected = _template_ids(hf_tokenizer, MESSAGES)
    as_parts = [{**m, "content": [{"type": "text", "text": m["content"][:4]},
                                  {"type": "text", "text": m["content"][4:]}]} for m in MESSAGES]
    a = _chat(client, server.model, max_tokens=8, extra_body={"return_token_ids": True})
    b = _chat(client, server.model, as_parts, max_tokens=8, extra_body={"return_token_ids": True})
    assert a.model_dump()["prompt_token_ids"] == expected == b.model_dump()["prompt_token_ids"]
    assert a.usage.prompt_tokens == len(expected)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.role == "assistant" and a.object == "chat.completion"
    assert a.id.startswith("chatcmpl-")


def test_max_tokens_absent_means_until_the_context_is_full(server, client):
    r = _chat(client, server.model, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 1024 - r.usage.prompt_tokens
    assert r.choices[0].finish_reason == "length"
    r = _chat(client, server.model, max_completion_tokens=5, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5


def test_logprobs_and_true_bytes(server, client, hf_model, hf_tokenizer):
    r = _chat(client, server.model, max_tokens=24, temperature=1.0, seed=4, logprobs=True, top_logprobs=3,
              extra_body={"ignore_eos": True, "return_token_ids": True})
    choice = r.choices[0]
    content = choice.logprobs.content
    ids = r.model_dump()["prompt_token_ids"] + choice.model_dump()["token_ids"]
    oracle = hf_logprobs(hf_model, ids)
    generated = choice.model_dump()["token_ids"]
    assert len(content) == len(generated) == 24
    offset = len(ids) - len(generated)
    for i, entry in enumerate(content):
        assert entry.logprob == pytest.approx(oracle[offset + i - 1, generated[i]].item(), abs=2e-3)
        assert len(entry.top_logprobs) == 3
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            oracle[offset + i - 1].topk(3).values.tolist(), abs=2e-3)
        raw = bytes(entry.bytes)
        try:
            assert entry.token == raw.decode("utf-8")
        except UnicodeDecodeError:
            assert entry.token.startswith("bytes:")
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
    assert joined == choice.message.content
    r = _chat(client, server.model, max_tokens=3, logprobs=True)
    assert all(e.top_logprobs == [] for e in r.choices[0].logprobs.content)


def test_token_bytes_follow_the_tokenizers_own_encoding(server, hf_tokenizer):
    text = "日本語のテキスト 😀🎉 café"
    body = {"model": server.model, "messages": MESSAGES, "max_tokens": 1, "logprobs": True, "temperature": 0}
    pieces = []
    for token in hf_tokenizer(text).input_ids:          # force each token of the text in turn
        r = server.post("/v1/chat/completions", {**body, "logit_bias": {str(token): 100}}).json()
        pieces.append(bytes(r["choices"][0]["logprobs"]["content"][0]["bytes"]))
    assert b"".join(pieces) == text.encode()
    assert any(not _is_utf8(p) for p in pieces)                 # some tokens are halves of characters


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_n_choices_and_roles(server, client):
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "refusal": None, "tool_calls": None},
                {"role": "tool", "content": "42", "tool_call_id": "call_1"}, {"role": "user", "content": "and?"}]
    r = _chat(client, server.model, messages, n=3, temperature=1.0, seed=9, max_tokens=6,
              extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 18
    again = _chat(client, server.model, messages, n=1, temperature=1.0, seed=9, max_tokens=6,
                  extra_body={"ignore_eos": True})
    assert again.choices[0].message.content == r.choices[0].message.content     # choice 0 uses the seed itself
    previous = _chat(client, server.model, max_tokens=3)
    follow_up = MESSAGES + [previous.choices[0].message, {"role": "user", "content": "more"}]
    assert _chat(client, server.model, follow_up, max_tokens=2).choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("extra, param", [
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),     # auto needs a parser
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"response_format": {"type": "text", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),      # not the union's tag
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}, "strict": True}},
     "response_format.strict"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
     "messages[0].tool_calls[0].type"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"best_of": 2}, "best_of"),
    ({"echo": "yes"}, "echo"),
    ({"add_generation_prompt": True, "continue_final_message": True}, "continue_final_message"),
    ({"continue_final_message": True}, "continue_final_message"),           # the last message is the user's
    ({"chat_template": "{{ messages }}"}, "chat_template"),                  # not trusted by this server
    ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"store": True}, "store"),                                             # nothing is kept
])
def test_unsupported_or_invalid_chat_parameters(server, extra, param):
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES, **extra})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_store_through_the_client(server, client):
    assert _chat(client, server.model, max_tokens=1, store=False).choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError, match="store"):
        _chat(client, server.model, max_tokens=1, store=True)


def test_a_named_tool_choice_without_its_function_says_so(server):
    """tool_choice is a string or an object: an object without `function` is reported as that, not as a string
    that should be 'none', 'auto' or 'required' (the union's first member)."""
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES,
                                             "tools": [{"type": "function", "function": {"name": "f"}}],
                                             "tool_choice": {"type": "function"}})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "tool_choice.function" and "Missing" in error["message"]


def test_developer_messages_are_system_messages_to_a_template_without_the_role(server, client, hf_tokenizer):
    """OpenAI's developer role reaches a template that does not know it as system (as vLLM renders it)."""
    assert "developer" not in hf_tokenizer.chat_template
    ids = [_chat(client, server.model, [{"role": role, "content": "Be brief."}, {"role": "user", "content": "hi"}],
                 max_tokens=1, extra_body={"return_token_ids": True}).model_extra["prompt_token_ids"]
           for role in ("developer", "system")]
    assert ids[0] == ids[1]


def test_templates_that_know_the_developer_role_see_it(main_checkpoint):
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer(main_checkpoint, [])
    messages = [{"role": "developer", "content": "a"}]
    assert tokenizer.render_chat(messages, False, chat_template="{% for m in messages %}{{ m.role }}{% endfor %}") \
        == "system"
    knows = "{% for m in messages %}{{ 'developer' if m.role == 'developer' else 'other' }}{% endfor %}"
    assert tokenizer.render_chat(messages, False, chat_template=knows) == "developer"


def test_response_format_text_and_store_false_are_accepted(server):
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES, "max_tokens": 2,
                                             "response_format": {"type": "text"}, "tool_choice": "none",
                                             "store": False})
    assert r.status_code == 200
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES, "max_tokens": 2,
                                             "response_format": {"type": "text", "json_schema": None}})
    assert r.status_code == 200                               # a client that serialises unset fields as null


def test_model_without_chat_template(small_server):
    r = small_server.post("/v1/chat/completions", {"model": small_server.model, "messages": MESSAGES})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "chat template" in r.json()["error"]["message"]


def test_chat_context_length(server, client, hf_tokenizer):
    long = [{"role": "user", "content": "word " * 1100}]
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": long})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "messages"
    size = len(_template_ids(hf_tokenizer, MESSAGES))
    r = server.post("/v1/chat/completions", {"model": server.model, "messages": MESSAGES, "max_tokens": 1024,
                                             "context_length_exceeded_behavior": "error"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        f"This model's maximum context length is 1024 tokens. However, you requested {size + 1024} tokens "
        f"({size} in the messages, 1024 in the completion). Please reduce the length of the messages or completion.")
    r = _chat(client, server.model, max_tokens=1024, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 1024 - size and r.choices[0].finish_reason == "length"
