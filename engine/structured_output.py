"""Structured outputs: a request's constraint (JSON schema, regex, choice, grammar, structural tag) as a token mask
per step.

xgrammar does the grammar work: a constraint is parsed when the request arrives (an invalid one is a ValueError
then), compiled against the tokenizer's vocabulary on a thread of its own (so a slow compile never stalls other
requests' steps; compiled grammars are cached by constraint), and each sequence gets a matcher that fills the
next token's bitmask and accepts the drawn token. The mask is applied to the logits by our own kernel
(`apply_token_bitmask` of the engine's KernelSet). JSON is compact: no optional whitespace, so a finite schema
ends within its compact rendering. Each compiled grammar carries a `keep` row, the tokens it may ever draw,
whatever xgrammar allows: never a special token but the stop tokens (xgrammar takes <|im_start|> for its text, which the
output would not contain), and for JSON, which never holds one raw, no token with a control character (xgrammar
0.2.9's rule for strings with a maxLength lets them through).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import xgrammar as xgr

CACHE_SIZE = 256             # compiled grammars kept, most recently used first


@dataclass(frozen=True)
class StructuredOutputsParams:
    """One constraint on the generated text (vLLM's names): `json` (a JSON schema, dict or string), `regex`,
    `choice` (one of these strings), `grammar` (EBNF/GBNF), `json_object` (any JSON object), or
    `structural_tag`: free text in which each of its triggers opens one of its structures, whose content must
    match that structure's JSON schema (how strict tool calls are enforced while the model may also just talk). It
    is vLLM's JSON string, `{"structures": [{"begin", "schema", "end"}], "triggers": [...]}`, or xgrammar's own
    structural-tag format."""

    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice", "grammar", "structural_tag")
                 if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError("structured_outputs must set exactly one of json, regex, choice, grammar, json_object "
                             f"and structural_tag; got {', '.join(given) or 'none'}")
        if self.choice is not None and (not isinstance(self.choice, (list, tuple)) or not self.choice
                                        or not all(isinstance(c, str) and c for c in self.choice)):
            raise ValueError("structured_outputs.choice must be a non-empty list of non-empty strings")

    @property
    def key(self) -> tuple[str, str]:
        """(kind, canonical text): what the compiled grammar is cached under."""
        if self.json is not None:
            spec = self.json if isinstance(self.json, str) else json.dumps(self.json, sort_keys=True)
            return "json", spec
        if self.json_object:
            return "json_object", ""
        if self.choice is not None:
            return "choice", json.dumps(self.choice)
        if self.structural_tag is not None:
            return "structural_tag", self.structural_tag
        return ("regex", self.regex) if self.regex is not None else ("grammar", self.grammar)

    def parse(self) -> xgr.Grammar:
        """The constraint as an xgrammar Grammar; a ValueError naming the problem if it is not a valid one."""
        import xgrammar as xgr  # here, not at import: it takes half a second

        kind, spec = self.key
        ignored = _ignored_rule(self.json if kind == "json" else {"pattern": spec} if kind == "regex" else None)
        if ignored is not None:
            raise ValueError(f"structured_outputs.{kind}: {ignored}, which the grammar cannot enforce (xgrammar would "
                             "ignore it)")
        try:
            if kind == "json":            # the schema as given: its property order is the output's
                schema = self.json if isinstance(self.json, str) else json.dumps(self.json)
                return xgr.Grammar.from_json_schema(schema, any_whitespace=False)
            if kind == "json_object":
                return xgr.Grammar.from_json_schema('{"type": "object"}', any_whitespace=False)
            if kind == "choice":
                return xgr.Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(c) for c in self.choice))
            if kind == "regex":
                return xgr.Grammar.from_regex(spec)
            if kind == "structural_tag":
                return _structural_tag(spec)
            return xgr.Grammar.from_ebnf(spec)
        except Exception as exc:              # xgrammar raises RuntimeError and its own errors
            raise ValueError(f"structured_outputs.{kind}: not a valid {kind.replace('_', ' ')}: {_reason(exc)}"
                             ) from None


_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")


def _ignored_rule(schema: object, path: str = "") -> str | None:
    """Where a JSON schema (or a regex, as {"pattern": ...}) asks for what xgrammar would silently leave out: a
    string's minLength/maxLength beside a pattern or format, a number's multipleOf, a lookaround in a pattern. None
    if nothing (a schema that is not JSON is left to xgrammar's own error)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            return None
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            found = _ignored_rule(item, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if not isinstance(schema, dict):
        return None
    where = f"at {path}" if path else "at the top"
    lengths = [key for key in ("minLength", "maxLength") if key in schema]
    shaped = [key for key in ("pattern", "format") if isinstance(schema.get(key), str)]
    if lengths and shaped:
        return f"{where}, {' and '.join(lengths)} beside a {shaped[0]}"
    if "multipleOf" in schema and schema.get("type") == "number":
        return f"{where}, multipleOf on a number"
    if any(mark in str(schema.get("pattern", "")) for mark in _LOOKAROUND):
        return f"{where}, a lookaround assertion in the pattern"
    for key, value in schema.items():
        if isinstance(value, (dict, list)) and key not in ("enum", "const", "default", "examples"):
            found = _ignored_rule(value, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    return None


def _reason(exc: Exception) -> str:
    """What was wrong, in a line: xgrammar's message without its log prefix (time, C++ source file and line)."""
    if isinstance(exc, KeyError):
        return f"missing {exc}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[0-9:]+\]\s+\S+:\d+:\s*", "", text)


def _structural_tag(spec: str) -> xgr.Grammar:
    """A structural tag's grammar: vLLM's form (structures and triggers, which every xgrammar since 0.1.20 takes)
    or xgrammar's own (a newer xgrammar's)."""
    import xgrammar as xgr

    tag = json.loads(spec)
    if not (isinstance(tag, dict) and "structures" in tag):
        return xgr.Grammar.from_structural_tag(spec)
    items = [xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"])
             for s in tag["structures"]]
    return xgr.Grammar.from_structural_tag(items, tag["triggers"])


class GrammarCompiler:
    """Compiles constraints against one tokenizer, on a background thread, caching the results."""

    def __init__(self, hf_tokenizer, vocab_size: int, stop_token_ids: list[int],
                 special_token_ids: list[int]) -> None:
        self._tokenizer = (hf_tokenizer, vocab_size, stop_token_ids)
        self._special = sorted(set(special_token_ids) - set(stop_token_ids))
        self._compiler: xgr.GrammarCompiler | None = None       # built on the thread: it reads the vocabulary
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")
        self._cache: OrderedDict[tuple[str, str], Future] = OrderedDict()
        self.vocab_size = vocab_size

    def submit(self, params: StructuredOutputsParams) -> Future:
        """The compiled grammar of `params`, as a future (done at once when cached). Parses first: an invalid
        constraint is a ValueError here."""
        key = params.key
        future = self._cache.get(key)
        if future is None or (future.done() and future.exception() is not None):
            future = self._pool.submit(self._compile, params.parse(), key[0] in ("json", "json_object"))
            self._cache[key] = future
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return future

    def _compile(self, grammar: xgr.Grammar, is_json: bool) -> Compiled:
        import xgrammar as xgr

        if self._compiler is None:
            tokenizer, vocab_size, stops = self._tokenizer
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stops)
            # Our cache (CACHE_SIZE, by constraint) bounds what is kept: xgrammar's own keeps every grammar it ever
            # compiled, without limit (a server's memory grew with each distinct schema).
            self._compiler = xgr.GrammarCompiler(info, cache_enabled=False)
            control = [i for i, text in enumerate(info.decoded_vocab) if any(byte < 0x20 for byte in text)]
            self._keeps = (keep_mask(self._special, vocab_size), keep_mask(self._special + control, vocab_size))
        return Compiled(self._compiler.compile_grammar(grammar), self._keeps[is_json])


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled grammar, and the tokens it must never draw whatever it says (`keep`'s cleared bits)."""

    grammar: xgr.CompiledGrammar
    keep: torch.Tensor


class GrammarState:
    """One sequence's place in its grammar: the xgrammar matcher, and the tokens it must never draw."""

    __slots__ = ("matcher", "keep")

    def __init__(self, compiled: Compiled) -> None:
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled.grammar)
        self.keep = compiled.keep

    def accept_token(self, token: int) -> bool:
        """Advance past `token`; False if the grammar does not allow it."""
        return self.matcher.accept_token(token)

    def is_terminated(self) -> bool:
        """Whether the grammar has ended (its stop token was accepted)."""
        return self.matcher.is_terminated()


def keep_mask(banned: list[int], vocab_size: int) -> torch.Tensor:
    """A packed row [ceil(vocab / 32)] int32 with every bit set but those of `banned`."""
    words = torch.full(((vocab_size + 31) // 32,), -1, dtype=torch.int64)
    for token in banned:
        words[token // 32] &= ~(1 << (token % 32))
    return ((words + 2 ** 31) % 2 ** 32 - 2 ** 31).to(torch.int32)      # two's complement into int32


def fill_bitmask(states: list[GrammarState], vocab_size: int, batch: xgr.BatchGrammarMatcher) -> torch.Tensor:
    """The packed int32 bitmask [len(states), ceil(vocab / 32)] of the tokens each grammar allows next and its
    `keep` row does not clear. `batch` fills the rows in one call (a Python loop over 64 matchers took twice as
    long here)."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(states), vocab_size)
    batch.batch_fill_next_token_bitmask([state.matcher for state in states], bitmask)
    return bitmask.bitwise_and_(torch.stack([state.keep for state in states]))


def batch_matcher(device: torch.device) -> xgr.BatchGrammarMatcher:
    """xgrammar's batched filler: one thread on the CPU, whose cores the forward beside it is using; as many as
    xgrammar likes beside a GPU's forward."""
    import xgrammar as xgr

    return xgr.BatchGrammarMatcher(max_threads=1 if device.type == "cpu" else "auto")
