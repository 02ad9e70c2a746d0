"""/openapi.json describes the server: a bounded property-based run of schemathesis against the app in-process
(the built-in model). For bodies the schema calls valid and for invalid ones alike, no request gets a 5xx and
every response (status code, content type, body, each event of a stream) is one the schema documents; a body
the schema calls valid is accepted (not a 400)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from api import ServerSettings, create_app
from engine import DEFAULT_MODEL, AsyncLLM

MODEL = "pycoder-tiny"
EXAMPLES = 40           # per operation, half of them with valid bodies; shrinking is off, the order derandomized
MAX_TOKENS = 4          # generation is the costly part: every request asks for a few tokens at most
MAX_CHOICES = 2
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.positive_data_acceptance]
OPERATIONS = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
              ("GET", "/v1/models/{model}"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/version"),
              ("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/responses"),
              ("GET", "/v1/responses/{response_id}"), ("GET", "/health"), ("GET", "/ping"), ("POST", "/ping"),
              ("GET", "/load"), ("GET", "/metrics"), ("POST", "/invocations")]


@pytest.fixture(scope="module")
def served():
    """The app's own /openapi.json loaded by schemathesis (requests go to the app in-process), and the engine."""
    llm = AsyncLLM(DEFAULT_MODEL, max_num_seqs=8, max_queued_seqs=512)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(llm, ServerSettings(MODEL))), llm
    finally:
        llm.shutdown()


def _integral(value: Any) -> Any:
    """2.0 as 2: JSON Schema counts it an integer, the server (strict, as its description says) does not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


def _prepare(body: Any, vocab_size: int) -> Any:
    """A generated body made cheap and answerable by this server, valid if it was: the served model's name, a few
    tokens and choices at most, token ids inside its vocabulary, the rules across fields that the schema does not
    state (best_of >= n, min_tokens <= max_tokens, prompt_logprobs not streamed, continue_final_message with a
    last assistant message and without add_generation_prompt, chat_template only on a server that trusts it,
    truncate_prompt_tokens below the context, no Anthropic tool_use / tool_result blocks, whose pairing across
    messages is a rule the schema cannot state, no empty message and no prefill ending in whitespace, distinct tool
    names), and structured outputs that are valid
    constraints (a regex, grammar or JSON schema's validity is not a JSON Schema property)."""
    if not isinstance(body, dict):
        return body
    body = _integral(body)
    body["model"] = MODEL
    limit = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    tokens = body.get(limit)
    body[limit] = min(tokens, MAX_TOKENS) if isinstance(tokens, int) else MAX_TOKENS
    for key in ("n", "best_of", "min_tokens"):
        if isinstance(body.get(key), int):
            body[key] = min(body[key], MAX_CHOICES if key != "min_tokens" else body[limit])
    if isinstance(body.get("best_of"), int) and (body.get("stream") or body["best_of"] < (body.get("n") or 1)):
        body["best_of"] = body.get("n") or 1
    if body.get("stream"):
        body.pop("prompt_logprobs", None)
    for key in ("continue_final_message", "chat_template", "truncate_prompt_tokens"):
        body.pop(key, None)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
        body["prompt"] = _in_vocabulary(prompt, vocab_size)
    for key in ("stop_token_ids", "allowed_token_ids"):
        if isinstance(body.get(key), list):
            body[key] = _in_vocabulary(body[key], vocab_size)
    if isinstance(body.get("structured_outputs"), dict):            # valid constraints, cheap to compile
        body["structured_outputs"] = {"choice": ["a", "b"]}
    if body.get("structured_outputs") or (isinstance(body.get("response_format"), dict)
                                          and body["response_format"].get("type") != "text"):
        body.pop("min_tokens", None)             # the engine refuses min_tokens with a constraint
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "grammar":
        response_format["grammar"] = 'root ::= "a" | "b"'
    if isinstance(response_format, dict) and isinstance(response_format.get("json_schema"), dict):
        response_format["json_schema"]["schema"] = {"type": "object", "properties": {"a": {"type": "boolean"}},
                                                    "required": ["a"], "additionalProperties": False}
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    for message in messages:                     # Anthropic's: content, and no whitespace at a prefill's end
        if isinstance(message, dict) and message.get("content") in ("", []):
            message["content"] = "x"
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if isinstance(last.get("content"), str):
        last["content"] = last["content"].rstrip() or "x"
    for block in last.get("content") if isinstance(last.get("content"), list) else ():
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            block["text"] = block["text"].rstrip() or "x"
    for message in messages:
        if isinstance(message, dict) and isinstance(message.get("content"), list):    # pairs the schema cannot say
            message["content"] = [{"type": "text", "text": "x"} if isinstance(b, dict) and b.get("type") in (
                "tool_use", "tool_result") else b for b in message["content"]]
    if body.get("tools") or body.get("tool_choice"):                # tool schemas are arbitrary: plain chat
        body["tool_choice"] = "none"
    for i, tool in enumerate(body.get("tools") if isinstance(body.get("tools"), list) else ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):      # distinct names
            function["name"] = f"{function['name'][:50]}_{i}"
    if isinstance(body.get("logit_bias"), dict):
        body["logit_bias"] = {str(int(k) % vocab_size) if k.isdigit() else k: v for k, v in body["logit_bias"].items()}
    return body


def _in_vocabulary(ids: Any, vocab_size: int) -> Any:
    if isinstance(ids, list):
        return [_in_vocabulary(item, vocab_size) for item in ids]
    return ids % vocab_size if isinstance(ids, int) and not isinstance(ids, bool) and ids >= 0 else ids


def test_the_schema_lists_every_route(served):
    schema, _ = served
    documented = {(method.upper(), path) for path, item in schema.raw_schema["paths"].items() for method in item}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_responses_match_the_schema(served, method, path):
    schema, llm = served
    operation = schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(cases)
    def run(case):
        case.body = _prepare(case.body, llm.model_config.vocab_size)
        case.call_and_validate(checks=CHECKS)

    run()


def test_a_thinking_budget_is_documented_where_the_model_has_the_tokens(served, checkpoint_factory):
    """The built-in model has no `<think>` tokens: its schema has no thinking_token_budget nor Anthropic's enabled
    thinking (the schemathesis run above then never sends them as valid); a thinking model's has both."""
    _, llm = served
    thinker = AsyncLLM(checkpoint_factory("qwen3", thinking=True))
    try:
        for model, thinks in ((llm, False), (thinker, True)):
            spec = create_app(model, ServerSettings(MODEL)).openapi()
            schemas = spec["components"]["schemas"]
            assert ("thinking_token_budget" in schemas["ChatCompletionRequest"]["properties"]) == thinks
            assert ("thinking_token_budget" in schemas["CompletionRequest"]["properties"]) == thinks
            assert ("ThinkingEnabled" in str(spec)) == thinks
            assert "ThinkingAdaptive" in str(schemas["MessagesRequest"])
    finally:
        thinker.shutdown()


def test_the_api_key_is_documented_where_it_is_required(served):
    """401 and the bearer scheme only when the server requires a key, and only on /v1 and /invocations; 422
    never."""
    _, llm = served
    for api_key in (None, "k"):
        spec = create_app(llm, ServerSettings(MODEL, api_key)).openapi()
        for path, item in spec["paths"].items():
            for operation in item.values():
                guarded = api_key is not None and (path.startswith("/v1/") or path == "/invocations")
                assert ("401" in operation["responses"]) == guarded == ("security" in operation), (path, api_key)
                assert "422" not in operation["responses"]
        assert ("securitySchemes" in spec["components"]) == (api_key is not None)
        assert "HTTPValidationError" not in spec["components"]["schemas"]
