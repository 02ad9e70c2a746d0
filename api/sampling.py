"""From a request body to engine inputs: prompts as token ids, SamplingParams, and the context-length policy
(Fireworks' `context_length_exceeded_behavior`)."""

from __future__ import annotations

from dataclasses import dataclass

from api.errors import APIError, bad_request
from api.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingRequest
from api.tools import Tool, for_template
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputsParams
from engine.tokenizer import PromptTooLongError, Tokenizer

# SamplingParams field names -> the request field a client should fix.
_PARAM_NAMES = {"prompt_logprobs": "logprobs", "max_tokens": "max_tokens"}


@dataclass(slots=True)
class Prompt:
    """One prompt: its token ids, and its text when the client sent text (for echo)."""

    token_ids: list[int]
    text: str | None = None


def completion_prompts(request: CompletionRequest, tokenizer: Tokenizer, vocab_size: int,
                       max_model_len: int) -> list[Prompt]:
    """The prompts of a completions request, in order: a string, strings, token ids or token-id lists. A text
    prompt that cannot fit the context is refused (400) after tokenizing only a bounded prefix of it."""
    raw = request.prompt
    if isinstance(raw, str):
        items: list[str | list[int]] = [raw]
    elif all(isinstance(item, int) for item in raw):
        items = [list(raw)]
    else:
        items = list(raw)
    keep = _kept_tokens(request, max_model_len)
    prompts = []
    for item in items:
        if isinstance(item, str):
            try:        # truncating reads the whole text (bounded by the body size) to keep its end
                prompt = Prompt(tokenizer.encode(item, limit=None if keep else max_model_len - 1), item)
            except PromptTooLongError as exc:
                raise context_exceeded(max_model_len, exc, "prompt") from None
        else:
            if max(item) >= vocab_size:
                raise bad_request(f"Prompt token ids must be below the vocabulary size {vocab_size}.", "prompt")
            prompt = Prompt(item)
        if keep and len(prompt.token_ids) > keep:
            prompt = Prompt(prompt.token_ids[-keep:])       # echoed as its tokens, not as the text sent
        prompts.append(prompt)
    for prompt in prompts:
        if not prompt.token_ids:
            raise bad_request("The prompt is empty after tokenization; send at least one token.", "prompt")
    return prompts


def _kept_tokens(request: SamplingRequest, max_model_len: int) -> int | None:
    """truncate_prompt_tokens (vLLM's): keep the prompt's last k tokens; None to keep them all."""
    keep = request.truncate_prompt_tokens
    if keep is not None and keep >= max_model_len:
        raise bad_request(f"truncate_prompt_tokens must be below the context length {max_model_len}, got {keep}.",
                          "truncate_prompt_tokens")
    return keep


def chat_prompt(request: ChatCompletionRequest, tokenizer: Tokenizer, max_model_len: int) -> Prompt:
    """The conversation rendered with the model's chat template (or the request's `chat_template`) as token ids,
    with or without the assistant's turn opening, or continuing the last message; one that cannot fit the
    context is refused (400) after tokenizing only a bounded prefix of it (unless truncate_prompt_tokens)."""
    if request.chat_template is None and not tokenizer.has_chat_template:
        raise bad_request("This model has no chat template, so it cannot serve chat completions; use "
                          "/v1/completions.", "messages")
    messages, tools = template_inputs(request.messages, request.tools)
    return conversation_prompt(tokenizer, messages, tools, max_model_len, "messages",
                               _kept_tokens(request, max_model_len), request.generation_prompt,
                               request.chat_template_kwargs, bool(request.continue_final_message),
                               request.chat_template)


def conversation_prompt(tokenizer: Tokenizer, messages: list[dict], tools: list[dict] | None, max_model_len: int,
                        param: str, keep: int | None = None, add_generation_prompt: bool = True,
                        template_kwargs: dict | None = None, continue_final_message: bool = False,
                        chat_template: str | None = None) -> Prompt:
    """Chat-template messages (of any API) rendered and tokenized: one that cannot fit the context is refused
    (400 naming `param`) after tokenizing only a bounded prefix (unless `keep`, truncate_prompt_tokens, keeps
    its last tokens); a template that refuses the messages is a 400 too."""
    try:
        token_ids = tokenizer.encode_chat(messages, add_generation_prompt, None if keep else max_model_len - 1,
                                          tools, template_kwargs, continue_final_message=continue_final_message,
                                          chat_template=chat_template)
    except PromptTooLongError as exc:
        raise context_exceeded(max_model_len, exc, param) from None
    except Exception as exc:           # a template may raise on messages it does not accept
        raise bad_request(f"The chat template could not render the {param}: {exc}", param) from exc
    if not token_ids:
        raise bad_request("The rendered conversation is empty.", param)
    return Prompt(token_ids[-keep:] if keep else token_ids)


def template_inputs(messages: list[ChatMessage], tools: list[Tool] | None) -> tuple[list[dict], list[dict] | None]:
    """A request's messages and tools as chat templates read them."""
    rendered = []
    for message in messages:
        entry = {"role": message.role, "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            entry["tool_calls"] = for_template(message.tool_calls)
        reasoning = message.reasoning_content if message.reasoning_content is not None else message.reasoning
        if reasoning is not None:                  # under both names, as vLLM hands it to templates
            entry["reasoning_content"] = entry["reasoning"] = reasoning
        rendered.append(entry)
    return rendered, [tool.model_dump(exclude_none=True) for tool in tools] if tools else None


def check_context(prompt: Prompt, max_tokens: int | None, max_model_len: int, behavior: str | None,
                  param: str) -> None:
    """Raise the 400 context_length_exceeded when the prompt leaves no room, or when prompt + max_tokens
    exceeds the context and the behaviour is "error". With "truncate" (the default) the engine caps
    max_tokens at the room left."""
    size = len(prompt.token_ids)
    if size >= max_model_len:
        raise context_exceeded(max_model_len, PromptTooLongError(size, max_model_len - 1, exact=True), param)
    if behavior == "error" and max_tokens is not None and size + max_tokens > max_model_len:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, you "
                       f"requested {size + max_tokens} tokens ({size} in the {param}, {max_tokens} in the "
                       f"completion). Please reduce the length of the {param} or completion.", param,
                       "context_length_exceeded")


def context_exceeded(max_model_len: int, exc: PromptTooLongError, param: str) -> APIError:
    """The 400 context_length_exceeded for a prompt that leaves no room for the completion."""
    size = f"{'' if exc.exact else 'at least '}{exc.num_tokens}"
    return APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, your {param} "
                    f"has {size} tokens, which leaves no room for the completion. Please reduce the length of the "
                    f"{param}.", param, "context_length_exceeded")


# The neutral value of each field a model's generation_config.json may give a default (engine/sampling_params.py).
_NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "repetition_penalty": 1.0}


def capped(max_tokens: int | None, cap: int | None) -> int | None:
    """A request's max_tokens within the server-wide limit of --generation-config DIR or
    --override-generation-config's max_new_tokens (AsyncLLM.max_tokens_cap), as vLLM's."""
    if cap is None:
        return max_tokens
    return cap if max_tokens is None else min(max_tokens, cap)


def or_defaults(defaults: dict, **sent) -> dict:
    """Every sampling field a generation config may set (`_NEUTRAL`'s): as the request sent it, or where it did
    not (None, or a field its API lacks), the model's default from its generation config (`defaults`,
    AsyncLLM.sampling_defaults), else the neutral value: as vLLM's server does."""
    return {name: sent[name] if sent.get(name) is not None else defaults.get(name, neutral)
            for name, neutral in _NEUTRAL.items()}


def sampling_params(request: SamplingRequest, *, n: int, max_tokens: int | None, logprobs: int | None,
                    prompt_logprobs: int | None, vocab_size: int, defaults: dict,
                    structured: StructuredOutputsParams | None) -> SamplingParams:
    """The engine's SamplingParams for a request (its ValueError becomes a 400 naming the field), the fields it
    leaves out from the model's `defaults`; `structured` is the reply's constraint, as the route decided it (the
    output format's, `api.structured.constraint`, or with tools `api.tools.constraint`)."""
    logit_bias = {int(k): v for k, v in (request.logit_bias or {}).items()}
    for name, ids in (("logit_bias", list(logit_bias)), ("stop_token_ids", request.stop_token_ids or []),
                      ("allowed_token_ids", request.allowed_token_ids or [])):
        if any(t >= vocab_size for t in ids):
            raise bad_request(f"{name} has token ids outside the vocabulary [0, {vocab_size}).", name)
    if request.thinking_token_budget is not None and structured is not None:     # by the request's own fields
        raise bad_request("thinking_token_budget cannot be combined with a constrained reply (response_format, "
                          "structured_outputs, or tools that must be called or are strict): the grammar covers the "
                          "whole reply, thinking included.", "thinking_token_budget")
    try:
        return SamplingParams(
            n=n, max_tokens=max_tokens, **or_defaults(
                defaults, temperature=request.temperature, top_p=request.top_p, top_k=request.top_k,
                min_p=request.min_p, presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty, repetition_penalty=request.repetition_penalty),
            seed=request.seed, stop=request.stop,
            stop_token_ids=request.stop_token_ids, include_stop_str_in_output=bool(request.include_stop_str_in_output),
            ignore_eos=bool(request.ignore_eos), min_tokens=_or(request.min_tokens, 0), logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, logit_bias=logit_bias or None,
            skip_special_tokens=_or(request.skip_special_tokens, True),
            allowed_token_ids=request.allowed_token_ids, bad_words=request.bad_words,
            structured_outputs=structured, thinking_token_budget=request.thinking_token_budget)
    except ValueError as exc:
        field = str(exc).split(" ", 1)[0]
        raise bad_request(str(exc), _PARAM_NAMES.get(field, field)) from exc


def _or(value, default):
    return default if value is None else value
