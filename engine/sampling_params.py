"""SamplingParams: how to draw and when to stop, per request. Shaped like vLLM's, validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.structured_output import StructuredOutputsParams
from llm_kernels.reference.sampling import is_greedy

MAX_LOGPROBS = 20
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class SamplingParams:
    """Per-request sampling and stopping parameters.

    n: choices per prompt. max_tokens: new tokens at most (None: until the context is full; 0: none, useful
    with prompt_logprobs). temperature 0 (or below 1e-5) is greedy. top_k -1 or 0, top_p 1 and min_p 0 switch those
    filters off. The penalties follow OpenAI (presence, frequency: output tokens only) and vLLM (repetition:
    prompt and output tokens). seed makes the draws depend only on (seed, position). stop strings are
    matched on the decoded text and cut from it unless include_stop_str_in_output; stop_token_ids end the
    sequence without adding their text. min_tokens suppresses EOS and every stop until that many tokens
    were generated. logprobs k returns, per generated token, the k most likely tokens plus the sampled one;
    prompt_logprobs does the same for the prompt tokens. Logprobs are from the raw model distribution
    (before temperature, penalties and filters). logit_bias maps token id to a value added to its logit.
    allowed_token_ids (vLLM's) keeps only those tokens drawable; bad_words (vLLM's) are words never completed:
    each is tokenized as it would start the text and after a space, and the token that would end one of those
    token sequences cannot be drawn right after the rest of it (matched against the generated tokens).
    detokenize False leaves the output text empty (token ids only; stop strings then need it).
    structured_outputs constrains the text (a JSON schema, regex, choice or grammar; a dict of
    StructuredOutputsParams' fields is taken too): every sequence then matches it, and ends ("stop") when it is
    complete. thinking_token_budget (vLLM's) lets a model that thinks between `<think>` and `</think>` tokens
    think for that many tokens at most, then draws `</think>` (engine/thinking.py).
    """

    n: int = 1
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    skip_special_tokens: bool = True
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    detokenize: bool = True
    structured_outputs: StructuredOutputsParams | None = None
    thinking_token_budget: int | None = None

    def __post_init__(self) -> None:
        self._check_types()
        if isinstance(self.structured_outputs, dict):
            try:
                self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
            except TypeError as exc:
                raise ValueError(f"structured_outputs: {exc}") from None
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias:
            self.logit_bias = {k: float(v) for k, v in self.logit_bias.items()}
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = list(self.allowed_token_ids)
        self.bad_words = list(dict.fromkeys(self.bad_words or []))
        self._validate()

    def _check_types(self) -> None:
        """A ValueError naming the field whose value has the wrong type (a bool is no number here: logprobs=True
        would be 1)."""
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            _check(_is_number(getattr(self, name)), name, "must be a number", getattr(self, name))
        for name in ("n", "top_k", "min_tokens"):
            _check(_is_int(getattr(self, name)), name, "must be an integer", getattr(self, name))
        for name in ("max_tokens", "seed", "logprobs", "prompt_logprobs", "thinking_token_budget"):
            value = getattr(self, name)
            _check(value is None or _is_int(value), name, "must be None or an integer", value)
        _check(self.stop is None or isinstance(self.stop, str) or _list_of(self.stop, str), "stop",
               "must be None, a string or a list of strings", self.stop)
        for name in ("stop_token_ids", "allowed_token_ids"):
            value = getattr(self, name)
            _check(value is None or _list_of(value, int), name, "must be None or a list of token ids", value)
        _check(self.bad_words is None or _list_of(self.bad_words, str), "bad_words",
               "must be None or a list of strings", self.bad_words)
        bias = self.logit_bias
        _check(bias is None or (isinstance(bias, dict) and all(_is_int(k) and _is_number(v) for k, v in bias.items())),
               "logit_bias", "must be None or a dict of token id to number", bias)

    def _validate(self) -> None:
        _check(isinstance(self.n, int) and self.n >= 1, "n", "must be an integer >= 1", self.n)
        _check(self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 0),
               "max_tokens", "must be None or an integer >= 0", self.max_tokens)
        _check(0 <= self.temperature <= _FLOAT32_MAX, "temperature",
               f"must be >= 0 and finite as the samplers' float32 holds it (at most {_FLOAT32_MAX:.4g})",
               self.temperature)
        for name in ("include_stop_str_in_output", "ignore_eos", "skip_special_tokens", "detokenize"):
            _check(isinstance(getattr(self, name), bool), name, "must be True or False", getattr(self, name))
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]", self.top_p)
        _check(isinstance(self.top_k, int) and self.top_k >= -1, "top_k", "must be -1, 0 (off) or >= 1", self.top_k)
        _check(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]", self.min_p)
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]", self.presence_penalty)
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]", self.frequency_penalty)
        _check(self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty), "repetition_penalty",
               "must be finite and > 0", self.repetition_penalty)
        _check(self.seed is None or isinstance(self.seed, int), "seed", "must be None or an integer", self.seed)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings", self.stop)
        _check(all(t >= 0 for t in self.stop_token_ids), "stop_token_ids", "must be >= 0", self.stop_token_ids)
        _check(self.detokenize or not self.stop, "stop", "strings need detokenize=True (they are matched on the text)",
               self.stop)
        allowed = self.allowed_token_ids
        _check(allowed is None or (bool(allowed) and all(isinstance(t, int) and t >= 0 for t in allowed)),
               "allowed_token_ids", "must be None or a non-empty list of token ids >= 0", allowed)
        _check(all(isinstance(w, str) and w for w in self.bad_words), "bad_words", "must be non-empty strings",
               self.bad_words)
        _check(isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens", "must be >= 0",
               self.min_tokens)
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
               f"must be <= max_tokens ({self.max_tokens})", self.min_tokens)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and 0 <= value <= MAX_LOGPROBS), name,
                   f"must be None or an integer in [0, {MAX_LOGPROBS}]", value)
        _check(self.structured_outputs is None or isinstance(self.structured_outputs, StructuredOutputsParams),
               "structured_outputs", "must be a StructuredOutputsParams, a dict of its fields or None",
               self.structured_outputs)
        _check(self.thinking_token_budget is None or self.thinking_token_budget >= 0, "thinking_token_budget",
               "must be None or an integer >= 0", self.thinking_token_budget)
        _check(self.thinking_token_budget is None or self.structured_outputs is None, "thinking_token_budget",
               "cannot be combined with structured_outputs (the grammar covers the whole reply, thinking included)",
               self.thinking_token_budget)
        _check(self.structured_outputs is None or self.min_tokens == 0, "min_tokens",
               "cannot be combined with structured_outputs (the grammar decides when the output may end)",
               self.min_tokens)
        for token, bias in (self.logit_bias or {}).items():
            _check(token >= 0, "logit_bias", "keys must be token ids >= 0", token)
            _check(-100 <= bias <= 100, "logit_bias", "values must be in [-100, 100]", bias)

    @property
    def greedy(self) -> bool:
        """Whether tokens are chosen by argmax: the temperature, in float32 as the samplers hold it, is below
        `llm_kernels.reference.sampling.GREEDY_BELOW`."""
        return is_greedy(self.temperature)

    @property
    def has_penalties(self) -> bool:
        """Whether any of the three penalties is active."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int or float (not a bool) that a float holds (10**400 is no number the samplers can use)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _list_of(value: object, kind: type) -> bool:
    """A list or tuple of `kind` (ints: not bools)."""
    if not isinstance(value, (list, tuple)):
        return False
    return all(_is_int(v) for v in value) if kind is int else all(isinstance(v, kind) for v in value)


def _check(ok: bool, name: str, rule: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name} {rule}, got {value!r}")


# The generation_config.json fields that become default SamplingParams (vLLM's list), by their Hugging Face names.
GENERATION_FIELDS = ("repetition_penalty", "presence_penalty", "frequency_penalty", "temperature", "top_k", "top_p",
                     "min_p", "max_new_tokens")


def generation_defaults(model: str, source: str = "auto", overrides: dict | None = None) -> dict:
    """The SamplingParams fields a checkpoint's generation_config.json sets, as vLLM's `--generation-config`
    reads them: source "auto" reads the model's, a directory that one's, "vllm" none; `overrides` (Hugging Face
    names, GENERATION_FIELDS) go on top. Only values that differ from transformers' own defaults count (Hugging
    Face's top_k 50 is no choice of the model's); max_new_tokens is max_tokens here. A ValueError for an override
    that is not such a field, or a value SamplingParams refuses."""
    unknown = sorted(str(key) for key in set(overrides or {}) - set(GENERATION_FIELDS))
    if unknown:
        raise ValueError(f"override_generation_config: {', '.join(unknown)} cannot be overridden; the fields that "
                         f"become sampling defaults are {', '.join(GENERATION_FIELDS)}")
    config = {}
    if source != "vllm":
        from transformers import GenerationConfig

        try:
            config = GenerationConfig.from_pretrained(model if source == "auto" else source).to_diff_dict()
        except OSError:                  # no generation_config.json
            config = {}
    config.update(overrides or {})
    defaults = {name: config[name] for name in GENERATION_FIELDS if config.get(name) is not None}
    if "max_new_tokens" in defaults:
        defaults["max_tokens"] = defaults.pop("max_new_tokens")
    SamplingParams(**defaults)           # a ValueError naming a field the model's file sets out of range
    return defaults


def generation_cap(source: str, overrides: dict | None, defaults: dict) -> int | None:
    """The most tokens any server request may generate, as vLLM's: the max_new_tokens of a `--generation-config
    DIR`, or of `--override-generation-config` (the model's own file only gives a default, `generation_defaults`)."""
    if source not in ("auto", "vllm"):
        return defaults.get("max_tokens")
    return (overrides or {}).get("max_new_tokens")
