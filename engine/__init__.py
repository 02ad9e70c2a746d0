"""A small, readable LLM serving engine: paged KV cache with prefix caching, continuous batching, chunked
prefill, preemption and sampling over our own kernels. Use it like vLLM:

    from engine import LLM, SamplingParams
    llm = LLM()                                   # the bundled default model, or LLM("path/to/checkpoint")
    out = llm.generate(["def fib(n):"], SamplingParams(temperature=0, max_tokens=32))
    print(out[0].outputs[0].text)
"""

from engine.async_llm import AsyncLLM
from engine.llm import DEFAULT_MODEL, LLM
from engine.llm_engine import LLMEngine
from engine.outputs import CompletionOutput, Logprob, RequestOutput
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputsParams

__all__ = ["DEFAULT_MODEL", "LLM", "AsyncLLM", "CompletionOutput", "LLMEngine", "Logprob", "RequestOutput",
           "SamplingParams", "StructuredOutputsParams"]
