"""The CPU sampler's parts, before (the whole-row versions, copied here) and after commit 9713f54, one thread,
256 rows: top-p and friends on the default model's distributions (its logits over 256 positions of a source file)
and on flat random rows; greedy and plain draws. Run from the repository root."""

import inspect
import json
import time

import torch
import transformers

from engine import DEFAULT_MODEL
from engine.cpu_malloc import keep_freed_memory
from llm_kernels.reference import sampling as S


def old_filter(probs, top_k, top_p, min_p):
    vocab = probs.shape[-1]
    if bool((min_p > 0).any()):
        probs = probs.masked_fill(probs < min_p[:, None] * probs.max(dim=-1, keepdim=True).values, 0.0)
    k = torch.where((top_k <= 0) | (top_k >= vocab), vocab, top_k).long()
    if bool((k < vocab).any()):
        kth = probs.topk(int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        probs = probs.masked_fill(probs < kth, 0.0)
    if bool((top_p < 1).any()):
        ordered = probs.sort(dim=-1, descending=True).values
        cumulative = ordered.cumsum(dim=-1)
        above = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
        limit = torch.where(top_p < 1, top_p * cumulative[:, -1], float("inf"))[:, None]
        last = ((above < limit).sum(dim=-1, keepdim=True) - 1).clamp(min=0)
        probs = probs.masked_fill(probs < ordered.gather(1, last), 0.0)
    return probs


def old_draw(probs, uniforms):
    cdf = probs.cumsum(dim=-1)
    return torch.searchsorted(cdf, (uniforms * cdf[:, -1]).float()[:, None], right=True).squeeze(1)


def ms(f, n=10):
    f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n * 1e3


hf = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL)
tokenizer = transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL)
ids = tokenizer(inspect.getsource(json.encoder)[:6000], return_tensors="pt").input_ids[:, :256]
with torch.no_grad():
    logits = hf(ids).logits[0].float()
torch.set_num_threads(1)
keep_freed_memory()
B = logits.shape[0]
one, zero, no_k = torch.ones(B), torch.zeros(B), torch.zeros(B, dtype=torch.long)
CASES = (("top-p 0.9", (no_k, one * 0.9, zero)), ("top-p 0.95", (no_k, one * 0.95, zero)),
         ("top-k 50 + top-p 0.95", (no_k + 50, one * 0.95, zero)), ("min-p 0.05", (no_k, one, zero + 0.05)))
for name, rows in (("default model, T 0.7", logits / 0.7), ("default model, T 1.0", logits),
                   ("flat random rows", torch.randn(B, logits.shape[1]) / 0.6)):
    probs = torch.softmax(rows, dim=-1)
    for label, args in CASES:
        same = torch.equal(old_filter(probs, *args) > 0, S.filter_probs(probs, *args) > 0)
        before = ms(lambda p=probs, a=args: old_filter(p, *a))
        after = ms(lambda p=probs, a=args: S.filter_probs(p, *a))
        print(f"{name:22} {label:22} whole rows {before:7.2f} ms   now {after:7.2f} ms   same kept sets {same}")
probs = torch.softmax(logits / 0.8, dim=-1)
uniforms = S.uniform_from(torch.arange(B), torch.arange(B))
print(f"draw (T 0.8, no filter): cumsum {ms(lambda: old_draw(probs, uniforms)):.2f} ms, two levels "
      f"{ms(lambda: S.invert_cdf(probs, uniforms)):.2f} ms, same tokens "
      f"{int((old_draw(probs, uniforms) == S.invert_cdf(probs, uniforms)).sum())} of {B}")
equal = torch.equal(logits.argmax(dim=-1), S.first_argmax(logits))
print(f"greedy: argmax {ms(lambda: logits.argmax(dim=-1)):.2f} ms, first_argmax "
      f"{ms(lambda: S.first_argmax(logits)):.2f} ms, equal {equal}")
