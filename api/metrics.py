"""Prometheus metrics for /metrics: the engine's queues and KV cache (read at scrape time), token counters, and
per-request histograms with vLLM's meanings: time to first token and inter-token latency (observed as outputs
reach the server), end-to-end latency (arrival at the server to the last output), queue time (engine arrival to
first scheduled), prefill time (first scheduled to first token) and decode time (first token to finished), from
the engine's timestamps; prompt and generated tokens per request; and finished choices by finish reason.

Running and waiting counts are of sequences, i.e. request choices (a request with n=4 counts 4). Speculative
decoding's counters are vLLM's: the acceptance rate is accepted / draft tokens, the mean accepted length
1 + accepted / drafts.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.async_llm import AsyncLLM
from engine.outputs import RequestOutput

PREFIX = "triton_serve"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class _EngineCollector:
    """Gauges and counters read from the engine's last stats snapshot at each scrape."""

    def __init__(self, llm: AsyncLLM) -> None:
        self.llm = llm

    def collect(self):
        stats = self.llm.stats()
        gauges = (("num_requests_running", "Sequences (request choices) running in the engine", stats.num_running),
                  ("num_requests_waiting", "Sequences waiting for the engine (new or preempted)", stats.num_waiting),
                  ("kv_cache_blocks_used", "KV-cache blocks held by sequences", stats.kv_blocks_used),
                  ("kv_cache_blocks_total", "KV-cache blocks in all", stats.kv_blocks_total),
                  ("engine_healthy", "1 while the engine thread is alive, else 0", int(self.llm.is_alive)))
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        counters = (("num_preemptions", "Sequences preempted to free KV blocks", stats.num_preemptions),
                    ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache", stats.prefix_cache_queries),
                    ("prefix_cache_hits", "Prompt tokens found in the prefix cache", stats.prefix_cache_hits),
                    ("spec_decode_num_drafts", "Speculative decoding: sequence steps that verified draft tokens",
                     stats.spec_num_drafts),
                    ("spec_decode_num_draft_tokens", "Speculative decoding: draft tokens verified",
                     stats.spec_num_draft_tokens),
                    ("spec_decode_num_accepted_tokens", "Speculative decoding: draft tokens accepted",
                     stats.spec_num_accepted_tokens))
        for name, doc, value in counters:
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


class Metrics:
    """One registry per app, so that several apps (tests) never share counters."""

    def __init__(self, llm: AsyncLLM) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(llm))
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of accepted requests",
                                     registry=self.registry)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Tokens generated",
                                         registry=self.registry)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "From arrival to the first generated token",
                              buckets=_TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram(f"{PREFIX}_inter_token_latency_seconds", "Between consecutive tokens of a request",
                             buckets=_ITL_BUCKETS, registry=self.registry)
        seconds = (("e2e", "e2e_request_latency_seconds", "From arrival at the server to the request's last output"),
                   ("queue", "request_queue_time_seconds", "From arrival at the engine to first scheduled"),
                   ("prefill", "request_prefill_time_seconds", "From first scheduled to the first token"),
                   ("decode", "request_decode_time_seconds", "From the first token to the request's end"))
        for attr, name, doc in seconds:
            setattr(self, attr, Histogram(f"{PREFIX}_{name}", doc, buckets=_REQUEST_BUCKETS, registry=self.registry))
        self.request_prompt_tokens = Histogram(f"{PREFIX}_request_prompt_tokens", "Prompt tokens per request",
                                               buckets=_TOKEN_BUCKETS, registry=self.registry)
        self.request_generation_tokens = Histogram(f"{PREFIX}_request_generation_tokens",
                                                   "Tokens generated per request (all its choices)",
                                                   buckets=_TOKEN_BUCKETS, registry=self.registry)
        self.success = Counter(f"{PREFIX}_request_success", "Finished choices, by finish reason",
                               ["finished_reason"], registry=self.registry)
        self.cached_prompt_tokens = Counter(f"{PREFIX}_prompt_tokens_cached",
                                            "Prompt tokens of finished requests served from the prefix cache",
                                            registry=self.registry)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def timer(self, arrival: float) -> RequestTimer:
        """A tracker for one engine request that arrived at `arrival` (time.monotonic())."""
        return RequestTimer(self, arrival)


class RequestTimer:
    """Observes one engine request's outputs: tokens generated, time to first token, inter-token latency, and
    once it finishes its request-level histograms."""

    __slots__ = ("metrics", "last", "arrival", "generated")

    def __init__(self, metrics: Metrics, arrival: float) -> None:
        self.metrics = metrics
        self.last: float | None = None
        self.arrival = arrival
        self.generated = 0

    def observe(self, output: RequestOutput) -> None:
        """Record a delta output (or a non-streamed request's only output)."""
        m, now = self.metrics, time.monotonic()
        tokens = sum(len(choice.token_ids) for choice in output.outputs)
        if tokens:
            m.generation_tokens.inc(tokens)
            self.generated += tokens
            if self.last is None:      # a non-streamed request's first token is known from the engine's stamp
                m.ttft.observe(max(0.0, output.metrics.get("first_token_time", now) - self.arrival))
            else:
                steps = max(len(choice.token_ids) for choice in output.outputs)
                m.itl.observe((now - self.last) / steps)
            self.last = now
        for choice in output.outputs:
            if choice.finish_reason is not None:
                m.success.labels(choice.finish_reason).inc()
        if output.finished:
            self._finished(output, now)

    def _finished(self, output: RequestOutput, now: float) -> None:
        m, times = self.metrics, output.metrics
        m.e2e.observe(now - self.arrival)
        for histogram, start, end in ((m.queue, "arrival_time", "first_scheduled_time"),
                                      (m.prefill, "first_scheduled_time", "first_token_time"),
                                      (m.decode, "first_token_time", "finished_time")):
            if start in times and end in times:
                histogram.observe(max(0.0, times[end] - times[start]))
        m.request_prompt_tokens.observe(len(output.prompt_token_ids))
        m.request_generation_tokens.observe(self.generated)
        m.cached_prompt_tokens.inc(output.num_cached_tokens)
