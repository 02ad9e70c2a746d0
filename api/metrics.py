"""Prometheus metrics for /metrics: the engine's queues and KV cache (read at scrape time), token counters,
and time-to-first-token and inter-token latency histograms (observed as outputs reach the server).

Running and waiting counts are of sequences, i.e. request choices (a request with n=4 counts 4).
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
                    ("prefix_cache_hits", "Prompt tokens found in the prefix cache", stats.prefix_cache_hits))
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

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def timer(self, arrival: float) -> RequestTimer:
        """A tracker for one engine request that arrived at `arrival` (time.monotonic())."""
        return RequestTimer(self, arrival)


class RequestTimer:
    """Observes one engine request's outputs: tokens generated, time to first token, inter-token latency."""

    __slots__ = ("metrics", "last", "arrival")

    def __init__(self, metrics: Metrics, arrival: float) -> None:
        self.metrics = metrics
        self.last: float | None = None
        self.arrival = arrival

    def observe(self, output: RequestOutput) -> None:
        """Record a delta output."""
        tokens = sum(len(choice.token_ids) for choice in output.outputs)
        if not tokens:
            return
        now = time.monotonic()
        self.metrics.generation_tokens.inc(tokens)
        if self.last is None:
            self.metrics.ttft.observe(now - self.arrival)
        else:
            steps = max(len(choice.token_ids) for choice in output.outputs)
            self.metrics.itl.observe((now - self.last) / steps)
        self.last = now
