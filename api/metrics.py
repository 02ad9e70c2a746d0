"""Prometheus metrics for /metrics: the engine's queues and KV cache (read at scrape time), token counters,
per-request histograms with vLLM's meanings, HTTP requests by route and status, and the process's own (memory,
CPU, open files, garbage collection).

The unit is vLLM's: a sequence, i.e. one choice of a request (a request with n=4 counts 4; best_of candidates
count too, since the engine runs them). Per sequence: its prompt tokens once it has drawn its first token (the
prompt was prefilled: a request cut while it waits counts none), time to first token, inter-token latency (each
token's share of the time since the sequence's previous output reached the server), and once it finishes,
end-to-end latency (arrival at the server to its finish), queue time (engine arrival to first scheduled), prefill
time (first scheduled to first token), decode time (first token to its finish), inference time (first scheduled
to its finish), time per output token (decode time / (tokens - 1)), its prompt and generated tokens, and its
finish reason. Speculative decoding's counters are vLLM's: the acceptance rate is accepted / draft tokens, the
mean accepted length 1 + accepted / drafts. Each of these samples is labelled `model_name` (the served name), as
vLLM's are.
"""

from __future__ import annotations

import bisect
import itertools
import time

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.async_llm import AsyncLLM
from engine.outputs import RequestOutput

PREFIX = "triton_serve"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
FINISH_REASONS = ("stop", "length", "abort")      # listed at 0 from the start, so that rate() of one is never empty


class Batched:
    """A Prometheus histogram that takes several equal observations at once: the tokens of one output share its
    gap, and observing them one by one cost the event loop about 2 us a token (a non-streamed reply of 32,000
    tokens, 60 ms). Updated on the event loop only."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, buckets
        self.counts = [0] * (len(buckets) + 1)              # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """`times` observations of `value`."""
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def collect(self):
        cumulative = list(itertools.accumulate(self.counts))
        buckets = [(repr(float(bound)), count) for bound, count in zip(self.bounds, cumulative)]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=[*buckets, ("+Inf", cumulative[-1])],
                                    sum_value=self.sum)


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
                  ("kv_cache_usage_perc", "Fraction of the KV-cache blocks in use (0 to 1, as vLLM's)",
                   stats.kv_blocks_used / stats.kv_blocks_total if stats.kv_blocks_total else 0.0),
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


class _ModelLabel:
    """The server's own metrics (a registry of theirs), each sample labelled `model_name` (vLLM's label): several
    servers scraped into one Prometheus tell their models apart. The process's own metrics go without it."""

    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        self.inner, self.model_name = registry, model_name

    def collect(self):
        for family in self.inner.collect():
            family.samples = [s._replace(labels={**s.labels, "model_name": self.model_name}) for s in family.samples]
            yield family


class Metrics:
    """One registry per app, so that several apps (tests) never share counters. `model_name`: the served name."""

    def __init__(self, llm: AsyncLLM, model_name: str) -> None:
        own = CollectorRegistry()
        self.registry = CollectorRegistry()
        self.registry.register(_ModelLabel(own, model_name))
        own.register(_EngineCollector(llm))
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):     # stateless: shared by apps
            self.registry.register(collector)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens prefilled (per sequence)",
                                     registry=own)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Tokens generated",
                                         registry=own)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "From arrival to the first generated token",
                              buckets=_TTFT_BUCKETS, registry=own)
        self.itl = Batched(f"{PREFIX}_inter_token_latency_seconds", "Between consecutive tokens of a sequence",
                           _ITL_BUCKETS)
        own.register(self.itl)
        self.tpot = Histogram(f"{PREFIX}_request_time_per_output_token_seconds",
                              "A sequence's decode time per token after its first", buckets=_ITL_BUCKETS,
                              registry=own)
        seconds = (("e2e", "e2e_request_latency_seconds", "From arrival at the server to the sequence's finish"),
                   ("queue", "request_queue_time_seconds", "From arrival at the engine to first scheduled"),
                   ("prefill", "request_prefill_time_seconds", "From first scheduled to the first token"),
                   ("decode", "request_decode_time_seconds", "From the first token to the sequence's finish"),
                   ("inference", "request_inference_time_seconds", "From first scheduled to the sequence's finish"))
        for attr, name, doc in seconds:
            setattr(self, attr, Histogram(f"{PREFIX}_{name}", doc, buckets=_REQUEST_BUCKETS, registry=own))
        self.request_prompt_tokens = Histogram(f"{PREFIX}_request_prompt_tokens", "Prompt tokens per sequence",
                                               buckets=_TOKEN_BUCKETS, registry=own)
        self.request_generation_tokens = Histogram(f"{PREFIX}_request_generation_tokens",
                                                   "Tokens generated per sequence", buckets=_TOKEN_BUCKETS,
                                                   registry=own)
        self.max_generation_tokens = Histogram(f"{PREFIX}_request_max_num_generation_tokens",
                                               "Per request, the most tokens one of its sequences generated",
                                               buckets=_TOKEN_BUCKETS, registry=own)
        self.success = Counter(f"{PREFIX}_request_success", "Finished sequences, by finish reason",
                               ["finished_reason"], registry=own)
        for reason in FINISH_REASONS:
            self.success.labels(reason)
        self.cached_prompt_tokens = Counter(f"{PREFIX}_prompt_tokens_cached",
                                            "Prompt tokens of finished requests served from the prefix cache (as "
                                            "usage's cached_tokens: per request, not per sequence)",
                                            registry=own)
        self.http_requests = Counter(f"{PREFIX}_http_requests", "HTTP requests answered, by method, route and "
                                     "status (route: the path template; 'other' for a path no route serves)",
                                     ["method", "handler", "status"], registry=own)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def timer(self, arrival: float) -> RequestTimer:
        """A tracker for one engine request that arrived at `arrival` (time.monotonic())."""
        return RequestTimer(self, arrival)


class RequestTimer:
    """Observes one engine request's outputs, per sequence (see the module's docstring)."""

    __slots__ = ("metrics", "arrival", "last", "generated", "ended", "unstamped")

    def __init__(self, metrics: Metrics, arrival: float) -> None:
        self.metrics = metrics
        self.arrival = arrival
        self.last: dict[int, float] = {}          # per sequence: when its latest tokens reached the server
        self.generated: dict[int, int] = {}
        self.ended: dict[int, float] = {}         # per sequence: when its finish reached the server
        self.unstamped: dict[int, tuple[float, int]] = {}   # a first output of several tokens: when, how many gaps

    def observe(self, output: RequestOutput) -> None:
        """Record a delta output (or a non-streamed request's only output)."""
        m, now = self.metrics, time.monotonic()
        prompt = len(output.prompt_token_ids)
        for choice in output.outputs:
            i, tokens = choice.index, len(choice.token_ids)
            if tokens:
                m.generation_tokens.inc(tokens)
                self.generated[i] = self.generated.get(i, 0) + tokens
                last, gaps = self.last.get(i), tokens
                if last is None:
                    m.prompt_tokens.inc(prompt)
                    stamp = output.metrics.get("first_token_time")       # a finished output has the engine's
                    m.ttft.observe(max(0.0, (now if stamp is None else stamp) - self.arrival))
                    last, gaps = stamp, tokens - 1     # the gaps after the first token: known from the stamp,
                    if last is None and gaps:          # which the request's last output brings
                        self.unstamped[i] = (now, gaps)
                if last is not None and gaps:
                    m.itl.observe(max(0.0, now - last) / gaps, gaps)
                self.last[i] = now
            if choice.finish_reason is not None and i not in self.ended:
                if i not in self.last and choice.finish_reason != "abort":
                    m.prompt_tokens.inc(prompt)             # max_tokens 0: prefilled, nothing drawn
                m.success.labels(choice.finish_reason).inc()
                self.ended[i] = now
        if output.finished:
            self._finished(output)

    def _finished(self, output: RequestOutput) -> None:
        m, times = self.metrics, output.metrics
        arrived, scheduled, first = (times.get(key) for key in ("arrival_time", "first_scheduled_time",
                                                                   "first_token_time"))
        for seen, gaps in self.unstamped.values() if first is not None else ():
            m.itl.observe(max(0.0, seen - first) / gaps, gaps)
        for i, ended in self.ended.items():
            generated = self.generated.get(i, 0)
            m.e2e.observe(max(0.0, ended - self.arrival))
            if arrived is not None and scheduled is not None:
                m.queue.observe(max(0.0, scheduled - arrived))
            if scheduled is not None:
                m.inference.observe(max(0.0, ended - scheduled))
                if first is not None:
                    m.prefill.observe(max(0.0, first - scheduled))
            if first is not None:
                m.decode.observe(max(0.0, ended - first))
                if generated > 1:
                    m.tpot.observe(max(0.0, ended - first) / (generated - 1))
            m.request_prompt_tokens.observe(len(output.prompt_token_ids))
            m.request_generation_tokens.observe(generated)
        if self.ended:
            m.max_generation_tokens.observe(max(self.generated.values(), default=0))
        m.cached_prompt_tokens.inc(output.num_cached_tokens)
