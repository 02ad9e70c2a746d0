"""/metrics as vLLM's dashboards read it: per-sequence units, prompt tokens once prefilled, HTTP responses by route
and status, the process's own metrics; and the small endpoints routers and load balancers call (/ping, /load)."""

from __future__ import annotations

import asyncio

from api_helpers import asgi_client
from prometheus_client.parser import text_string_to_metric_families

from api import ServerSettings, create_app
from api.metrics import Metrics
from engine import AsyncLLM
from engine.llm_engine import EngineStats
from engine.outputs import CompletionOutput, RequestOutput


class _IdleEngine:
    """What the metrics read of an AsyncLLM at a scrape."""

    is_alive = True

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 10, 0, 0, 0, 0)


def _samples(metrics: Metrics) -> dict[str, float]:
    """The samples by name and labels, but `model_name`, which each of them has (the served name, "m")."""
    text = metrics.render().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.startswith("triton_serve_")]
    assert samples and all(s.labels["model_name"] == "m" for s in samples)
    return {s.name + repr(sorted((k, v) for k, v in s.labels.items() if k != "model_name")): s.value
            for s in samples}


def _output(*choices: CompletionOutput, finished: bool = False, **times: float) -> RequestOutput:
    return RequestOutput("r", None, [1, 2, 3], list(choices), finished, metrics=times)


def test_a_sequence_counts_its_prompt_once_prefilled_and_each_of_its_tokens_gaps():
    """Prompt tokens count per sequence at its first token (never for one cut while it waited); a delta holding
    several tokens adds an inter-token sample for each; each sequence's end is observed once."""
    metrics = Metrics(_IdleEngine(), "m")
    cut = metrics.timer(arrival=0.0)
    cut.observe(_output(CompletionOutput(0, "", [], finish_reason="abort"), finished=True, arrival_time=0.0))
    timer = metrics.timer(arrival=0.0)
    timer.observe(_output(CompletionOutput(0, "a", [5]), CompletionOutput(1, "b", [6])))
    timer.observe(_output(CompletionOutput(0, "cde", [7, 8, 9], finish_reason="length")))
    timer.observe(_output(CompletionOutput(1, "f", [10], finish_reason="stop"), finished=True, arrival_time=0.0,
                          first_scheduled_time=0.0, first_token_time=0.0))
    got = _samples(metrics)
    assert got["triton_serve_prompt_tokens_total[]"] == 2 * 3         # two sequences, none for the cut one
    assert got["triton_serve_generation_tokens_total[]"] == 6
    assert got["triton_serve_time_to_first_token_seconds_count[]"] == 2
    assert got["triton_serve_inter_token_latency_seconds_count[]"] == 3 + 1
    assert got["triton_serve_e2e_request_latency_seconds_count[]"] == 2 + 1
    assert got["triton_serve_request_time_per_output_token_seconds_count[]"] == 2
    assert got["triton_serve_request_generation_tokens_sum[]"] == 6
    assert got["triton_serve_request_max_num_generation_tokens_sum[]"] == 4
    reasons = {reason: got[f"triton_serve_request_success_total[('finished_reason', '{reason}')]"]
               for reason in ("stop", "length", "abort")}
    assert reasons == {"stop": 1, "length": 1, "abort": 1}


def test_a_first_output_of_several_tokens_counts_its_gaps_once_the_stamp_arrives():
    """Outputs merged while the server was busy: a sequence's first output may hold several tokens, whose gaps are
    known only from the engine's first-token stamp, on the request's last output (a loaded CI run lost them)."""
    metrics = Metrics(_IdleEngine(), "m")
    timer = metrics.timer(arrival=0.0)
    timer.observe(_output(CompletionOutput(0, "abc", [5, 6, 7])))
    timer.observe(_output(CompletionOutput(0, "de", [8, 9], finish_reason="length"), finished=True,
                          arrival_time=0.0, first_scheduled_time=0.0, first_token_time=0.0))
    assert _samples(metrics)["triton_serve_inter_token_latency_seconds_count[]"] == 2 + 2


def test_http_responses_process_metrics_ping_and_load(llama_path):
    async def main():
        llm = AsyncLLM(llama_path)
        try:
            async with asgi_client(create_app(llm, ServerSettings("tiny"))) as http:
                idle = await http.get("/metrics")
                pings = [await http.get("/ping"), await http.post("/ping")]
                load = await http.get("/load")
                empty = await http.post("/detokenize", json={"tokens": []})
                await http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
                await http.post("/v1/completions/", json={"model": "tiny", "prompt": "hi", "max_tokens": -1})
                await http.get("/v1/completions")
                await http.get("/no/such/path/42")
                await http.get("/v1/models/tiny")
                await http.get("/openapi.json")
                text = (await http.get("/metrics")).text
                return idle.text, pings, load, empty, text
        finally:
            llm.shutdown()

    idle, pings, load, empty, text = asyncio.run(main())
    assert [p.status_code for p in pings] == [200, 200] and pings[0].json() == {"status": "ok"}
    assert load.json() == {"server_load": 0}
    assert (empty.status_code, empty.json()) == (200, {"prompt": ""})
    for reason in ("stop", "length", "abort"):                 # listed before any request finished
        assert f'triton_serve_request_success_total{{finished_reason="{reason}",model_name="tiny"}} 0.0' in idle
    assert "process_resident_memory_bytes" in idle and "python_gc_objects_collected_total" in idle
    assert 'triton_serve_kv_cache_usage_perc{model_name="tiny"} 0.0' in idle
    assert "\nprocess_resident_memory_bytes " in idle                 # the process's own: no model label
    http = {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "triton_serve_http_requests_total"}

    def count(method: str, handler: str, status: int) -> float:
        return http.get((("handler", handler), ("method", method), ("model_name", "tiny"), ("status", str(status))),
                        0.0)

    assert count("POST", "/v1/completions", 200) == 1
    assert count("POST", "/v1/completions", 400) == 1           # the trailing slash is the same route
    assert count("GET", "/v1/completions", 405) == 1
    assert count("GET", "other", 404) == 1                       # an unknown path: never its own label
    assert count("GET", "/v1/models/{model:path}", 200) == 1 and count("GET", "/openapi.json", 200) == 1
    assert count("GET", "/metrics", 200) == 1 and count("POST", "/ping", 200) == 1


def test_a_batched_histogram_renders_as_the_same_observations_one_by_one():
    """The inter-token histogram takes a merged output's equal gaps at once; its exposition is prometheus_client's
    own Histogram's for the same observations (edges included: a value on a bound counts as below it)."""
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.exposition import generate_latest

    from api.metrics import Batched

    bounds = (0.001, 0.01, 0.1, 1.0)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = Batched("gap_seconds", "Gaps", bounds)
    ours.register(batched)
    one_by_one = Histogram("gap_seconds", "Gaps", buckets=bounds, registry=theirs)
    for value, times in ((0.0005, 3), (0.01, 2), (0.5, 1), (7.0, 4)):
        batched.observe(value, times)
        for _ in range(times):
            one_by_one.observe(value)

    def samples(registry) -> dict:
        text = generate_latest(registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text)
                for s in family.samples if not s.name.endswith("_created")}

    assert samples(ours) == samples(theirs)
